"""GET /health — database, migrations and Upstash status."""

from mangum import Mangum

from gateway.health import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("health", [router])
handler = instrument(Mangum(app, lifespan="off"))
