"""Provider adapters: OpenAI chat requests in, OpenAI chat responses/chunks out.

``registry`` has one entry per provider; ``get_adapter(provider).complete(client, target, body)`` /
``.stream(client, target, body)``; the shared upstream client comes from
:func:`gateway.adapters.http_client.get_http_client`. The rest is shared by every adapter, one
concern a module: ``contract`` (the types), ``shapes`` (OpenAI chat shapes), ``sse`` (the SSE
parser), ``transport`` (sending), ``upstream_errors`` (failures → typed errors), ``stream`` (the
streaming and translating bases), ``tokens`` (prompt sizes and the hold's bound).
"""

from gateway.adapters.contract import Adapter, Target, UpstreamStream, Usage
from gateway.adapters.http_client import aclose_http_client, create_http_client, get_http_client
from gateway.adapters.registry import get_adapter
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
