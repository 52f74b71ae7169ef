"""Interleaved A/B benchmark: two versions of the query function side by side, measured in
alternating batches so that the shared machine's load hits both alike.

    .venv/bin/python -m bench.ab --base main                      # main against the working tree
    .venv/bin/python -m bench.ab --base HEAD~1 --rounds 12 --cases c1,c16
    .venv/bin/python -m bench.ab --base main --cand-env RATELIMIT_LEASE=1   # same code, one setting changed

A is ``--base`` (a git ref, checked out once into a detached worktree under ``.local/ab/``;
``.`` = this working tree), B is this working tree (``--cand`` another ref). Both run as
``bench/peers.py`` runs ours (``functions/query/run.sh``: uvicorn serving ``stream_app``, one process, full billing)
against ONE set of services (bench/stack.py: fake upstream, Upstash bridge with its command
counter, one database and user). Each round measures every case on A and on B, the order
swapped every round (A B, B A, ...); the report gives per case the median over rounds of each
side's p50 (and p99, requests/s, CPU ms per request from /proc, Upstash commands per request),
the median of the per-round differences B - A, and how many rounds B was faster. The load
average is printed at the start and at the end.

Cases: ``c1`` (non-streaming, sequential), ``c16`` (non-streaming, 16 connections), ``stream``
(c=1, TTFB and whole stream), ``slow1`` / ``slow16`` (the upstream waits 100 ms before answering),
``cold`` (one cold start of the query function per side and round: bench/coldstart.py in a fresh
interpreter from the side's tree, its bytecode compiled as in the layer, Lambda environment, tracer
off: import, first invocation, their sum, CPU to the end of the first invocation, peak RSS after 50 invocations).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import cpu_seconds, descendants, load_average, measure, rss_mib, warm_up
from bench.stack import ROOT, Proc, Services, add_user, import_bundle_env, spawn, start_services, wait_until
from bench.workload import chat_body
from infra.local.servers import free_port

AB_DIR = ROOT / ".local" / "ab"


@dataclass
class Side:
    name: str
    tree: Path
    ref: str
    env: dict[str, str]
    api_key: str = ""  # the side's own user's key (``add_user``): the sides share no user
    port: int = 0
    proc: Proc | None = None
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


def checkout(ref: str) -> tuple[Path, str]:
    """A detached worktree of ``ref`` (reused when it is already at that commit); ``.`` = this tree."""
    if ref == ".":
        return ROOT, "working tree"
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = AB_DIR / sha
    if not (tree / "functions" / "query" / "app.py").exists():
        AB_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return tree, f"{ref} ({sha})"


def python_path(side: Side) -> str:
    """The side's own gateway package and bench helpers first (the venv's editable install points
    here), then what the side's ``--base-env`` / ``--cand-env`` put on ``PYTHONPATH`` (a
    ``sitecustomize`` for an experiment, say), which would otherwise be replaced."""
    return ":".join([str(side.tree / "layers" / "common"), str(side.tree),
                     *([side.env["PYTHONPATH"]] if side.env.get("PYTHONPATH") else [])])


def start(side: Side, svc: Services, extra_env: dict[str, str]) -> None:
    side.port = free_port()
    # the bundle as template.yaml's query functions have it, unless the side's environment says otherwise
    env = svc.gateway_env(**{**import_bundle_env(side.tree), **extra_env})
    env["PYTHONPATH"] = python_path(side)
    # the side's run.sh itself, as the Web Adapter starts it (``stream_app``, uvloop + httptools):
    # `python` on PATH is this interpreter
    env["PORT"] = str(side.port)
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    side.proc = spawn(f"ab-{side.name}", ["bash", str(side.tree / "functions" / "query" / "run.sh")], env,
                      cwd=side.tree)
    headers = {"authorization": f"Bearer {side.api_key}"}
    wait_until(side.proc, side.url, body=chat_body(), headers=headers, timeout=90)


CASES: dict[str, tuple[Callable[[], dict[str, Any]], int, int, bool]] = {
    # name: (body, requests multiplier of --batch, concurrency, stream)
    "c1": (chat_body, 1, 1, False),
    "c16": (chat_body, 4, 16, False),
    "stream": (lambda: chat_body(stream=True), 1, 1, True),
    "slow1": (lambda: chat_body(upstream_delay_s=0.1), 0, 1, False),
    "slow16": (lambda: chat_body(upstream_delay_s=0.1), 0, 16, False),
}


def cold(side: Side, svc: Services) -> None:
    import json

    from bench.lambda_bench import lambda_env

    env = lambda_env(svc, tracing=False)
    env.update(import_bundle_env(side.tree))  # as template.yaml's QueryFunction
    env.update(side.env, BENCH_API_KEY=side.api_key, PYTHONPATH=python_path(side))
    # The deployed layer ships bytecode (layers/common/Makefile): so do the side's sources here
    # (PYTHONDONTWRITEBYTECODE would otherwise have every cold start compile ~40 modules).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(side.tree / "layers" / "common" / "gateway"),
                    str(side.tree / "functions" / "query")], check=True, capture_output=True)
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.coldstart", "--invocations", "50"], cwd=side.tree, env=env,
                          capture_output=True, text=True, timeout=180, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    interpreter_ms = (row["started_wall"] - t0) * 1000
    side.samples.setdefault("cold", []).append({
        "import_ms": row["import_ms"], "first_ms": row["first_ms"],
        "init_ms": interpreter_ms + row["import_ms"] + row["first_ms"], "init_cpu_ms": row["init_cpu_ms"],
        "peak_rss_mib": row["peak_rss_mib"], "errors": 0})


async def one(side: Side, svc: Services, case: str, batch: int) -> None:
    if case == "cold":
        cold(side, svc)
        return
    make_body, mult, conc, stream = CASES[case]
    n = batch * mult if mult else (20 if conc == 1 else 160)
    assert side.proc is not None
    pids = descendants(side.proc.pid)
    up0, cpu0 = svc.upstash_commands(), cpu_seconds(pids)
    r = await measure(side.url, {"authorization": f"Bearer {side.api_key}"}, make_body(), n, conc,
                      stream=stream, warmup=2)
    r["cpu_ms"] = (cpu_seconds(pids) - cpu0) * 1000 / (n + 2)
    r["upstash"] = (svc.upstash_commands() - up0) / (n + 2)
    r["rss_mib"] = rss_mib(pids)
    side.samples.setdefault(case, []).append(r)


def summary(a: Side, b: Side, cases: list[str]) -> str:
    keys = [("p50", "p50 ms"), ("p99", "p99 ms"), ("ttfb_p50", "TTFB p50 ms"), ("rps", "req/s"),
            ("cpu_ms", "CPU ms/req"), ("upstash", "Upstash cmd/req"), ("import_ms", "import ms"),
            ("first_ms", "first invocation ms"), ("init_ms", "interpreter + import + first ms"),
            ("init_cpu_ms", "CPU ms to the end of the first invocation"), ("peak_rss_mib", "peak RSS MiB"),
            ("rss_mib", "RSS after the case MiB")]
    lines = ["| case | figure | A median | B median | median of B - A per round | B better in |",
             "|---|---|---|---|---|---|"]
    for case in cases:
        sa, sb = a.samples.get(case, []), b.samples.get(case, [])
        for key, label in keys:
            if not sa or key not in sa[0]:
                continue
            va, vb = [s[key] for s in sa], [s[key] for s in sb]
            diffs = [y - x for x, y in zip(va, vb, strict=False)]
            better = sum(1 for d in diffs if (d > 0 if key == "rps" else d < 0))
            lines.append(f"| {case} | {label} | {statistics.median(va):.2f} | {statistics.median(vb):.2f} | "
                         f"{statistics.median(diffs):+.2f} | {better}/{len(diffs)} |")
    errors = sum(int(s["errors"]) for side in (a, b) for ss in side.samples.values() for s in ss)
    lines.append(f"\nnon-200 answers: {errors}")
    return "\n".join(lines)


def _env_pairs(values: list[str]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values)


async def main_async(args: argparse.Namespace) -> None:
    cases = args.cases.split(",")
    tree_a, ref_a = checkout(args.base)
    tree_b, ref_b = checkout(args.cand)
    a = Side("A", tree_a, ref_a, _env_pairs(args.base_env))
    b = Side("B", tree_b, ref_b, _env_pairs(args.cand_env))
    print(f"A = {ref_a} {a.env or ''}\nB = {ref_b} {b.env or ''}\nload at start: {load_average()}", flush=True)
    svc = start_services("mlp_ab")
    try:
        # one user per side: else one side's idle carried holds count against the other's in-flight
        # cap (32), and at c=16 the measured side met 429s
        a.api_key = svc.api_key
        b.api_key = add_user(svc.database_url, f"ab-b-{secrets.token_hex(4)}@bench.invalid")[1]
        for side in (a, b):
            if cases == ["cold"]:
                break  # no server needed
            start(side, svc, side.env)
            await warm_up(side.url, {"authorization": f"Bearer {side.api_key}"}, chat_body(), 100)
        started = time.time()
        for rnd in range(args.rounds):
            order = (a, b) if rnd % 2 == 0 else (b, a)
            for case in cases:
                for side in order:
                    await one(side, svc, case, args.batch)
            if args.verbose:
                print(f"round {rnd + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"\n{args.rounds} rounds in {time.time() - started:.0f} s, batch {args.batch}; "
              f"load at end: {load_average()}\n")
        print(summary(a, b, cases))
    finally:
        for side in (a, b):
            if side.proc is not None:
                side.proc.stop()
        svc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git ref for A ('.' = this working tree)")
    parser.add_argument("--cand", default=".", help="git ref for B (default: this working tree)")
    parser.add_argument("--base-env", action="append", default=[], metavar="K=V", help="extra environment for A")
    parser.add_argument("--cand-env", action="append", default=[], metavar="K=V", help="extra environment for B")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100, help="requests per c=1 batch (c=16: 4x)")
    parser.add_argument("--cases", default="c1,c16,stream")
    parser.add_argument("-v", "--verbose", action="store_true")
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
