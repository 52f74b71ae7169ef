"""Billing: POST /v1/billing/checkout, POST /v1/billing/portal, GET /v1/subscription.

The stripe library (functions/billing/requirements.txt) is imported on the first Stripe call,
not at cold start.
"""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.billing.routes import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("billing", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
