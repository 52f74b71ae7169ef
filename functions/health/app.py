"""GET /health — database, migrations and Upstash status."""

from gateway.health import router
from gateway.http import create_app
from gateway.observability import instrument
from mangum import Mangum

app = create_app("health", [router])
handler = instrument(Mangum(app, lifespan="off"))
