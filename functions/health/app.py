"""GET /health — database, migrations and Upstash status."""

from gateway import coldstart  # noqa: F401  (first: the import trims of gateway/coldstart.py)

# isort: split
from mangum import Mangum

from gateway.health import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("health", [router])
handler = instrument(Mangum(app, lifespan="off"))
