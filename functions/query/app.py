"""POST /v1/chat/completions — the OpenAI-compatible proxy with metering and billing.

Behind API Gateway (Mangum) responses are buffered, streams included; the same ``app`` runs
under uvicorn for true streaming on the Lambda Web Adapter deployment (run.sh).
"""

from mangum import Mangum

from gateway.chat.routes import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("query", [router])
handler = instrument(Mangum(app, lifespan="off"))
