"""The console's static files: package data next to this module, read once per container.

Each asset is served at a content-hashed URL (``/console/assets/app.3f9a1c2b7d4e.js``) with a
one-year ``immutable`` cache, so a deploy changes the URL and a browser never mixes versions.
Text assets are also kept gzipped (API Gateway HTTP APIs do not compress).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSET_PREFIX = "/console/assets/"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".svg": "image/svg+xml"}
SERVED = ("app.js", "app.css", "favicon.svg")


@dataclass(frozen=True, slots=True)
class Asset:
    name: str          # e.g. "app.js"
    url: str           # e.g. "/console/assets/app.3f9a1c2b7d4e.js"
    body: bytes
    gzipped: bytes
    media_type: str
    etag: str


def _load(name: str) -> Asset:
    body = (STATIC_DIR / name).read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    stem, dot, ext = name.rpartition(".")
    url = f"{ASSET_PREFIX}{stem}.{digest[:12]}{dot}{ext}"
    return Asset(name=name, url=url, body=body, gzipped=gzip.compress(body, compresslevel=9, mtime=0),
                 media_type=MEDIA_TYPES["." + ext], etag=f'"{digest[:32]}"')


@lru_cache(maxsize=1)
def assets() -> dict[str, Asset]:
    """name -> asset, loaded on first use."""
    return {name: _load(name) for name in SERVED}


@lru_cache(maxsize=1)
def by_url() -> dict[str, Asset]:
    return {a.url: a for a in assets().values()}


@lru_cache(maxsize=1)
def index_template() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")
