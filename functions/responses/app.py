"""POST /v1/responses — the OpenAI Responses API (stateless), translated onto the chat pipeline for
every provider and metered and billed like chat completions.

Behind API Gateway (Mangum, ``handler``) responses are buffered, streams included; true streaming
is QueryStreamFunction's Function URL (functions/query/app.py ``stream_app`` serves this router too).

Built without FastAPI (``create_lean_app``, as the query function): every route takes the lean
path; anything else is answered by the FastAPI app of the same routes, built on first use.
"""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.http import create_lean_app
from gateway.observability import instrument
from gateway.responses.routes import router

app = create_lean_app("responses", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
