"""GET /health — database, migrations and Upstash status."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.health import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("health", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
