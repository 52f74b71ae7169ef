"""``POST /v1/chat/completions``: request schema, the billing pipeline and the route."""
