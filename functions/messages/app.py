"""POST /v1/messages and /v1/messages/count_tokens — the Anthropic Messages API (native for models
Anthropic serves, translated for every other provider), metered and billed like chat completions.

Behind API Gateway (Mangum, ``handler``) responses are buffered, streams included; true streaming
is QueryStreamFunction's Function URL (functions/query/app.py ``stream_app`` serves this router too).

Built without FastAPI (``create_lean_app``, as the query function): every route takes the lean
path; anything else is answered by the FastAPI app of the same routes, built on first use.
"""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.http import create_lean_app
from gateway.messages.routes import router
from gateway.observability import instrument

app = create_lean_app("messages", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
