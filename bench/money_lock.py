"""Interleaved A/B of the money FUNCTIONS under contention on one user's balance row: pgbench
clients each running ``mlp_reserve`` + ``mlp_settle`` pairs for the SAME user (one ``balances``
row), against two databases: A migrated with a git ref's migrations (default main), B with this
tree's. The client is pgbench (C, prepared statements), so the numbers are the server's: how long
a pair holds the row and how the row's queue grows with concurrency.

    .venv/bin/python -m bench.money_lock --rounds 10 --clients 1,16 --seconds 3

Per round and client count, A and B run one after the other (order alternating) for ``--seconds``
each. Reported per client count: the median pairs/s and mean pair latency of each side, the
median per-round difference B - A and how many rounds B won. At the end both databases' books are
checked (balance = sum(ledger), reserved = sum(reservations), no reservation left) and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from gateway.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = "layers/common/gateway/migrations"
SERVER = os.environ.get("TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")

RECORD = {
    "prompt_tokens": 1200, "completion_tokens": 300, "cached_tokens": 100, "cache_write_tokens": 0,
    "cache_write_1h_tokens": 0, "audio_tokens": 0, "request_id": "x", "model_requested": "openai/gpt-4o-mini",
    "status": "ok", "api_key_id": None, "model_served": "gpt-4o-mini", "provider": "openai",
    "prompt_price": "0.00000015", "completion_price": "0.0000006", "cache_read_price": "0.000000075",
    "cache_write_price": None, "cache_write_1h_price": None, "audio_price": None, "request_price": "0",
    "markup": "0.05", "byok": False, "provider_cost": "0.000369", "reported_cost": None, "charge": "0.00038745",
    "latency_ms": 120, "ttfb_ms": 80, "error_code": None, "estimated": False, "stream": False,
}

SCRIPT = """\\set r random(1, 1000000000000)
SELECT request_id FROM mlp_reserve(CAST(:uid AS uuid), CAST(:client_id AS text) || '-' || CAST(:r AS text), 0.05,
    CAST(:period AS date), '{}'::jsonb, -1, NULL, 'openai/gpt-4o-mini', 64);
SELECT balance FROM mlp_settle(
    jsonb_set(CAST(:rec AS jsonb), '{request_id}', to_jsonb(CAST(:client_id AS text) || '-' || CAST(:r AS text))),
    CAST(:period AS date), false, 'bench');
"""


def base_migrations(ref: str) -> Path:
    """A's migrations: a directory as it is, else the ones of git ref ``ref``."""
    if Path(ref).is_dir():
        return Path(ref)
    out = Path(tempfile.mkdtemp(prefix="mlp-migrations-"))
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{ref}:{MIGRATIONS}"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        text = subprocess.run(["git", "show", f"{ref}:{MIGRATIONS}/{name}"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        (out / name).write_text(text, encoding="utf-8")
    return out


def create(name: str, migrations: Path, async_commit: bool = False) -> tuple[str, str]:
    with psycopg.connect(SERVER + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if async_commit:
            conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(sql.Identifier(name)))
    url = f"{SERVER}/{name}"
    migrate(url, migrations)
    with psycopg.connect(url, autocommit=True) as conn:
        uid = conn.execute("INSERT INTO users (tier) VALUES ('free') RETURNING id").fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO balances (user_id, balance) VALUES (%s, 1000000)", (uid,))
        conn.execute("INSERT INTO ledger_entries (user_id, amount, kind, reference) VALUES (%s, 1000000, 'grant', %s)",
                     (uid, f"bench-{uuid.uuid4().hex}"))
    return url, str(uid)


def run(url: str, uid: str, period: str, script: Path, clients: int, seconds: int) -> tuple[float, float]:
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "1", "-T", str(seconds), "-f", str(script),
         "-D", f"uid={uid}", "-D", f"period={period}", "-D", f"rec={json.dumps(RECORD)}", url],
        check=True, capture_output=True, text=True).stdout
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))  # type: ignore[union-attr]
    return tps, lat


def books(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        bad = conn.execute(
            "SELECT count(*) FROM balances b WHERE b.balance <> (SELECT COALESCE(sum(amount), 0) FROM ledger_entries l "
            "WHERE l.user_id = b.user_id) OR b.reserved <> (SELECT COALESCE(sum(amount), 0) FROM reservations r "
            "WHERE r.user_id = b.user_id) OR b.in_flight <> 0").fetchone()[0]  # type: ignore[index]
        pairs = conn.execute("SELECT count(*) FROM usage_records").fetchone()[0]  # type: ignore[index]
    return f"{pairs} pairs, {'books balance' if bad == 0 else f'{bad} USERS OFF'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="A's migrations: a git ref or a directory")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--async-commit", action="store_true",
                        help="synchronous_commit = off on both databases: the row's hold without the WAL flush "
                             "(and without its noise on a shared disk)")
    args = parser.parse_args()
    tag = f"mlp_bench_lock_{os.getpid()}"
    urls = {}
    script = Path(tempfile.mkdtemp(prefix="mlp-pgbench-")) / "pair.sql"
    script.write_text(SCRIPT, encoding="utf-8")
    import datetime as dt
    today = dt.datetime.now(dt.UTC).date()
    period = dt.date(today.year, today.month, 1).isoformat()
    try:
        urls["A"] = create(f"{tag}_a", base_migrations(args.base), args.async_commit)
        urls["B"] = create(f"{tag}_b", ROOT / MIGRATIONS, args.async_commit)
        counts = [int(c) for c in args.clients.split(",")]
        results: dict[int, dict[str, list[tuple[float, float]]]] = {c: {"A": [], "B": []} for c in counts}
        for i in range(args.rounds):
            for c in counts:
                for side in ("AB" if i % 2 == 0 else "BA"):
                    url, uid = urls[side]
                    results[c][side].append(run(url, uid, period, script, c, args.seconds))
            line = ", ".join(f"c={c} A {results[c]['A'][-1][0]:.0f} B {results[c]['B'][-1][0]:.0f}" for c in counts)
            print(f"round {i + 1}/{args.rounds} pairs/s {line}; load {os.getloadavg()[0]:.2f}", flush=True)
        for c in counts:
            a, b = results[c]["A"], results[c]["B"]
            dtps = [y[0] - x[0] for x, y in zip(a, b, strict=True)]
            dlat = [y[1] - x[1] for x, y in zip(a, b, strict=True)]
            tps_a, tps_b = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
            lat_a, lat_b = statistics.median(x[1] for x in a), statistics.median(x[1] for x in b)
            print(f"c={c}: pairs/s A {tps_a:.0f} -> B {tps_b:.0f} (B - A median {statistics.median(dtps):+.0f}, "
                  f"B better in {sum(d > 0 for d in dtps)}/{len(dtps)}); mean pair ms A {lat_a:.3f} -> B {lat_b:.3f} "
                  f"(B - A median {statistics.median(dlat):+.3f})")
        for side, (url, _) in urls.items():
            print(f"{side}: {books(url)}")
    finally:
        with psycopg.connect(SERVER + "/postgres", autocommit=True) as conn:
            for side in ("a", "b"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(f"{tag}_{side}")))


if __name__ == "__main__":
    main()
