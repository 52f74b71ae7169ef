"""Provider adapters: OpenAI chat requests in, OpenAI chat responses/chunks out.

``get_adapter(provider).complete(client, target, body)`` / ``.stream(client, target, body)``; the
shared upstream client comes from :func:`gateway.adapters.http_client.get_http_client`.
"""

from gateway.adapters.base import Adapter, Target, UpstreamStream, Usage, get_adapter
from gateway.adapters.http_client import aclose_http_client, create_http_client, get_http_client
from gateway.adapters.tokens import estimate_prompt_tokens, estimate_tokens

__all__ = [
    "Adapter",
    "Target",
    "UpstreamStream",
    "Usage",
    "aclose_http_client",
    "create_http_client",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "get_adapter",
    "get_http_client",
]
