"""Interleaved A/B of ``db.call`` alone: a hot ``Statement`` in a loop, main's ``gateway/db.py`` (A,
loaded from ``git show <ref>:...`` as a sibling module with its own pool) against this tree's (B),
one process, uvloop (as run.sh's uvicorn) or asyncio.

    .venv/bin/python -m bench.db_call --rounds 10 --n 2000 [--loop asyncio] [--pooled]

Per side: the median over rounds of the client's CPU per statement (process time) and of the wall
time per statement; the median per-round difference B - A and how many rounds B was lower.
``DATABASE_URL`` is a migrated database (default: the local one ``make`` uses).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DB = "layers/common/gateway/db.py"


def load_db(ref: str) -> Any:
    source = subprocess.run(["git", "show", f"{ref}:{DB}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="mlp-db-")) / "db_base.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("gateway.db_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def batch(db: Any, statement: Any, n: int) -> tuple[float, float]:
    params = [b"1", b"abc"]
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await db.call(statement, params)
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - t0) / n * 1e6


async def main(args: argparse.Namespace) -> None:
    from gateway import db as cand

    base = load_db(args.base)
    sql = "SELECT $1::int + 1, $2::text"
    sides = {"A": base, "B": cand}
    stmts = {k: m.Statement(f"bench_{k}", sql) for k, m in sides.items()}
    for k, m in sides.items():
        await batch(m, stmts[k], 200)  # warm: pool, prepared statement
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    wall: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for k in order:
            c, w = await batch(sides[k], stmts[k], args.n)
            cpu[k].append(c)
            wall[k].append(w)
    for name, data in (("cpu us/stmt", cpu), ("wall us/stmt", wall)):
        diffs = [b - a for a, b in zip(data["A"], data["B"], strict=True)]
        wins = sum(d < 0 for d in diffs)
        print(f"{name}: A {statistics.median(data['A']):.1f}  B {statistics.median(data['B']):.1f}  "
              f"B-A {statistics.median(diffs):+.1f}  B lower {wins}/{len(diffs)}")
    await base.close_pool()
    await cand.close_pool()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="main")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--pooled", action="store_true", help="DATABASE_POOLED=true (unnamed statements)")
    args = parser.parse_args()
    if args.pooled:
        os.environ["DATABASE_POOLED"] = "true"
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
