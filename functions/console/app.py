"""GET /console, GET /console/{proxy+} — the customer console's pages and assets, and
GET /console/api/usage/breakdown (usage per day, model and key for its charts)."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.console.routes import create_console_app
from gateway.observability import instrument

app = create_console_app()
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
