"""POST /v1/embeddings — OpenAI's embeddings API for the catalogue's embedding models (OpenAI,
Gemini, OpenRouter, OpenAI-compatible servers), billed per input token through the same money
path as chat completions (gateway.embeddings).

Built without FastAPI (``create_lean_app``, as the query function): every route takes the lean
path; anything else is answered by the FastAPI app of the same routes, built on first use.
"""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.embeddings.routes import router
from gateway.http import create_lean_app
from gateway.observability import instrument

app = create_lean_app("embeddings", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
