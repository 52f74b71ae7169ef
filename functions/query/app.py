"""POST /v1/chat/completions — the OpenAI-compatible proxy with metering and billing.

Behind API Gateway (Mangum, ``handler``) responses are buffered, streams included; the same
``app`` runs under uvicorn for true streaming on the Lambda Web Adapter deployment (run.sh serves
``stream_app``: Lambda request id in the logs, metrics flushed before each response completes).
"""

from mangum import Mangum

from gateway.chat.routes import router
from gateway.http import create_app
from gateway.observability import instrument, instrument_asgi

app = create_app("query", [router])
handler = instrument(Mangum(app, lifespan="off"))
stream_app = instrument_asgi(app)
