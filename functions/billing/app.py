"""Billing: POST /v1/billing/checkout, POST /v1/billing/portal, GET /v1/subscription.

The stripe library (functions/billing/requirements.txt) is imported on the first Stripe call,
not at cold start.
"""

from gateway import coldstart  # noqa: F401  (first: the import trims of gateway/coldstart.py)

# isort: split
from mangum import Mangum

from gateway.billing.routes import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("billing", [router])
handler = instrument(Mangum(app, lifespan="off"))
