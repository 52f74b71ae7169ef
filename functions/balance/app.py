"""GET /v1/balance, GET /v1/usage, GET /v1/usage/summary — the caller's credit and usage
(API key or sign-in token)."""

from mangum import Mangum

from gateway.account.routes_balance import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("balance", [router])
handler = instrument(Mangum(app, lifespan="off"))
