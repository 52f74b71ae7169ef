"""/v1/keys (the caller's API keys) and /v1/provider-keys/{provider} (BYOK provider keys)."""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.account.routes_keys import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("keys", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
