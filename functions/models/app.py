"""GET /v1/models and GET /v1/models/{model_id+} — the priced model catalogue (docs/models.md)."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.catalog.routes import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("models", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
