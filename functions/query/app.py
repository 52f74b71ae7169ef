"""POST /v1/chat/completions — the OpenAI-compatible proxy with metering and billing.

Behind API Gateway (Mangum, ``handler``) responses are buffered, streams included; true streaming
is QueryStreamFunction (run.sh serves ``stream_app`` with uvicorn behind the Lambda Web Adapter:
Lambda request id in the logs, metrics flushed before each response completes). That one streaming
function serves every surface — chat completions, the Anthropic Messages API
(``/v1/messages``, ``/v1/messages/count_tokens``) and the Responses API — so a client has one base
URL (template.yaml says why). ``stream_app`` is built on first use, so the buffered QueryFunction
does not import the other surfaces; and it imports them itself on its first request that is not a
chat completion, so a streaming function whose first request is a chat completion answers it
without them (their import moves to the first Messages or Responses request). Both apps are built
without FastAPI (``create_lean_app``: every route of the three surfaces takes the lean path;
anything else is answered by the FastAPI app of the same routes, built on first use), which keeps
FastAPI's import out of the cold start (~0.2 s). In the process run.sh starts (``GATEWAY_COLD_START=serve``:
it serves ``stream_app`` only) the buffered ``app`` and its Mangum ``handler`` are built on first
access instead (Mangum's import and a second app: ~5 ms of the spawn); in QueryFunction (Lambda's
runtime imports this module for ``handler``) they are built during the import, as before.
"""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
import os
from typing import Any

if "AWS_LAMBDA_FUNCTION_NAME" in os.environ:  # QueryFunction in Lambda (run.sh's serve.py did it already)
    # The pool's first connection opens in a thread while the rest of the function imports, as in
    # QueryStreamFunction (serve.py): the first invocation finds it made or under way instead of
    # connecting (TCP, TLS, authentication: several round trips to the database; BENCHMARKS.md,
    # issue 15, spawn6 E2 and import lane I5).
    from gateway import db

    db.open_first_connection()

from starlette.types import Receive, Scope, Send

from gateway.chat.routes import router
from gateway.http import LeanApp, create_lean_app
from gateway.observability import instrument, instrument_asgi


def _buffered() -> dict[str, Any]:
    """QueryFunction's app (behind API Gateway) and its Mangum handler."""
    from mangum import Mangum

    built = create_lean_app("query", [router])
    return {"app": built, "handler": instrument(Mangum(built, lifespan="off"))}


if os.environ.get("GATEWAY_COLD_START") != "serve":  # not run.sh's process (which serves stream_app only)
    globals().update(_buffered())
coldstart.done()


class _Surfaces:
    """``stream_app`` before instrumentation: a chat completion is answered by the chat app; the
    first request of any other kind (Messages, Responses, a 404, the docs) imports the other two
    surfaces and builds the app of all three, which then answers everything."""

    def __init__(self) -> None:
        self._chat = create_lean_app("query-stream", [router])
        self._all: LeanApp | None = None

    def all(self) -> LeanApp:
        if self._all is None:
            from gateway.messages.routes import router as messages_router
            from gateway.responses.routes import router as responses_router

            self._all = create_lean_app("query-stream", [router, messages_router, responses_router])
        return self._all

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._all is None and (scope["type"] == "lifespan" or (
                scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self._chat.lean_routes)):
            await self._chat(scope, receive, send)
            return
        await self.all()(scope, receive, send)


def __getattr__(name: str) -> Any:
    if name in ("app", "handler"):  # run.sh's process: built on first access
        built = _buffered()
        globals().update(built)
        return built[name]
    if name == "stream_app":
        value = instrument_asgi(_Surfaces())
        globals()["stream_app"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
