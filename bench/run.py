"""Gateway overhead benchmark: the same chat request sent directly to the fake upstream and
through the gateway (full path: auth, rate limit on Upstash via the REST bridge, reserve and
settle in Postgres), at c=1 and c=16, plus time to first streamed byte.

    make bench            # or: .venv/bin/python -m bench.run [--requests 1000]

The stack is `infra.local.devserver` in its own process (one uvicorn worker, like `make dev`),
which spawns the fake providers and the Upstash bridge as separate processes. Results are
printed as a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import best_of, measure_get
from bench.stack import UNLIMITED_TIERS, grant_bench_credit
from bench.workload import BODY
from infra.local.servers import free_port
from tests.support import services

ROOT = Path(__file__).resolve().parents[1]


def start_stack() -> tuple[subprocess.Popen[bytes], dict[str, Any], str]:
    services.ensure_services()
    database_url = services.create_database("mlp_bench")
    port = free_port()
    creds_file = Path(f"/tmp/mlp-bench-{port}.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSTASH_", "OPENAI_", "RATELIMIT_"))}
    env.update({"DATABASE_URL": database_url, "STAGE": "local", "POWERTOOLS_LOG_LEVEL": "ERROR",
                "TIERS_JSON": UNLIMITED_TIERS,
                # its own keys in the shared Redis: the default prefix's rendered catalogue would be
                # served to every other local stack on the machine (e2e runs included)
                "RATELIMIT_PREFIX": f"mlpbench-{port}"})
    proc = subprocess.Popen([sys.executable, "-m", "infra.local.devserver", "--port", str(port),
                             "--credentials-file", str(creds_file)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not creds_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("stack did not start")
        time.sleep(0.2)
    time.sleep(0.5)
    creds = json.loads(creds_file.read_text())
    grant_bench_credit(database_url, creds["user_id"])
    return proc, creds, database_url


async def main_async(requests: int, repeat: int) -> None:
    proc, creds, database_url = start_stack()
    try:
        fake = creds["fake_providers_url"]
        direct = (f"{fake}/openai/v1/chat/completions", {"Authorization": "Bearer sk-fake-openai"})
        gateway = (creds["base_url"] + "/v1/chat/completions", {"Authorization": f"Bearer {creds['api_key']}"})
        rows = []
        for c in (1, 16):
            n = requests if c > 1 else max(200, requests // 4)
            d = await best_of(repeat, *direct, BODY, n, c)
            g = await best_of(repeat, *gateway, BODY, n, c)
            rows.append((f"non-stream c={c}", d, g))
        sbody = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
        for c in (1, 16):
            n = requests if c > 1 else max(200, requests // 4)
            d = await best_of(repeat, *direct, sbody, n, c, stream=True)
            g = await best_of(repeat, *gateway, sbody, n, c, stream=True)
            rows.append((f"stream c={c}", d, g))
        models = await measure_get(creds["base_url"] + "/v1/models", 300)
        one = await measure_get(creds["base_url"] + "/v1/models/openai/gpt-4o-mini", 300)
        with psycopg.connect(database_url) as conn:
            bad = conn.execute(
                "SELECT count(*) FROM balances b LEFT JOIN (SELECT user_id, sum(amount) s FROM ledger_entries "
                "GROUP BY 1) l USING (user_id) WHERE b.balance <> COALESCE(l.s, 0) OR b.reserved <> 0").fetchone()
            usage_rows = conn.execute("SELECT count(*) FROM usage_records").fetchone()
        print(f"\nrequests per run: {requests} (c=1 rows: {max(200, requests // 4)}), median of {repeat} runs; "
              f"usage records written: "
              f"{usage_rows[0] if usage_rows else 0}; ledger invariant violations: {bad[0] if bad else '?'}\n")
        print("| case | direct p50 ms | gateway p50 ms | overhead p50 ms | direct p99 ms | gateway p99 ms | "
              "gateway req/s | direct req/s | gateway TTFB p50 ms | direct TTFB p50 ms | errors |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, d, g in rows:
            print(f"| {name} | {d['p50']:.2f} | {g['p50']:.2f} | {g['p50'] - d['p50']:+.2f} | {d['p99']:.2f} | "
                  f"{g['p99']:.2f} | {g['rps']:.0f} | {d['rps']:.0f} | {g.get('ttfb_p50', float('nan')):.2f} | "
                  f"{d.get('ttfb_p50', float('nan')):.2f} | {int(g['errors'])} |")
        print(f"\nwarm GET /v1/models (whole catalogue, client accepts gzip): p50 {models['p50']:.2f} ms, "
              f"p99 {models['p99']:.2f} ms; GET /v1/models/openai/gpt-4o-mini: p50 {one['p50']:.2f} ms, "
              f"p99 {one['p99']:.2f} ms (c=1, 300 requests)")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        services.drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the median run is reported")
    args = parser.parse_args()
    asyncio.run(main_async(args.requests, args.repeat))


if __name__ == "__main__":
    main()
