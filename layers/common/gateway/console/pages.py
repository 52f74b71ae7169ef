"""The console's HTML shell and its security policy.

The shell is static markup plus the page configuration in ``<meta name="mlp:config">`` (JSON,
HTML-escaped): the sign-in endpoints and client id, the plans on sale, the purchase limits. No
inline script or style anywhere, so the Content-Security-Policy can be strict:

- ``script-src 'self'`` and ``style-src 'self'`` (no ``unsafe-inline``/``unsafe-eval``);
- ``require-trusted-types-for 'script'``: the app builds DOM nodes and never assigns HTML
  strings, and the browser enforces that;
- ``connect-src`` = this origin, the identity provider's token endpoint and (if configured) the
  streaming Function URL; ``form-action 'self'``; ``frame-ancestors 'none'``; ``base-uri 'none'``.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..http import COMMON_SECURITY_HEADERS
from .assets import assets, index_template

BASE_PATH = "/console"
SCOPES = "openid email profile"
# Client-side routes: each is served the same shell (the app renders the page).
PAGES = frozenset({"callback", "welcome", "usage", "keys", "provider-keys", "billing", "models", "playground",
                   "signed-out"})

# Added to every console response by the gateway middleware (CSP and caching are per response).
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    *COMMON_SECURITY_HEADERS,
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
]
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def content_security_policy(settings: Settings) -> str:
    connect = ["'self'"]
    for url in (settings.console_token_url, settings.console_stream_url):
        origin = _origin(url)
        if origin and origin not in connect:
            connect.append(origin)
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
            f"connect-src {' '.join(connect)}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; "
            "manifest-src 'self'; require-trusted-types-for 'script'; trusted-types 'none'")


def page_config(settings: Settings) -> dict[str, Any]:
    """What the browser app needs to know; nothing secret (a public OAuth client has no secret)."""
    plans = [{"name": t.name, "rpm": t.rpm, "monthly_quota": t.monthly_quota, "included_credit": str(t.included_credit),
              "markup": str(t.markup), "purchasable": bool(t.stripe_price_id)}
             for t in settings.tiers.values()]
    return {
        "base_path": BASE_PATH,
        "auth": {"client_id": settings.console_client_id, "authorize_url": settings.console_authorize_url,
                 "token_url": settings.console_token_url,
                 "signup_url": settings.console_signup_url or settings.console_authorize_url,
                 "logout_url": settings.console_logout_url, "scope": SCOPES},
        "stream_url": settings.console_stream_url.rstrip("/"),
        "key_prefix": settings.api_key_prefix,
        "low_balance": str(settings.console_low_balance),
        "credit_min": str(settings.billing_min_credit_purchase),
        "credit_max": str(settings.billing_max_credit_purchase),
        "plans": plans,
    }


def render_index(settings: Settings) -> str:
    files = assets()
    config = html.escape(json.dumps(page_config(settings), separators=(",", ":")), quote=True)
    return (index_template().replace("{{config}}", config).replace("{{app_js}}", files["app.js"].url)
            .replace("{{app_css}}", files["app.css"].url).replace("{{favicon}}", files["favicon.svg"].url))


NOT_FOUND_HTML = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not found</title></head>'
                  '<body><h1>Page not found</h1><p><a href="/console">Go to the console</a></p></body></html>')
