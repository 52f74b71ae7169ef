"""GET /v1/balance, GET /v1/usage, GET /v1/usage/summary — the caller's credit and usage
(API key or sign-in token); GET /v1/key and GET /v1/credits — the same, OpenRouter-shaped."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.account.routes_balance import router
from gateway.account.routes_openrouter import router as openrouter_router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("balance", [router, openrouter_router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
