"""Multi-LLM gateway: the shared Lambda layer with all product logic, in rooms by concern.

From the top (a room imports only rooms below it: docs/architecture.md, checked by
tests/infrastructure/test_architecture.py):

- operators: ``cli`` (the ``mlp`` command), ``smoke`` (the post-deploy smoke test);
- surfaces: ``chat`` (``POST /v1/chat/completions``: the pipeline plan → admit → call with
  fallback → settle), ``messages`` / ``responses`` / ``embeddings`` (the Anthropic Messages, OpenAI
  Responses and embeddings surfaces, translated onto the chat pipeline), ``console`` (the customer
  console), ``health`` (``GET /health``);
- features: ``billing`` (the Stripe feature: checkout, portal, webhook, subscriptions, refunds),
  ``account`` (users, API keys, BYOK keys, balance and usage views, admin), ``catalog`` (models,
  prices, discovery, the cached public catalogue);
- core: ``money`` (prices, the rounding rule, holds, the ledger, the orphan sweeper),
  ``translation`` (helpers shared by the translated surfaces), ``adapters`` (the provider registry
  and one adapter per wire format);
- kernel: ``http`` (the app factory — FastAPI, or without it for the query function — and the
  error mapping), ``ratelimit`` (Upstash sliding windows), ``auth`` (API keys, the admin key),
  ``migrate`` (SQL migrations), ``serving`` (the HTTP protocol the streaming function's uvicorn
  serves with), ``db`` (Postgres),
  ``upstash`` (the Redis REST client), ``upstream_http`` (the lean HTTP/1.1 client of the provider
  and Upstash calls), ``loops`` (event-loop-bound state, the work a response waits for), ``observability``
  (Powertools logger and metrics), ``config`` (settings, the tier table), ``errors`` (typed
  errors, the OpenAI error shape), ``coldstart`` (what a function's ``app.py`` imports first: import
  trims, the garbage collector paused until the app is built), ``records`` (``@frozen``: immutable
  value records declared without the dataclass methods nothing uses), then ``import_bundle`` (the
  query functions' cold-start modules, and the texts their classes compile, read from one file the
  layer build writes).
"""

__version__ = "0.1.0"
