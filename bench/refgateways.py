"""Two reference gateways for the peer benchmark (bench/peers.py), written for it, not products.

``bare``  — an aiohttp passthrough: forwards the request body and Authorization header to the
            upstream and relays the answer (streams chunk by chunk). No auth, no billing: the floor
            any Python gateway on this machine pays for one extra HTTP hop.
``naive`` — a straightforward FastAPI gateway with the same billing steps as ours, written the
            obvious way: key lookup in Postgres on every request (no cache), the Upstash rate limit
            with upstash-ratelimit's default client, reserve the worst case, call the upstream with
            aiohttp, settle (ledger row + usage row + balance) before answering. Its own tables
            (``naive_*``) in the bench database; Decimal money; one statement per step.

    python -m bench.refgateways bare  --port 9001 --upstream http://127.0.0.1:9100/openai/v1
    python -m bench.refgateways naive --port 9002 --upstream ... (needs DATABASE_URL, UPSTASH_*, BENCH_*)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp

# gpt-4o-mini list prices (USD per token) and the markup our default tier uses
PROMPT_PRICE = Decimal("0.00000015")
COMPLETION_PRICE = Decimal("0.0000006")
MARKUP = Decimal("1.10")
CENT_PLACES = Decimal("0.00000001")


# --------------------------------------------------------------------------- bare passthrough
def bare_app(upstream: str) -> Any:
    from aiohttp import web

    session: aiohttp.ClientSession | None = None

    async def on_startup(_: web.Application) -> None:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def on_cleanup(_: web.Application) -> None:
        if session is not None:
            await session.close()

    async def chat(request: web.Request) -> web.StreamResponse:
        assert session is not None
        body = await request.read()
        headers = {"content-type": "application/json", "authorization": request.headers.get("authorization", "")}
        async with session.post(f"{upstream}/chat/completions", data=body, headers=headers) as r:
            if r.content_type == "text/event-stream":
                out = web.StreamResponse(status=r.status, headers={"content-type": "text/event-stream"})
                await out.prepare(request)
                async for chunk in r.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


# --------------------------------------------------------------------------- naive billing gateway
NAIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS naive_accounts (
    user_id uuid PRIMARY KEY, key_hash text UNIQUE NOT NULL,
    balance numeric(20, 8) NOT NULL, reserved numeric(20, 8) NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS naive_reservations (
    request_id text PRIMARY KEY, user_id uuid NOT NULL, amount numeric(20, 8) NOT NULL);
CREATE TABLE IF NOT EXISTS naive_ledger (
    id bigserial PRIMARY KEY, user_id uuid NOT NULL, amount numeric(20, 8) NOT NULL,
    reference text UNIQUE NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS naive_usage (
    request_id text PRIMARY KEY, user_id uuid NOT NULL, model text NOT NULL, prompt_tokens int NOT NULL,
    completion_tokens int NOT NULL, cost numeric(20, 8) NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""
RESERVE = """
WITH a AS (
    UPDATE naive_accounts SET reserved = reserved + %(hold)s
    WHERE user_id = %(user_id)s AND balance - reserved >= %(hold)s RETURNING user_id)
INSERT INTO naive_reservations (request_id, user_id, amount) SELECT %(request_id)s, user_id, %(hold)s FROM a
RETURNING request_id"""
SETTLE = """
WITH r AS (DELETE FROM naive_reservations WHERE request_id = %(request_id)s RETURNING user_id, amount),
l AS (INSERT INTO naive_ledger (user_id, amount, reference)
      SELECT user_id, -%(charge)s, 'usage:' || %(request_id)s FROM r),
u AS (INSERT INTO naive_usage (request_id, user_id, model, prompt_tokens, completion_tokens, cost)
      SELECT %(request_id)s, user_id, %(model)s, %(prompt)s, %(completion)s, %(charge)s FROM r)
UPDATE naive_accounts a SET balance = a.balance - %(charge)s, reserved = a.reserved - r.amount
FROM r WHERE a.user_id = r.user_id"""


def _charge(prompt_tokens: int, completion_tokens: int) -> Decimal:
    cost = prompt_tokens * PROMPT_PRICE + completion_tokens * COMPLETION_PRICE
    return (cost * MARKUP).quantize(CENT_PLACES)


def naive_app(upstream: str) -> Any:
    global ChatBody, Request  # module globals: FastAPI resolves the endpoint's annotations there
    from fastapi import Request
    from pydantic import BaseModel, ConfigDict

    class ChatBody(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: str
        messages: list[dict[str, Any]]
        max_tokens: int | None = None
        stream: bool = False

    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse
    from psycopg_pool import AsyncConnectionPool
    from upstash_ratelimit.asyncio import Ratelimit, SlidingWindow
    from upstash_redis.asyncio import Redis

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=10, open=False,
                                   kwargs={"autocommit": True})
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(NAIVE_SCHEMA)
            key_hash = hashlib.sha256(os.environ["BENCH_API_KEY"].encode()).hexdigest()
            await conn.execute("INSERT INTO naive_accounts (user_id, key_hash, balance) VALUES (%s, %s, 100000) "
                               "ON CONFLICT DO NOTHING", (os.environ["BENCH_USER_ID"], key_hash))
        redis = Redis(url=os.environ["UPSTASH_REDIS_REST_URL"], token=os.environ["UPSTASH_REDIS_REST_TOKEN"])
        state.update(pool=pool, session=aiohttp.ClientSession(),
                     limiter=Ratelimit(redis=redis, limiter=SlidingWindow(max_requests=10_000_000, window=60),
                                       prefix="naivebench"))
        yield
        await state["session"].close()
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    async def sql(statement: str, params: Any) -> Any:
        async with state["pool"].connection() as conn:
            cur = await conn.execute(statement, params)
            return await cur.fetchone() if cur.description else None

    async def settle(request_id: str, user_id: Any, model: str, usage: dict[str, Any]) -> None:
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        await sql(SETTLE, {"request_id": request_id, "charge": _charge(prompt, completion), "model": model,
                           "prompt": prompt, "completion": completion})

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request) -> Any:
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        row = await sql("SELECT user_id FROM naive_accounts WHERE key_hash = %s",
                        (hashlib.sha256(key.encode()).hexdigest(),))
        if row is None:
            raise HTTPException(401, "invalid API key")
        user_id = row[0]
        if not (await state["limiter"].limit(str(user_id))).allowed:
            raise HTTPException(429, "rate limited")
        prompt_estimate = sum(len(str(m.get("content", ""))) for m in body.messages) // 4 + 1
        request_id = uuid.uuid4().hex
        hold = _charge(prompt_estimate, body.max_tokens or 4096)
        if await sql(RESERVE, {"hold": hold, "user_id": user_id, "request_id": request_id}) is None:
            raise HTTPException(402, "insufficient credit")
        payload = body.model_dump()
        headers = {"authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'sk-fake-openai')}"}
        upstream_call = state["session"].post(f"{upstream}/chat/completions", json=payload, headers=headers)
        if not body.stream:
            async with upstream_call as r:
                answer = await r.json()
            await settle(request_id, user_id, body.model, answer.get("usage") or {})
            return JSONResponse(answer, status_code=r.status)

        async def relay() -> AsyncIterator[bytes]:
            usage: dict[str, Any] = {}
            try:
                async with upstream_call as r:
                    async for line in r.content:
                        if line.startswith(b"data: {") and b'"usage"' in line:
                            usage = json.loads(line[6:]).get("usage") or usage
                        yield line
            finally:
                await settle(request_id, user_id, body.model, usage)

        return StreamingResponse(relay(), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.refgateways")
    parser.add_argument("kind", choices=["bare", "naive"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI-compatible base URL (…/v1)")
    args = parser.parse_args(argv)
    if args.kind == "bare":
        import asyncio
        import importlib.util

        from aiohttp import web

        if importlib.util.find_spec("uvloop") is not None:  # a layer dependency since issue 15 lever 9
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        web.run_app(bare_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None)
    else:
        import uvicorn

        uvicorn.run(naive_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False)


if __name__ == "__main__":
    main()
