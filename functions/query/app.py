"""POST /v1/chat/completions — the OpenAI-compatible proxy with metering and billing.

Behind API Gateway (Mangum, ``handler``) responses are buffered, streams included; true streaming
is QueryStreamFunction (run.sh serves ``stream_app`` with uvicorn behind the Lambda Web Adapter:
Lambda request id in the logs, metrics flushed before each response completes). That one streaming
function serves every surface — chat completions, the Anthropic Messages API
(``/v1/messages``, ``/v1/messages/count_tokens``) and the Responses API — so a client has one base
URL (template.yaml says why); ``stream_app`` is built on first use, so the buffered QueryFunction
does not import the other surfaces. The buffered app is built without FastAPI (``create_lean_app``:
its one route takes the lean path; anything else is answered by the FastAPI app of the same route,
built on first use), which keeps FastAPI's import out of the function's cold start.
"""

import ssl
import sys
from typing import Any

# Two import-time costs of third-party modules this function never uses, avoided (the query path
# imports both libraries at cold start):
# - httpx (under upstash-redis and the adapters) imports its command-line client when click is
#   installed, which it is in the layer (and rich/pygments too in a dev environment). Blocked,
#   httpx defines its stub ``main`` instead (its own ImportError fallback).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
# - aiohttp builds two TLS contexts at import, and loads the system's CA store (~140 certificates,
#   ~15-30 ms) into both, the second being its ``ssl=False`` context (CERT_NONE: it never verifies,
#   and we never use it). The verified one, which every Upstash and upstream connection uses, loads
#   its store as before.
_load_ca_store = ssl.SSLContext.set_default_verify_paths


def _unless_unverified(context: ssl.SSLContext) -> None:
    if context.verify_mode != ssl.CERT_NONE:
        _load_ca_store(context)


if "aiohttp.connector" not in sys.modules and "set_default_verify_paths" not in vars(ssl.SSLContext):
    ssl.SSLContext.set_default_verify_paths = _unless_unverified  # type: ignore[method-assign,assignment]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the method _ssl._SSLContext defines, as before

from mangum import Mangum  # noqa: E402

from gateway.chat.routes import router  # noqa: E402
from gateway.http import create_app, create_lean_app  # noqa: E402
from gateway.observability import instrument, instrument_asgi  # noqa: E402

app = create_lean_app("query", [router])
handler = instrument(Mangum(app, lifespan="off"))


def __getattr__(name: str) -> Any:
    if name == "stream_app":
        from gateway.messages.routes import router as messages_router
        from gateway.responses.routes import router as responses_router

        value = instrument_asgi(create_app("query-stream", [router, messages_router, responses_router]))
        globals()["stream_app"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
