"""/v1/admin/* — operator routes (admin key only): create users, grant credit, inspect users."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.account.routes_admin import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("admin", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
