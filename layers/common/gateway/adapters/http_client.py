"""The upstream HTTP client's former home: it lives in :mod:`gateway.upstream_http` (outside the
adapters package, so that the Upstash client, which every function imports, uses it without
importing every adapter). Every name is re-exported here: ``from gateway.adapters.http_client
import ...`` keeps working and gives the very same objects (one shared client per loop)."""

from gateway.upstream_http import (
    CHUNK_SIZE,
    DEFAULT_LIMITS,
    KEEPALIVE_EXPIRY_S,
    MAX_CONNECTIONS,
    POOL_TIMEOUT_S,
    USER_AGENT,
    WRITE_TIMEOUT_S,
    Limits,
    Timeouts,
    UpstreamClient,
    UpstreamRequest,
    UpstreamResponse,
    aclose_http_client,
    create_catalog_http_client,
    create_http_client,
    default_timeout,
    get_catalog_http_client,
    get_http_client,
    request_json,
    shared_ssl_context,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_LIMITS",
    "KEEPALIVE_EXPIRY_S",
    "MAX_CONNECTIONS",
    "POOL_TIMEOUT_S",
    "USER_AGENT",
    "WRITE_TIMEOUT_S",
    "Limits",
    "Timeouts",
    "UpstreamClient",
    "UpstreamRequest",
    "UpstreamResponse",
    "aclose_http_client",
    "create_catalog_http_client",
    "create_http_client",
    "default_timeout",
    "get_catalog_http_client",
    "get_http_client",
    "request_json",
    "shared_ssl_context",
]
