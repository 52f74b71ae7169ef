"""POST /webhooks/stripe — no authorizer: every request is verified by its Stripe-Signature.

The stripe library (functions/webhooks/requirements.txt) is imported on the first event.
"""

from gateway import coldstart  # first: import trims, the collector paused until done()

# isort: split
from mangum import Mangum

from gateway.billing.webhooks import router
from gateway.http import create_app
from gateway.observability import instrument

app = create_app("webhooks", [router])
handler = instrument(Mangum(app, lifespan="off"))
coldstart.done()
