"""Peer comparison (issue 15): our gateway next to other gateways, one after another, with the same
harness, against the same fake OpenAI upstream; ``--rounds`` passes (default 3) in a rotating order,
each printed figure the median over the rounds (the machine is shared: single passes vary a lot).

    make bench-peers                       # = .venv/bin/python -m bench.peers
    .venv/bin/python -m bench.peers --peers ours,bare --rounds 1 --requests 300    # a quick look
    .venv/bin/python -m bench.peers --profile    # + py-spy of our query function (bench/profile.py)

Gateways (``--peers``, in this order by default):
  ours         the query function alone: functions/query/run.sh itself (uvicorn serving
               ``stream_app``, one process, as QueryStreamFunction runs behind the Web Adapter),
               with full billing: API key, Upstash rate limit through the REST bridge, reserve
               and settle in Postgres
  ours-lambda  the same run.sh with the Lambda environment (``AWS_LAMBDA_FUNCTION_NAME``) as the Web
               Adapter runs it: a non-streaming answer is settled BEFORE it is sent (frozen after
               the response), metrics go to stdout as EMF lines; ``ours`` is run.sh as a plain
               server, which settles a non-streaming answer right after sending it
  ours-all     every function of template.yaml in one process (the local stack's router)
  litellm      LiteLLM proxy (pip ``litellm[proxy]``, no database; a generated master key, which
               recent versions require)
  portkey      Portkey gateway (npm ``@portkey-ai/gateway``, Node, NODE_ENV=production, no billing;
               ``@hono/node-server`` held at the last version it streams on, ``PORTKEY_NODE_SERVER``)
  naive        a straightforward FastAPI gateway with the same billing steps (bench/refgateways.py)
  bare         an aiohttp passthrough, no auth, no billing (bench/refgateways.py)

Our sources (gateway, functions, bench, infra) are compiled first, as the layer ships them: the
environment sets PYTHONDONTWRITEBYTECODE, and without bytecode every spawn of a Python peer would
compile the modules of ours it imports (~0.1-0.4 s).

The peers are installed on first use into throw-away folders under ``.local/peers/`` (git-ignored;
``--peers-dir`` to move them): LiteLLM into its own virtualenv with pip, Portkey with npm. A peer
that cannot be installed or started is skipped with the reason; nothing of theirs is committed.

Every gateway gets the same services (bench/stack.py): one fake provider server (0 ms; the
100 ms variant asks it to wait before answering), one Upstash bridge, one Postgres database.
Figures per gateway, each measured right after the same figures straight to the upstream:
  overhead p50 / p99, c=1       gateway minus direct, non-streaming
  requests/s, c=16              non-streaming
  CPU ms per request, c=1       the gateway's process tree, from /proc, over the c=1 run
  streaming first-byte / total  overhead of the first body byte / the whole stream, c=1
  RSS after load (MiB)          the gateway's process tree after all runs
  spawn to first answer (s)     from exec to the first 200 on /v1/chat/completions (polled every
                                10 ms); the median over the rounds' spawns and ``--spawns`` more
  100 ms upstream, c=1 / c=16   p50 minus the bare passthrough's p50 in the same round
  Upstash commands per request  counted by the bridge over the c=1 run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import profile
from bench.harness import cpu_seconds, descendants, load_average, measure, rss_mib, warm_up
from bench.stack import ROOT, Proc, Services, import_bundle_env, spawn, start_services, wait_until
from bench.workload import chat_body
from infra.local.servers import free_port

PEERS_DIR = ROOT / ".local" / "peers"
ALL_PEERS = ("ours", "ours-lambda", "ours-all", "litellm", "portkey", "naive", "bare")
FAKE_KEY = "sk-fake-openai"


class PeerUnavailable(Exception):
    """The peer could not be installed or started; the run goes on without it."""


@dataclass
class Peer:
    key: str
    title: str
    argv: list[str]
    env: dict[str, str]
    port: int
    headers: dict[str, str]
    version: str
    cwd: Path = ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@dataclass
class Result:
    peer: Peer
    spawn_s: float
    c1: dict[str, float]
    direct_c1: dict[str, float]
    c16: dict[str, float]
    stream: dict[str, float]
    direct_stream: dict[str, float]
    slow_c1: dict[str, float]
    slow_c16: dict[str, float]
    cpu_ms: float
    rss: float
    upstash_per_req: float


# --------------------------------------------------------------------------- installing peers
def _run(argv: list[str], cwd: Path | None = None, timeout: float = 900) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"`{' '.join(argv[:3])} …` failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PeerUnavailable(f"`{' '.join(argv[:4])} …` exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def install_litellm(peers_dir: Path, spec: str) -> tuple[Path, str]:
    """LiteLLM's proxy in its own virtualenv (pip); returns (its litellm CLI, version)."""
    venv = peers_dir / "litellm-venv"
    cli = venv / "bin" / "litellm"
    if not cli.exists():
        print(f"installing {spec} into {venv} (pip, takes a few minutes) …", flush=True)
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", spec])
    version = _run([str(venv / "bin" / "python"), "-c",
                    "import importlib.metadata as m; print(m.version('litellm'))"]).strip()
    return cli, version


# Portkey's server on a newer @hono/node-server answers every stream with a 500 ("Something went
# wrong"; its log: `TypeError: immutable` in ResponseService.updateHeaders, which appends headers to
# a Response built from the upstream's fetch Response). Portkey-AI/gateway#1389 names versions after
# 1.14.2; on Node 20, 1.14.2 fails too and 1.14.1 streams. Its own range (^1.3.3) admits 1.14.1.
PORTKEY_NODE_SERVER = "1.14.1"


def install_portkey(peers_dir: Path, spec: str) -> tuple[Path, str]:
    """Portkey's gateway in its own npm folder, with ``@hono/node-server`` held at
    ``PORTKEY_NODE_SERVER`` (an npm override; a folder holding another version is installed again);
    returns (its Node server script, version)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerUnavailable("node/npm not found on PATH")
    folder = peers_dir / "portkey"
    package = folder / "node_modules" / "@portkey-ai" / "gateway"
    server = folder / "node_modules" / "@hono" / "node-server" / "package.json"
    held = server.exists() and json.loads(server.read_text())["version"] == PORTKEY_NODE_SERVER
    if not (package / "build" / "start-server.js").exists() or not held:
        print(f"installing {spec} into {folder} (npm) …", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / "package.json"
        pkg = json.loads(manifest.read_text()) if manifest.exists() else {"name": "portkey-bench", "private": True}
        pkg["overrides"] = {"@hono/node-server": PORTKEY_NODE_SERVER}
        manifest.write_text(json.dumps(pkg, indent=2) + "\n")
        _run(["npm", "install", "--no-audit", "--no-fund", spec], cwd=folder)
    version = json.loads((package / "package.json").read_text())["version"]
    return package / "build" / "start-server.js", version


# --------------------------------------------------------------------------- the gateways
def _our_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip() or "working tree"
    except OSError:
        return "working tree"


def build_peer(key: str, svc: Services, args: argparse.Namespace) -> Peer:
    port = free_port()
    ours_headers = {"authorization": f"Bearer {svc.api_key}"}
    py = sys.executable
    if key == "ours":
        # run.sh itself, as the Web Adapter starts it: `python` on PATH is this interpreter
        env = svc.gateway_env(PORT=str(port), PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                              **import_bundle_env())
        return Peer(key, "ours: query function (full billing)", ["bash", str(ROOT / "functions" / "query" / "run.sh")],
                    env, port, ours_headers, _our_version())
    if key == "ours-lambda":
        env = svc.gateway_env(PORT=str(port), PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                              AWS_LAMBDA_FUNCTION_NAME="QueryStreamFunction", POWERTOOLS_TRACE_DISABLED="true",
                              **import_bundle_env())
        return Peer(key, "ours as in Lambda (settle before the answer)",
                    ["bash", str(ROOT / "functions" / "query" / "run.sh")], env, port, ours_headers, _our_version())
    if key == "ours-all":
        return Peer(key, "ours: all functions in one process",
                    [py, "-m", "uvicorn", "--factory", "infra.local.devserver:build_router", "--host", "127.0.0.1",
                     "--port", str(port), "--no-access-log", "--log-level", "warning"],
                    svc.gateway_env(ADMIN_API_KEY="bench-admin-key"), port, ours_headers, _our_version())
    if key == "naive":
        return Peer(key, "naive FastAPI gateway, same billing",
                    [py, "-m", "bench.refgateways", "naive", "--port", str(port), "--upstream", svc.openai_base],
                    svc.gateway_env(BENCH_API_KEY=svc.api_key, BENCH_USER_ID=svc.user_id), port, ours_headers,
                    "bench/refgateways.py")
    if key == "bare":
        return Peer(key, "bare aiohttp passthrough",
                    [py, "-m", "bench.refgateways", "bare", "--port", str(port), "--upstream", svc.openai_base],
                    svc.gateway_env(), port, {"authorization": f"Bearer {FAKE_KEY}"}, "bench/refgateways.py")
    if key == "litellm":
        cli, version = install_litellm(args.peers_dir, args.litellm)
        config = args.peers_dir / "litellm-bench.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "model_list": [{"model_name": "openai/gpt-4o-mini",
                            "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": svc.openai_base,
                                               "api_key": FAKE_KEY}}],
            "litellm_settings": {"telemetry": False, "drop_params": True},
        }))
        master_key = "sk-bench-" + secrets.token_hex(16)  # recent versions refuse to start without one
        env = svc.gateway_env(LITELLM_LOG="ERROR", LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
                              LITELLM_MASTER_KEY=master_key)
        # (its own venv: whatever its dependencies need of setuptools' distutils stays as it was)
        for k in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "SETUPTOOLS_USE_DISTUTILS"):
            env.pop(k, None)
        return Peer(key, f"LiteLLM proxy {version} (no DB)",
                    [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                     "--num_workers", "1"], env, port, {"authorization": f"Bearer {master_key}"}, version)
    if key == "portkey":
        script, version = install_portkey(args.peers_dir, args.portkey)
        env = svc.gateway_env(NODE_ENV="production")
        return Peer(key, f"Portkey gateway {version} (Node, no billing)",
                    ["node", str(script), f"--port={port}", "--headless"], env, port,
                    {"authorization": f"Bearer {FAKE_KEY}", "x-portkey-provider": "openai",
                     "x-portkey-custom-host": svc.openai_base}, version, cwd=script.parent)
    raise PeerUnavailable(f"unknown peer {key!r}")


# --------------------------------------------------------------------------- measuring
def compile_sources() -> None:
    """Bytecode for the sources the Python peers run from this tree (ours, the reference gateways),
    as the deployed layer ships it (layers/common/Makefile); see the module docstring."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(ROOT / d) for d in (
        "layers/common/gateway", "functions", "bench", "infra"))], check=True, capture_output=True)


def spawn_once(peer: Peer, svc: Services) -> float:
    """Seconds from exec to the first 200 on the chat route (the measured runs' figure, alone)."""
    proc = spawn(peer.key, peer.argv, env=peer.env, cwd=peer.cwd)
    try:
        return wait_until(proc, peer.url, body=chat_body(), headers=peer.headers, timeout=120)
    finally:
        proc.stop()
        svc.release_left_holds()


async def run_peer(peer: Peer, svc: Services, n: int, n16: int, n_slow: int, n_slow16: int,
                   profile_to: Path | None = None) -> Result:
    proc: Proc = spawn(peer.key, peer.argv, env=peer.env, cwd=peer.cwd)
    try:
        spawn_s = wait_until(proc, peer.url, body=chat_body(), headers=peer.headers, timeout=120)
        direct = f"{svc.openai_base}/chat/completions"
        direct_headers = {"authorization": f"Bearer {FAKE_KEY}"}
        plain, streamed = chat_body(), chat_body(stream=True)

        direct_c1 = await measure(direct, direct_headers, plain, n, 1)
        pids = descendants(proc.pid)
        await warm_up(peer.url, peer.headers, plain, 100)  # JIT (V8), caches, pools
        cpu0, upstash0 = cpu_seconds(pids), svc.upstash_commands()
        c1 = await measure(peer.url, peer.headers, plain, n, 1, warmup=0)
        cpu_ms = (cpu_seconds(descendants(proc.pid)) - cpu0) * 1000 / n
        upstash_per_req = (svc.upstash_commands() - upstash0) / n
        c16 = await measure(peer.url, peer.headers, plain, n16, 16)
        direct_stream = await measure(direct, direct_headers, streamed, n, 1, stream=True)
        stream = await measure(peer.url, peer.headers, streamed, n, 1, stream=True)
        slow = chat_body(upstream_delay_s=0.1)
        slow_c1 = await measure(peer.url, peer.headers, slow, n_slow, 1, warmup=2)
        slow_c16 = await measure(peer.url, peer.headers, slow, n_slow16, 16, warmup=2)
        rss = rss_mib(descendants(proc.pid))
        spy = start_profiler(proc.pid, profile_to) if profile_to else None
        if spy is not None:  # an extra c=16 run: sampling slows the process, so none of the above is profiled
            await measure(peer.url, peer.headers, plain, n16, 16, warmup=0)
            spy.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            spy.wait(timeout=60)
        return Result(peer, spawn_s, c1, direct_c1, c16, stream, direct_stream, slow_c1, slow_c16, cpu_ms, rss,
                      upstash_per_req)
    finally:
        proc.stop()
        svc.release_left_holds()


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    exe = profile.py_spy()
    if exe is None:
        print("!! --profile: py-spy not found (pip install py-spy into .local/peers/tools-venv)", flush=True)
        return None
    spy = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(output),
                            "--rate", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the load starts
    return spy


# --------------------------------------------------------------------------- report
FIGURES = ("overhead p50, c=1 (ms)", "overhead p99, c=1 (ms)", "requests/s, c=16", "CPU ms per request, c=1",
           "streaming first-byte overhead (ms)", "streaming total overhead (ms)", "RSS after load (MiB)",
           "spawn to first answer (s)", "100 ms upstream: p50 c=1 minus bare (ms)",
           "100 ms upstream: p50 c=16 minus bare (ms)", "Upstash commands per request (c=1)")


# Issue 15's targets for ours, each a figure of FIGURES, a comparison and a bound; the report says
# which are met (cold start and cost per million: bench/lambda_bench.py). Lower is better for every
# figure but throughput.
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("overhead p50, c=1 (ms)", "<=", 1.0), ("overhead p99, c=1 (ms)", "<=", 2.0),
    ("requests/s, c=16", ">=", 1000.0), ("CPU ms per request, c=1", "<=", 1.0),
    ("streaming first-byte overhead (ms)", "<=", 1.0), ("streaming total overhead (ms)", "<=", 1.5),
    ("RSS after load (MiB)", "<=", 80.0), ("100 ms upstream: p50 c=1 minus bare (ms)", "<=", 1.0),
    ("100 ms upstream: p50 c=16 minus bare (ms)", "<=", 1.0), ("Upstash commands per request (c=1)", "<", 0.2))
HIGHER_IS_BETTER = frozenset({"requests/s, c=16"})
# Not peers to lead: the bare passthrough is the reference the 100 ms figures subtract, the others
# are ours in other configurations. Upstash commands are not compared (the peers rate-limit nothing).
REFERENCES = frozenset({"bare", "ours-lambda", "ours-all"})
NOT_COMPARED = frozenset({"Upstash commands per request (c=1)"})


def _met(value: float | str, op: str, bound: float) -> bool:
    return isinstance(value, float | int) and (value <= bound if op == "<=" else
                                               value >= bound if op == ">=" else value < bound)


def _pairs(ours: list[float], other: list[float]) -> tuple[int, int, float]:
    """Spawns of one run (or round) ran back to back, so run i of two gateways pairs up: the runs
    ours answered first in, the pairs, the median of ours minus the other (s)."""
    pairs = list(zip(ours, other, strict=False))  # a peer skipped midway has fewer runs
    return sum(a < b for a, b in pairs), len(pairs), statistics.median(a - b for a, b in pairs)


def _paired(ours: list[float], other: list[float], name: str) -> str:
    first, n, difference = _pairs(ours, other)
    return f"ours first against {name}: {first} of {n} runs, median paired difference {difference * 1000:+.0f} ms"


def verdict(table: dict[str, dict[str, float | str]], spawns: dict[str, list[float]]) -> list[str]:
    """Which of issue 15's targets ours meets, and on which figures it leads each peer (a peer whose
    figure failed is led, and the line names those figures: such a lead measured nothing; spawn to
    first answer, where both have runs: the median of the paired differences, as the spawns of a
    run follow each other and the machine's speed drifts between runs more than the medians
    differ)."""
    if "ours" not in table:
        return []
    ours = table["ours"]
    met = [(name, op, bound, _met(ours[name], op, bound)) for name, op, bound in TARGETS]
    lines = [f"Targets (issue 15) met by ours: {sum(m for *_, m in met)} of {len(met)}",
             *(f"- {name} {op} {bound:g}: {_fmt(name, ours[name])}, {'met' if m else 'MISSED'}"
               for name, op, bound, m in met)]
    compared = [name for name in FIGURES if name not in NOT_COMPARED]
    for peer in (k for k in table if k != "ours" and k not in REFERENCES):
        theirs, behind, unmeasured = table[peer], [], []
        paired = bool(spawns.get("ours") and spawns.get(peer))
        for name in compared:
            mine, other = ours[name], theirs[name]
            if name == "spawn to first answer (s)" and paired:  # runs back to back: the paired difference
                leads = _pairs(spawns["ours"], spawns[peer])[2] < 0
            else:
                leads = isinstance(mine, float | int) and (isinstance(other, str) or (
                    mine > other if name in HIGHER_IS_BETTER else mine < other))
            if not leads:
                behind.append(f"{name}: ours {_fmt(name, mine)}, {peer} {_fmt(name, other)}")
            elif isinstance(other, str):
                unmeasured.append(name)
        lines.append(f"Ours leads {peer} on {len(compared) - len(behind)} of {len(compared)} figures"
                     + ("" if not unmeasured else f", {len(unmeasured)} of them because {peer} failed ("
                        + ", ".join(unmeasured) + ")")
                     + ("" if not behind else "; behind on " + "; ".join(behind)))
        if paired:
            lines.append(_paired(spawns["ours"], spawns[peer], peer))
    return lines


def figures(r: Result, bare: Result | None) -> dict[str, float | str]:
    """One round's figures for one gateway; a figure whose requests got non-200 answers is the
    string "failed (N non-200)" (timings of error answers mean nothing)."""

    def failed(*runs: dict[str, float]) -> str | None:
        bad = sum(int(run["errors"]) for run in runs)
        return f"failed ({bad} non-200)" if bad else None

    def vs_bare(slow: str) -> float | str:
        if bare is None:
            return "n/a (no bare run)"
        mine, ref = getattr(r, slow), getattr(bare, slow)
        return failed(mine, ref) or mine["p50"] - ref["p50"]

    return dict(zip(FIGURES, (
        failed(r.c1) or r.c1["p50"] - r.direct_c1["p50"],
        failed(r.c1) or r.c1["p99"] - r.direct_c1["p99"],
        failed(r.c16) or r.c16["rps"],
        failed(r.c1) or r.cpu_ms,
        failed(r.stream) or r.stream["ttfb_p50"] - r.direct_stream["ttfb_p50"],
        failed(r.stream) or r.stream["p50"] - r.direct_stream["p50"],
        r.rss, r.spawn_s, vs_bare("slow_c1"), vs_bare("slow_c16"), r.upstash_per_req), strict=True))


def median_figures(rounds: list[dict[str, float | str]]) -> dict[str, float | str]:
    """Per figure, the median over the rounds (or why it has none)."""
    out: dict[str, float | str] = {}
    for name in FIGURES:
        values = [r[name] for r in rounds]
        numbers = [v for v in values if isinstance(v, float | int)]
        out[name] = statistics.median(numbers) if len(numbers) == len(values) else next(
            v for v in values if isinstance(v, str))
    return out


def _fmt(name: str, value: float | str) -> str:
    if isinstance(value, str):
        return value
    if name.startswith("requests/s"):
        return f"{value:,.0f}"
    if name.startswith("100 ms"):
        return f"{value:+.2f}"
    return f"{value:.1f}" if name.startswith("RSS") else f"{value:.2f}"


def report(results: dict[str, list[Result]], skipped: dict[str, str], meta: dict[str, str],
           spawns: dict[str, list[float]] | None = None) -> str:
    """The issue-15 table: one column per gateway, each cell the median over the rounds (spawn to
    first answer: over the rounds' spawns and the ``spawns`` measured alone)."""
    keys = [k for k, rs in results.items() if rs]
    per_round: dict[str, list[dict[str, float | str]]] = {k: [] for k in keys}
    for i in range(max((len(results[k]) for k in keys), default=0)):
        bare = results["bare"][i] if len(results.get("bare", [])) > i else None
        for k in keys:
            if len(results[k]) > i:
                per_round[k].append(figures(results[k][i], bare))
    table = {k: median_figures(per_round[k]) for k in keys}
    all_spawns = {k: [*(spawns or {}).get(k, []), *(r.spawn_s for r in results[k])] for k in keys}
    for k in keys:
        table[k]["spawn to first answer (s)"] = statistics.median(all_spawns[k])
    lines = [f"Measured {meta['when']} on {meta['host']}; load average before {meta['load_before']}, "
             f"after {meta['load_after']}. {meta['sizes']}", "",
             "| figure | " + " | ".join(results[k][0].peer.title for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(_fmt(name, table[k][name]) for k in keys) + " |" for name in FIGURES]
    lines += ["", "Overhead p50 at c=1 in each round (ms): " + "; ".join(
        f"{k} " + ", ".join(_fmt("", r["overhead p50, c=1 (ms)"]) for r in per_round[k]) for k in keys)]
    lines += ["Requests/s at c=16 in each round: " + "; ".join(
        f"{k} " + ", ".join(_fmt("requests/s", r["requests/s, c=16"]) for r in per_round[k]) for k in keys)]
    lines += ["Spawn to first answer, each run (s): " + "; ".join(
        f"{k} " + ", ".join(f"{v:.3f}" for v in all_spawns[k]) for k in keys)]
    lines += ["Load average (1 min) at the start of each round: " + meta["round_loads"]]
    if judged := verdict(table, all_spawns):
        lines += ["", *judged]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    return "\n".join(lines)


def spawn_report(spawns: dict[str, list[float]], skipped: dict[str, str], meta: dict[str, str]) -> str:
    """The spawns measured alone (``--rounds 0``): per gateway the median and each run, and for
    ours against each other gateway the runs it answered first in (the spawns of one run are
    interleaved, so run i of two gateways ran on the same minute)."""
    keys = [k for k, v in spawns.items() if v]
    lines = [f"Measured {meta['when']} on {meta['host']}; load average before {meta['load_before']}, "
             f"after {meta['load_after']}. Spawn to first answer only (--rounds 0).", "",
             "| gateway | spawns | median (s) |", "|---|---|---|"]
    lines += [f"| {k} | {len(spawns[k])} | {statistics.median(spawns[k]):.3f} |" for k in keys]
    others = [k for k in keys if k != "ours"] if "ours" in keys else []
    if others:
        lines.append("")
    lines += [_paired(spawns["ours"], spawns[k], k) for k in others]
    lines += ["", "Each run (s): " + "; ".join(f"{k} " + ", ".join(f"{v:.3f}" for v in spawns[k]) for k in keys)]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, svc: Services, load_before: str) -> None:
    keys = [k.strip() for k in args.peers.split(",") if k.strip()]
    results: dict[str, list[Result]] = {k: [] for k in keys}
    skipped: dict[str, str] = {}
    round_loads: list[str] = []
    raw = args.peers_dir / "ours-c16.pyspy.txt"
    raw.unlink(missing_ok=True)
    spawns: dict[str, list[float]] = {k: [] for k in keys}
    try:
        compile_sources()
        for i in range(args.spawns):  # spawn to first answer alone, the gateways interleaved
            for key in keys[i % len(keys):] + keys[:i % len(keys)]:
                if key in skipped:
                    continue
                try:
                    spawns[key].append(spawn_once(build_peer(key, svc, args), svc))
                except (PeerUnavailable, RuntimeError) as exc:
                    skipped[key] = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
                    print(f"!! skipping {key}: {skipped[key]}", flush=True)
            print(f"… spawn run {i + 1}/{args.spawns}: " + ", ".join(
                f"{k} {v[-1]:.3f} s" for k, v in spawns.items() if v), flush=True)
        for round_no in range(args.rounds):
            round_loads.append(f"{os.getloadavg()[0]:.2f}")
            # rotate the order each round, so no gateway always runs first or last
            order = keys[round_no % len(keys):] + keys[:round_no % len(keys)]
            for key in order:
                if key in skipped:
                    continue
                try:
                    peer = build_peer(key, svc, args)
                    print(f"… round {round_no + 1}/{args.rounds}: {peer.title}", flush=True)
                    profile_to = raw if args.profile and key == "ours" and not raw.exists() else None
                    results[key].append(await run_peer(peer, svc, args.requests, args.requests16,
                                                       args.slow_requests, args.slow_requests16, profile_to))
                except (PeerUnavailable, RuntimeError) as exc:
                    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
                    skipped[key] = " … ".join(dict.fromkeys([lines[0], lines[-1]]))[:400]
                    print(f"!! skipping {key}: {skipped[key]}", flush=True)
        meta = {"when": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                "host": f"{platform.node()} ({os.cpu_count()} CPUs)", "load_before": load_before,
                "load_after": load_average(), "round_loads": ", ".join(round_loads),
                "sizes": f"{args.rounds} rounds, gateways in rotating order; per gateway and round: {args.requests} "
                         f"requests at c=1 (non-stream and stream), {args.requests16} at c=16; 100 ms upstream: "
                         f"{args.slow_requests} at c=1, {args.slow_requests16} at c=16. Each cell is the median "
                         "over the rounds."}
        print()
        print(report(results, skipped, meta, spawns) if any(results.values()) else spawn_report(spawns, skipped, meta))
        if args.profile and raw.exists():
            print("\n" + profile.summary(raw) + f"\n(raw stacks: {raw})")
    finally:
        svc.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help=f"comma list out of {', '.join(ALL_PEERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all gateways; cells are medians")
    parser.add_argument("--requests", type=int, default=1000, help="requests per c=1 run")
    parser.add_argument("--requests16", type=int, default=2000, help="requests per c=16 run")
    parser.add_argument("--slow-requests", type=int, default=50, help="c=1 requests with the 100 ms upstream")
    parser.add_argument("--slow-requests16", type=int, default=480, help="c=16 requests with the 100 ms upstream")
    parser.add_argument("--spawns", type=int, default=0,
                        help="spawns to first answer per gateway measured alone (interleaved) before the rounds")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    parser.add_argument("--litellm", default="litellm[proxy]", help="pip requirement for LiteLLM")
    parser.add_argument("--portkey", default="@portkey-ai/gateway", help="npm package spec for Portkey")
    parser.add_argument("--profile", action="store_true",
                        help="after its measurements, py-spy our query function during one more c=16 run")
    args = parser.parse_args(argv)
    args.peers_dir.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    svc = start_services()
    asyncio.run(main_async(args, svc, load_before))


if __name__ == "__main__":
    main()
