"""Multi-LLM gateway: the shared Lambda layer with all product logic.

Rooms: ``config`` (settings), ``errors`` (typed errors → OpenAI-shaped responses),
``observability`` (Powertools logger/metrics), ``db`` (Postgres), ``auth`` (API keys),
``billing`` (pricing, ledger, reservations), ``ratelimit`` (Upstash), ``adapters`` (providers),
``catalog`` (models and prices), ``http`` (the FastAPI app factory every function uses).
"""

__version__ = "0.1.0"
