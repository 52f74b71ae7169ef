"""What a 100 ms upstream does to a gateway's overhead on this machine (issue 15, lever 23).

    .venv/bin/python -m bench.idle                  # ~2 minutes: both parts below
    .venv/bin/python -m bench.idle --rounds 8 --only apps

Two measurements, no gateway code of ours involved:

1. ``work``: one fixed piece of Python work (JSON and Decimal, ~0.15 ms) timed in one uvloop
   process right after ``await asyncio.sleep(S)`` for S = 0, 0.2 ms, 2 ms, 20 ms and 100 ms; then
   after 100 ms with a 1 ms busy spin first (a CPU that only needed waking up would be fast
   again) and with the same work run once first (caches refilled).
2. ``pg``: Postgres round trips from one psycopg connection: ``SELECT 1`` back to back, after a
   100 ms sleep, after a 100 ms busy spin of this process (so only the server side was idle) and
   after a 100 ms sleep with another connection's ``SELECT 1`` 1 ms before it; an autocommitted
   UPDATE of one balance row (a reserve's shape) back to back and after a 100 ms sleep, with the
   commit's WAL flush and without it (``synchronous_commit = off`` on that session).
3. ``apps``: minimal aiohttp passthroughs against the same fake upstream (bench/stack.py), each
   a bare passthrough plus ONE thing, measured at c=1 (``--concurrency``) with a 0 ms and a 100 ms
   upstream in interleaved rounds (the order rotates every round); printed: each one's p50 minus
   the bare passthrough's, at 0 and at 100 ms, and how much that grows with the 100 ms upstream:
     bare     the passthrough (bench/refgateways.py)
     cpu      + ~0.5 ms of fixed Python work after the upstream answer
     pg1      + one autocommitted UPDATE of a balance row before the upstream call (our reserve)
     pg2      + pg1 and a second UPDATE of the same row after the response is sent (our settle,
              as the local server runs it: a background task after the response)
     ours     (``--with-ours``) our query function as bench/peers.py runs it (uvicorn, uvloop,
              httptools; key, rate-limit lease, reserve, settle)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from decimal import Decimal
from typing import Any

import aiohttp

KINDS = ("bare", "cpu", "pg1", "pg2")
TABLE = "bench_idle_balance"
DOC = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
       "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello world " * 20},
                    "finish_reason": "stop"}],
       "usage": {"prompt_tokens": 25, "completion_tokens": 60, "total_tokens": 85}}
RAW = json.dumps(DOC)


def fixed_work(rounds: int = 20) -> None:
    """The same JSON and Decimal work every time (~0.15 ms for 20 rounds on this machine, warm)."""
    for _ in range(rounds):
        d = json.loads(RAW)
        cost = (Decimal("0.00000015") * d["usage"]["prompt_tokens"]
                + Decimal("0.0000006") * d["usage"]["completion_tokens"])
        json.dumps(d)
        str(cost.quantize(Decimal("1e-8")))


# --------------------------------------------------------------------------- 1. work after a sleep
async def work_after_sleep(rounds: int) -> list[tuple[str, float, float]]:
    def spin(ms: float) -> None:
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass

    cases: list[tuple[str, float, str]] = [
        ("no sleep", 0.0, ""), ("after 0.2 ms", 0.0002, ""), ("after 2 ms", 0.002, ""),
        ("after 20 ms", 0.02, ""), ("after 100 ms", 0.1, ""), ("after 100 ms + 1 ms spin", 0.1, "spin"),
        ("after 100 ms + the work once", 0.1, "work")]
    seen: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for label, sleep_s, before in cases:
            walls, cpus = [], []
            for _ in range(25):
                await asyncio.sleep(sleep_s)
                if before == "spin":
                    spin(1)
                elif before == "work":
                    fixed_work()
                w0, c0 = time.perf_counter(), time.thread_time()
                fixed_work()
                walls.append(time.perf_counter() - w0)
                cpus.append(time.thread_time() - c0)
            seen.setdefault(label, []).append((statistics.median(walls) * 1000, statistics.median(cpus) * 1000))
    return [(label, statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for label, v in seen.items()]


# --------------------------------------------------------------------------- 2. Postgres after idle
async def pg_after_idle(rounds: int) -> list[tuple[str, float]]:
    import psycopg

    from tests.support import services

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    url = services.create_database("mlp_bench_idle")
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        other = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async_commit = await psycopg.AsyncConnection.connect(url, autocommit=True)
        await conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, balance numeric NOT NULL, "
                           "reserved numeric NOT NULL)")
        await conn.execute(f"INSERT INTO {TABLE} VALUES (1, 1000000000, 0)")
        await async_commit.execute("SET synchronous_commit = off")
        update = f"UPDATE {TABLE} SET reserved = reserved + 1 WHERE id = 1"
        cases: list[tuple[str, Any, str]] = [
            ("SELECT 1, back to back", conn, ""), ("SELECT 1, after a 100 ms sleep", conn, "sleep"),
            ("SELECT 1, after a 100 ms busy spin of this process", conn, "spin"),
            ("SELECT 1, after a 100 ms sleep, another connection's SELECT 1 1 ms before", conn, "ping"),
            ("UPDATE (autocommit), back to back", conn, "update"),
            ("UPDATE (autocommit), after a 100 ms sleep", conn, "update sleep"),
            ("UPDATE, synchronous_commit off, back to back", async_commit, "update"),
            ("UPDATE, synchronous_commit off, after a 100 ms sleep", async_commit, "update sleep")]
        seen: dict[str, list[float]] = {}
        for _ in range(rounds):
            for label, c, how in cases:
                times = []
                for _ in range(20):
                    if "sleep" in how:
                        await asyncio.sleep(0.1)
                    elif how == "spin":
                        spin(0.1)
                    elif how == "ping":
                        await asyncio.sleep(0.099)
                        await other.execute("SELECT 1")
                    t0 = time.perf_counter()
                    await c.execute(update if how.startswith("update") else "SELECT 1")
                    times.append(time.perf_counter() - t0)
                seen.setdefault(label, []).append(statistics.median(times) * 1000)
        for c in (conn, other, async_commit):
            await c.close()
        return [(label, statistics.median(v)) for label, v in seen.items()]
    finally:
        services.drop_database(url)


# --------------------------------------------------------------------------- 3. the minimal apps
def serve(kind: str, port: int, upstream: str, database_url: str) -> None:
    from aiohttp import web

    state: dict[str, Any] = {}
    background: set[asyncio.Task[None]] = set()

    async def on_startup(_: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        if kind.startswith("pg"):
            from psycopg_pool import AsyncConnectionPool

            pool = AsyncConnectionPool(database_url, min_size=2, max_size=2, open=False,
                                       kwargs={"autocommit": True})
            await pool.open(wait=True)
            state["pool"] = pool

    async def on_cleanup(_: web.Application) -> None:
        await state["session"].close()
        if "pool" in state:
            await state["pool"].close()

    async def statement(sql: str) -> None:
        async with state["pool"].connection() as conn:
            await conn.execute(sql)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if kind.startswith("pg"):  # the reserve: before the upstream call
            await statement(f"UPDATE {TABLE} SET reserved = reserved + 1 WHERE id = 1")
        headers = {"content-type": "application/json", "authorization": request.headers.get("authorization", "")}
        async with state["session"].post(f"{upstream}/chat/completions", data=body, headers=headers) as r:
            data = await r.read()
            status = r.status
        if kind == "cpu":
            fixed_work(60)
        response = web.Response(body=data, status=status, content_type="application/json")
        if kind == "pg2":  # the settle: after the response is sent, as a background task
            await response.prepare(request)
            await response.write_eof()
            task = asyncio.ensure_future(statement(
                f"UPDATE {TABLE} SET reserved = reserved - 1, balance = balance - 1 WHERE id = 1"))
            background.add(task)
            task.add_done_callback(background.discard)
        return response

    import uvloop

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def run_apps(rounds: int, n0: int, n100: int, with_ours: bool, concurrency: int = 1
                   ) -> dict[str, dict[float, list[float]]]:
    import psycopg

    from bench.harness import measure
    from bench.stack import spawn, start_services, wait_until
    from bench.workload import chat_body
    from infra.local.servers import free_port

    svc = start_services()
    procs = []
    try:
        with psycopg.connect(svc.database_url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, balance numeric NOT NULL, "
                         "reserved numeric NOT NULL)")
            conn.execute(f"INSERT INTO {TABLE} VALUES (1, 1000000000, 0)")
        urls, auth = {}, {}
        kinds = KINDS + (("ours",) if with_ours else ())
        if with_ours:
            port = free_port()
            proc = spawn("idle-ours", [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", "functions/query",
                                       "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
                                       "warning", "--loop", "uvloop", "--http", "httptools"], svc.gateway_env())
            procs.append(proc)
            urls["ours"] = f"http://127.0.0.1:{port}/v1/chat/completions"
            auth["ours"] = {"authorization": f"Bearer {svc.api_key}"}
            wait_until(proc, urls["ours"], body=chat_body(), headers=auth["ours"], timeout=90)
        for kind in KINDS:
            port = free_port()
            proc = spawn(f"idle-{kind}", [sys.executable, "-m", "bench.idle", "serve", kind, "--port", str(port),
                                          "--upstream", svc.openai_base, "--database-url", svc.database_url])
            procs.append(proc)
            urls[kind] = f"http://127.0.0.1:{port}/v1/chat/completions"
            wait_until(proc, urls[kind], body=chat_body(), headers={"authorization": "Bearer sk-fake-openai"})
        headers = {"authorization": "Bearer sk-fake-openai"}
        p50: dict[str, dict[float, list[float]]] = {k: {0.0: [], 0.1: []} for k in kinds}
        for i in range(rounds):
            order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
            for delay, n in ((0.0, n0), (0.1, n100)):
                body = chat_body(upstream_delay_s=delay)
                for kind in order:
                    r = await measure(urls[kind], auth.get(kind, headers), body, n, concurrency, warmup=5)
                    p50[kind][delay].append(r["p50"])
            print(f"round {i + 1}/{rounds}: " + ", ".join(
                f"{k} {p50[k][0.0][-1]:.2f}/{p50[k][0.1][-1]:.2f}" for k in kinds), flush=True)
        return p50
    finally:
        for proc in procs:
            proc.stop()
        svc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle")
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("kind", choices=KINDS)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--upstream", required=True)
    s.add_argument("--database-url", required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=200, help="per batch with the 0 ms upstream")
    parser.add_argument("--requests-slow", type=int, default=40, help="per batch with the 100 ms upstream")
    parser.add_argument("--only", choices=["work", "pg", "apps"])
    parser.add_argument("--with-ours", action="store_true", help="our query function in the same rounds")
    parser.add_argument("--concurrency", type=int, default=1, help="connections of the apps' load (e.g. 16)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.kind, args.port, args.upstream, args.database_url)
        return
    from bench.harness import load_average

    print(f"load at start: {load_average()}")
    if args.only in (None, "work"):
        import uvloop

        rows = uvloop.run(work_after_sleep(args.rounds))
        print("\n| fixed work (JSON + Decimal) | wall ms | CPU ms |\n|---|---|---|")
        for label, wall, cpu in rows:
            print(f"| {label} | {wall:.3f} | {cpu:.3f} |")
    if args.only in (None, "pg"):
        rows_pg = asyncio.run(pg_after_idle(args.rounds))
        print("\n| Postgres round trip (one psycopg connection) | p50 ms |\n|---|---|")
        for label, ms in rows_pg:
            print(f"| {label} | {ms:.3f} |")
    if args.only in (None, "apps"):
        p50 = asyncio.run(run_apps(args.rounds, args.requests, args.requests_slow, args.with_ours, args.concurrency))
        print(f"\n| app, c={args.concurrency} | p50 over bare, 0 ms upstream | p50 over bare, 100 ms upstream "
              "| growth (ms) |")
        print("|---|---|---|---|")
        for kind in [k for k in p50 if k != "bare"]:
            d0 = [a - b for a, b in zip(p50[kind][0.0], p50["bare"][0.0], strict=True)]
            d1 = [a - b for a, b in zip(p50[kind][0.1], p50["bare"][0.1], strict=True)]
            grow = [b - a for a, b in zip(d0, d1, strict=True)]
            print(f"| {kind} | {statistics.median(d0):+.2f} | {statistics.median(d1):+.2f} | "
                  f"{statistics.median(grow):+.2f} (larger in {sum(g > 0 for g in grow)}/{len(grow)} rounds) |")
        bare0, bare1 = statistics.median(p50["bare"][0.0]), statistics.median(p50["bare"][0.1])
        print(f"\nbare p50: {bare0:.2f} ms (0 ms upstream), {bare1:.2f} ms (100 ms upstream)")
    print(f"load at end: {load_average()}")


if __name__ == "__main__":
    main()
