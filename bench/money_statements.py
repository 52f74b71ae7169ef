"""Interleaved A/B of the money statements alone: ``ledger.reserve`` + ``ledger.settle`` pairs of
two versions of ``gateway/money/ledger.py`` (A = a git ref, default main; B = this working tree)
against one migrated database, directly and through a real PgBouncer in transaction mode.

    .venv/bin/python -m bench.money_statements --rounds 30 --pairs 100
    .venv/bin/python -m bench.money_statements --base HEAD --carry   # carried holds against reserve + settle

Both versions run in one process per connection mode (the base's ledger module is loaded from
``git show <ref>:...`` next to this tree's; they share ``gateway.db``), alternating batches of
``--pairs`` sequential pairs (A B, B A, ...). Modes: ``direct`` (psycopg prepares after 5 runs),
``direct-unprepared`` (DATABASE_POOLED=true on the direct URL: what a pooled connection sends)
and ``pgbouncer`` (DB pool of 1 through PgBouncer with one server connection). Per mode and side:
the median over rounds of each batch's median pair time, of the server backend's CPU per pair
(/proc of the one Postgres backend serving the connection) and of the client's CPU per pair;
the median per-round difference B - A and how many rounds B won.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEDGER = "layers/common/gateway/money/ledger.py"
MODES = ("direct", "direct-unprepared", "pgbouncer")


def load_ledger(source: str, name: str) -> Any:
    """A ledger module from its source text, as a sibling of gateway.money.ledger."""
    directory = Path(tempfile.mkdtemp(prefix="mlp-ledger-"))
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"gateway.money.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CARRIED: dict[int, list[str]] = {}  # per ledger module: the hold its last settle carried (--carry)


async def pair(ledger: Any, user_id: str, key_id: str, prefix: str, n: int, carry: bool = False) -> None:
    """One request's money statements: reserve + settle; with ``carry`` (B side of ``--carry``), the
    request uses the hold the previous one's settle carried (no reserve) and its settle carries one."""
    request_id = f"{prefix}-{n}-{uuid.uuid4().hex[:8]}"
    held = CARRIED.setdefault(id(ledger), [])
    reservation = held.pop() if carry and held else None
    if reservation is None:
        await ledger.reserve(user_id, request_id, Decimal("0.05"), quotas={"free": 1_000_000_000},
                             api_key_id=key_id, model="openai/gpt-4o-mini", max_in_flight=64)
    record = ledger.UsageRecord(request_id=request_id, user_id=user_id, api_key_id=key_id,
                                model_requested="openai/gpt-4o-mini", model_served="gpt-4o-mini", provider="openai",
                                status="ok", prompt_tokens=1200, completion_tokens=300, cached_tokens=100,
                                prompt_price=Decimal("0.00000015"), completion_price=Decimal("0.0000006"),
                                cache_read_price=Decimal("0.000000075"), markup=Decimal("0.05"),
                                provider_cost=Decimal("0.000362"), charge=Decimal("0.00038011"),
                                latency_ms=420, ttfb_ms=180, stream=True)
    if not carry:
        assert (await ledger.settle(record)).settled
        return
    next_hold = ledger.Carry(request_id=f"hold_{uuid.uuid4().hex}", hold=Decimal("0.0625"), seconds=30,
                             quotas={"free": 1_000_000_000}, max_in_flight=64)
    result = await ledger.settle(record, reservation=reservation, carry=next_hold)
    assert result.settled and result.carried_tier is not None
    held.append(next_hold.request_id)


async def child(args: argparse.Namespace) -> None:
    from bench.harness import cpu_seconds
    from gateway import db
    from gateway.money import ledger as cand

    base_source = subprocess.run(["git", "show", f"{args.base}:{LEDGER}"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
    base = load_ledger(base_source, "_ledger_base")
    sides = {"A": base, "B": cand}
    row = await db.fetchone("SELECT pg_backend_pid() AS pid")
    assert row is not None
    backend = int(row["pid"])
    for side in sides.values():  # warm: plans cached, psycopg's prepare threshold passed
        for n in range(20):
            await pair(side, args.user, args.key, "warm", n, args.carry and side is cand)
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for name in order:
            check = await db.fetchone("SELECT pg_backend_pid() AS pid")
            assert check is not None and int(check["pid"]) == backend, "the server backend changed"
            times = []
            server0, client0 = cpu_seconds([backend]), time.process_time()
            for n in range(args.pairs):
                t0 = time.perf_counter()
                await pair(sides[name], args.user, args.key, f"{name}{r}", n, args.carry and name == "B")
                times.append(time.perf_counter() - t0)
            server, client = cpu_seconds([backend]) - server0, time.process_time() - client0
            results[name].append({"pair_ms": statistics.median(times) * 1000,
                                  "server_cpu_ms": server * 1000 / args.pairs,
                                  "client_cpu_ms": client * 1000 / args.pairs})
    print(json.dumps(results))


def summarise(mode: str, results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{mode}: {len(results['A'])} rounds")
    for metric in ("pair_ms", "server_cpu_ms", "client_cpu_ms"):
        a = [x[metric] for x in results["A"]]
        b = [x[metric] for x in results["B"]]
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        wins = sum(d < 0 for d in diffs)
        print(f"  {metric:14s} A {statistics.median(a):7.3f}  B {statistics.median(b):7.3f}  "
              f"B-A {statistics.median(diffs):+7.3f}  B lower in {wins}/{len(diffs)} rounds")


def seed(url: str) -> tuple[str, str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO users (email) VALUES ('bench@example.com') RETURNING id").fetchone()
        assert row is not None
        user = str(row[0])
        conn.execute("INSERT INTO balances (user_id, balance) VALUES (%s, 1000000)", (user,))
        conn.execute("INSERT INTO ledger_entries (user_id, amount, kind, reference) VALUES (%s, 1000000, 'grant', "
                     "'bench-credit')", (user,))
        row = conn.execute("INSERT INTO api_keys (user_id, key_hash, prefix) VALUES (%s, %s, 'sk-mlp-bench') "
                           "RETURNING id", (user, uuid.uuid4().hex)).fetchone()
        assert row is not None
        return user, str(row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop (uvicorn runs the query function on uvloop)")
    parser.add_argument("--carry", action="store_true",
                        help="B's requests use the hold the previous settle carried (docs/money.md, carried holds)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(child(args))
        else:
            asyncio.run(child(args))
        return

    from gateway.migrate import migrate
    from tests.support import pgbouncer, services

    services.ensure_services()
    url = services.create_database("mlp_bench_money")
    bouncer = pgbouncer.start(pool_size=1)
    try:
        migrate(url)
        user, key = seed(url)
        print(f"load at start: {os.getloadavg()}, loop: {args.loop}")
        for mode in args.modes.split(","):
            env = {**os.environ, "STAGE": "local", "DB_POOL_MAX": "1", "POWERTOOLS_LOG_LEVEL": "ERROR",
                   "DATABASE_URL": bouncer.pooled(url) if mode == "pgbouncer" else url,
                   "DATABASE_POOLED": "false" if mode == "direct" else "true"}
            done = subprocess.run([sys.executable, "-m", "bench.money_statements", "--child", "--base", args.base,
                                   "--rounds", str(args.rounds), "--pairs", str(args.pairs), "--loop", args.loop,
                                   *(["--carry"] if args.carry else []),
                                   "--user", user, "--key", key], cwd=ROOT, env=env, capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
            summarise(mode, json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"\nload at end: {os.getloadavg()}")
    finally:
        bouncer.stop()
        services.drop_database(url)


if __name__ == "__main__":
    main()
