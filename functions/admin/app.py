"""/v1/admin/* — operator routes (admin key only): create users, grant credit, inspect users."""

from gateway import coldstart  # noqa: F401  (first: the import trims of gateway/coldstart.py)

# isort: split
from mangum import Mangum

from gateway.account.routes_admin import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("admin", [router])
handler = instrument(Mangum(app, lifespan="off"))
