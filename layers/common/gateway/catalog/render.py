"""The public catalogue: a snapshot of the active ``model_pricing`` rows and its rendered views.

A *snapshot* is what the Redis cache holds: every active model in the response shape of
``GET /v1/models`` except that ``cost`` carries the provider's per-unit prices (what we pay)
instead of our prices. It is built from Postgres only (never from a provider).

A :class:`Catalogue` wraps one snapshot in the warm container and renders it per *view* --
(markup, admin) -- once: each model is encoded to JSON bytes a single time per view, so a cached
``GET /v1/models`` only filters and joins byte strings.

Pricing strings follow OpenRouter's convention (USD per token, plain decimal strings) and show
OUR price: cost x (1 + markup) exactly (no rounding: the only rounding rule is applied once to a
request's total charge, see ``money.pricing``). The markup is the model's own ``markup`` when
set, else the tier's. Admin views add ``provider_pricing`` (the cost), the markup and the route.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .. import db
from ..config import Tier
from ..money.pricing import ONE, exact
from .feeds import PRICE_COLUMNS, PRICE_KEYS_ORDER, format_amount
from .registry import servable, tier_allows

SNAPSHOT_FORMAT = 1
_ENCODING_PREFIX = "z1:"

SELECT_CATALOGUE = f"""
SELECT id, name, provider, upstream_model, owned_by, context_length, max_completion_tokens,
       {", ".join(PRICE_COLUMNS.values())}, pricing_extra, price_tiers, discount,
       input_modalities, output_modalities, architecture, supported_parameters, description, is_free, markup,
       source, upstream_created_at, created_at, updated_at, price_changed_at
FROM model_pricing WHERE active ORDER BY id
"""


def _epoch(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def entry_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One active ``model_pricing`` row -> one snapshot entry (JSON-safe)."""
    cost: dict[str, str] = {}
    for key, column in PRICE_COLUMNS.items():
        value = row.get(column)
        if value is not None:
            cost[key] = format_amount(value)
    for key, value in sorted((row.get("pricing_extra") or {}).items()):
        try:
            amount = Decimal(str(value))
            usable = amount.is_finite() and amount >= 0
        except ArithmeticError:
            usable = False
        if usable:  # a negative one ("-1": varies) is no price we bill (registry._extra_price)
            cost.setdefault(key, format_amount(amount))
    inputs = list(row.get("input_modalities") or ["text"])
    outputs = list(row.get("output_modalities") or ["text"])
    arch = dict(row.get("architecture") or {})
    architecture = {"modality": arch.get("modality") or "+".join(inputs) + "->" + "+".join(outputs),
                    "input_modalities": inputs, "output_modalities": outputs,
                    "tokenizer": arch.get("tokenizer"), "instruct_type": arch.get("instruct_type")}
    markup = row.get("markup")
    return {
        "id": row["id"],
        "name": row["name"],
        "created": _epoch(row.get("upstream_created_at")) or _epoch(row.get("created_at")) or 0,
        "owned_by": row["owned_by"],
        "description": row.get("description"),
        "context_length": row["context_length"],
        "max_completion_tokens": row["max_completion_tokens"],
        "architecture": architecture,
        "supported_parameters": list(row["supported_parameters"]) if row.get("supported_parameters") else None,
        "cost": cost,
        "cost_tiers": row.get("price_tiers") or None,
        "is_free": bool(row["is_free"]),
        "markup": format_amount(markup) if markup is not None else None,
        "route": {"provider": row["provider"], "upstream_model": row["upstream_model"]},
        "meta": {"source": row.get("source"), "discount": format_amount(row["discount"])
                 if row.get("discount") is not None else None,
                 "price_changed_at": _iso(row.get("price_changed_at")), "updated_at": _iso(row.get("updated_at"))},
    }


def build_snapshot(rows: Iterable[Mapping[str, Any]], *, built_at: dt.datetime | None = None) -> dict[str, Any]:
    models = sorted((entry_from_row(r) for r in rows if servable(r)), key=lambda e: e["id"])
    canonical = json.dumps(models, sort_keys=True, separators=(",", ":")).encode()
    return {"format": SNAPSHOT_FORMAT, "version": hashlib.sha256(canonical).hexdigest()[:20],
            "built_at": _iso(built_at or dt.datetime.now(dt.UTC)), "models": models}


async def load_snapshot() -> dict[str, Any]:
    """The snapshot of what Postgres says right now (the cache-miss path)."""
    return build_snapshot(await db.fetchall(SELECT_CATALOGUE))


def encode_snapshot(snapshot: Mapping[str, Any]) -> str:
    """Compact text for Redis: zlib-compressed JSON, base64 (a few hundred models -> ~50 kB)."""
    raw = json.dumps(snapshot, separators=(",", ":")).encode()
    return _ENCODING_PREFIX + base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def decode_snapshot(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("ascii")
    if not text.startswith(_ENCODING_PREFIX):
        raise ValueError("unknown catalogue encoding")
    snapshot = json.loads(zlib.decompress(base64.b64decode(text[len(_ENCODING_PREFIX):])))
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        raise ValueError("unsupported catalogue snapshot format")
    return snapshot


# ----------------------------------------------------------------------------- rendering


def priced(cost: Mapping[str, str], markup: Decimal) -> dict[str, str]:
    """Provider cost strings -> our price strings (cost x (1 + markup), exact)."""
    factor = ONE + markup
    out: dict[str, str] = {}
    with exact():
        for key in (*PRICE_KEYS_ORDER, *sorted(k for k in cost if k not in PRICE_COLUMNS)):
            if key in cost:
                out[key] = format_amount(Decimal(cost[key]) * factor)
    return out


def render_entry(entry: Mapping[str, Any], tier_markup: Decimal, *, admin: bool = False) -> dict[str, Any]:
    """A snapshot entry as the API shows it (OpenAI model object + OpenRouter fields)."""
    markup = Decimal(entry["markup"]) if entry.get("markup") is not None else tier_markup
    out: dict[str, Any] = {
        "id": entry["id"],
        "object": "model",
        "created": entry["created"],
        "owned_by": entry["owned_by"],
        "name": entry["name"],
        "description": entry.get("description"),
        "context_length": entry["context_length"],
        "max_completion_tokens": entry["max_completion_tokens"],
        "architecture": entry["architecture"],
        "pricing": priced(entry["cost"], markup),
    }
    if entry.get("cost_tiers"):
        out["pricing_tiers"] = [{"min_prompt_tokens": t["min_prompt_tokens"],
                                 **priced({k: v for k, v in t.items() if k != "min_prompt_tokens"}, markup)}
                                for t in entry["cost_tiers"]]
    out["top_provider"] = {"context_length": entry["context_length"],
                           "max_completion_tokens": entry["max_completion_tokens"]}
    if entry.get("supported_parameters") is not None:
        out["supported_parameters"] = entry["supported_parameters"]
    if admin:
        out["provider_pricing"] = dict(entry["cost"])
        if entry.get("cost_tiers"):
            out["provider_pricing_tiers"] = entry["cost_tiers"]
        out["markup"] = format_amount(markup)
        out["route"] = entry["route"]
        out["catalog"] = entry.get("meta") or {}
    return out


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Filters:
    """Query filters of ``GET /v1/models`` (all optional, combined with AND)."""

    providers: frozenset[str] | None = None   # vendor prefix of the id, owned_by or route provider
    modality: str | None = None               # "image" (input or output) or "text+image->text"
    tier: Tier | None = None                  # only models this tier may use

    @property
    def empty(self) -> bool:
        return self.providers is None and self.modality is None and self.tier is None


class _Model:
    """A snapshot entry plus what the filters need, parsed once."""

    __slots__ = ("completion", "entry", "id", "inputs", "is_free", "modality", "names", "outputs", "prompt")

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry
        self.id: str = entry["id"]
        arch = entry["architecture"]
        self.inputs = frozenset(arch["input_modalities"])
        self.outputs = frozenset(arch["output_modalities"])
        self.modality: str = arch["modality"]
        vendor = self.id.lstrip("~").split("/", 1)[0]
        self.names = frozenset({vendor.lower(), str(entry["owned_by"]).lower(),
                                str(entry["route"]["provider"]).lower()})
        self.prompt = Decimal(entry["cost"].get("prompt", "0"))
        self.completion = Decimal(entry["cost"].get("completion", "0"))
        self.is_free = bool(entry["is_free"])

    def matches(self, f: Filters) -> bool:
        if f.providers is not None and not (self.names & f.providers):
            return False
        if f.modality is not None:
            if "->" in f.modality:
                if self.modality != f.modality:
                    return False
            elif f.modality not in self.inputs and f.modality not in self.outputs:
                return False
        return f.tier is None or tier_allows(f.tier, self.is_free, self.prompt, self.completion)


class _View:
    __slots__ = ("fragments", "full", "full_gzip")

    def __init__(self, fragments: dict[str, bytes]) -> None:
        self.fragments = fragments
        self.full: bytes | None = None
        self.full_gzip: bytes | None = None


GZIP_MIN_BYTES = 2048


def compress(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=6, mtime=0)


class Catalogue:
    """One snapshot in the warm container, with its rendered views cached."""

    MAX_VIEWS = 16

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.version: str = snapshot["version"]
        self.built_at: str = snapshot.get("built_at") or ""
        self.models = [_Model(e) for e in snapshot["models"]]
        self.by_id = {m.id: m for m in self.models}
        self._views: dict[tuple[str, bool], _View] = {}

    def __len__(self) -> int:
        return len(self.models)

    def _view(self, markup: Decimal, admin: bool) -> _View:
        key = (format_amount(markup), admin)
        view = self._views.get(key)
        if view is None:
            if len(self._views) >= self.MAX_VIEWS:
                self._views.clear()
            view = _View({m.id: _dumps(render_entry(m.entry, markup, admin=admin)) for m in self.models})
            self._views[key] = view
        return view

    def list_body(self, markup: Decimal, *, admin: bool = False, filters: Filters | None = None,
                  gzipped: bool = False) -> tuple[bytes, bool]:
        """``{"object": "list", "data": [...]}`` as bytes, and whether they are gzip-compressed
        (only when asked and worth it; the unfiltered list is compressed once per view)."""
        view = self._view(markup, admin)
        if filters is None or filters.empty:
            if view.full is None:
                view.full = b'{"object":"list","data":[' + b",".join(view.fragments.values()) + b"]}"
            if not gzipped or len(view.full) < GZIP_MIN_BYTES:
                return view.full, False
            if view.full_gzip is None:
                view.full_gzip = compress(view.full)
            return view.full_gzip, True
        parts = [view.fragments[m.id] for m in self.models if m.matches(filters)]
        body = b'{"object":"list","data":[' + b",".join(parts) + b"]}"
        if gzipped and len(body) >= GZIP_MIN_BYTES:
            return compress(body), True
        return body, False

    def model_body(self, model_id: str, markup: Decimal, *, admin: bool = False) -> bytes | None:
        if model_id not in self.by_id:
            return None
        return self._view(markup, admin).fragments[model_id]
