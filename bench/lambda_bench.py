"""Lambda-realistic benchmark (issue 15): billed milliseconds per invocation and the
infrastructure cost per million requests.

    make bench-lambda                      # = .venv/bin/python -m bench.lambda_bench
    .venv/bin/python -m bench.lambda_bench --invocations 200 --cold-runs 3     # a quick look

What it does, against the bench services (bench/stack.py: fake OpenAI upstream at 0 ms, the
Upstash REST bridge with a command counter, a throw-away Postgres database), each in its own
process so that this process's CPU time is the function's:

1. Buffered functions, as Lambda runs them: every function's ``handler`` (functions/*/app.py:
   Powertools around Mangum) is imported in this process and called synchronously with API
   Gateway HTTP API v2 events and a fake Lambda context, one invocation at a time, on one event
   loop kept across invocations (a warm container). Settlement runs inside the invocation, as it
   does under Mangum. Logs and EMF metrics go to stdout, as in Lambda, and are counted (bytes).
   Per invocation: wall time and CPU time (this process); billed ms = wall rounded up to 1 ms.
2. The streaming function (functions/query/run.sh: uvicorn behind the Lambda Web Adapter) under
   uvicorn as run.sh starts it (uvloop + httptools, layer dependencies since issue 15 lever 9);
   a streamed request's duration is what the adapter bills.
3. Cold start of the query function in a fresh interpreter, its sources compiled first as the
   layer ships them (bytecode): import (which builds the app), the first invocation (lazy setup:
   DB pool, catalogue, Upstash and HTTP clients) and the next ones, with the Powertools X-Ray
   tracer off and on (the layer no longer ships the X-Ray SDK, so both measure the same code;
   template.yaml's ``Tracing`` parameter is Lambda's own tracing).
4. Cost per million requests (bench/costs.py) at the template's memory size and at 256/512/1024/
   1769 MB equivalents (CPU time stretched by the documented vCPU share, an approximation), with
   the template's defaults for Lambda's platform log lines (``SystemLogLevel``) and X-Ray
   (``Tracing``); ``--system-log-level`` / ``--tracing-mode`` price other settings.

Postgres time is the database's own ``active_time`` (pg_stat_database) over the query run;
Upstash commands are counted by the bridge. Tracing for the buffered invocations is off by
default (no X-Ray daemon here; ``--tracing`` sends segments to a dead UDP port, the SDK's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.coldstart import FakeContext, captured_stdout, http_api_event, new_trace_id
from bench.costs import (
    PRICES,
    PRICES_READ,
    Assumptions,
    Usage,
    billed_ms,
    cost_per_million,
    platform_log_bytes,
    scaled_duration_ms,
    traced_fraction,
)
from bench.costs import upstream_wait_cost_per_million as wait_cost
from bench.harness import cpu_seconds, descendants, load_average, measure, percentile
from bench.stack import ROOT, Services, import_bundle_env, spawn, start_services, wait_until
from bench.workload import chat_body
from infra.local.servers import free_port
from infra.local.template import load_template, serverless_functions

MEMORY_SIZES = (256, 512, 1024, 1769)
WEBHOOK_SECRET = "whsec_bench_" + "0" * 24
ADMIN_KEY = "bench-admin-key"


def load_handler(code_uri: str, handler: str) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """``functions/<name>/app.py``'s ``handler``, imported under a unique module name."""
    module_file, _, attr = handler.partition(".")
    path = ROOT / code_uri / f"{module_file}.py"
    name = "bench_fn_" + code_uri.strip("/").replace("/", "_") + "_" + module_file
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return getattr(module, attr)  # type: ignore[no-any-return]


def template_defaults() -> dict[str, str]:
    """template.yaml's parameter defaults (what a stack deployed without overrides runs with)."""
    params = load_template(str(ROOT / "template.yaml")).get("Parameters", {})
    return {name: str(p["Default"]) for name, p in params.items() if "Default" in p}


def lambda_env(svc: Services, *, tracing: bool, function_name: str = "QueryFunction") -> dict[str, str]:
    """The environment our functions see in Lambda: the template's Globals (INFO logs, metrics on,
    the JSON log format at INFO as Lambda's advanced logging controls set it), plus the bench
    services. STAGE stays local (no SSM); AWS_LAMBDA_FUNCTION_NAME marks Lambda."""
    return svc.gateway_env(
        AWS_LAMBDA_FUNCTION_NAME=function_name, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
        AWS_LAMBDA_LOG_FORMAT="JSON", AWS_LAMBDA_LOG_LEVEL="INFO",
        LOG_LEVEL="INFO", POWERTOOLS_LOG_LEVEL="INFO", POWERTOOLS_METRICS_DISABLED="false",
        POWERTOOLS_TRACE_DISABLED="false" if tracing else "true", POWERTOOLS_LOGGER_LOG_EVENT="false",
        POWERTOOLS_TRACER_CAPTURE_RESPONSE="false", ADMIN_API_KEY=ADMIN_KEY, STRIPE_SECRET_KEY="sk_test_" + "x" * 24,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR",
        AWS_XRAY_DAEMON_ADDRESS="127.0.0.1:2")


# --------------------------------------------------------------------------- the buffered functions
@dataclass
class Case:
    function: str          # logical id in template.yaml
    method: str
    path: str
    route: str
    headers: dict[str, str]
    body: Callable[[], str | None] = lambda: None
    sign: Callable[[str], str] | None = None  # Stripe-Signature for the body


def cases(svc: Services) -> list[Case]:
    from tests.support.billing import signature_header  # imports the gateway: only once the environment is set

    key = {"authorization": f"Bearer {svc.api_key}"}

    def webhook() -> str:
        return json.dumps({"id": "evt_bench_" + uuid.uuid4().hex, "object": "event", "type": "customer.created",
                           "api_version": "2025-03-31.basil", "created": int(time.time()),
                           "data": {"object": {"id": "cus_bench", "object": "customer"}}})

    return [
        Case("QueryFunction", "POST", "/v1/chat/completions", "/v1/chat/completions", key,
             lambda: json.dumps(chat_body())),
        Case("HealthFunction", "GET", "/health", "/health", {}),
        Case("ModelsFunction", "GET", "/v1/models", "/v1/models", {"accept-encoding": "gzip"}),
        Case("BalanceFunction", "GET", "/v1/balance", "/v1/balance", key),
        Case("KeysFunction", "GET", "/v1/keys", "/v1/keys", key),
        Case("BillingFunction", "GET", "/v1/subscription", "/v1/subscription", key),
        Case("AdminFunction", "GET", f"/v1/admin/users/{svc.user_id}", "/v1/admin/users/{user_id}",
             {"authorization": f"Bearer {ADMIN_KEY}"}),
        Case("WebhooksFunction", "POST", "/webhooks/stripe", "/webhooks/stripe", {}, webhook,
             lambda body: signature_header(body, WEBHOOK_SECRET)),
    ]


@dataclass
class Series:
    function: str
    memory_mb: int
    walls: list[float]
    cpus: list[float]
    statuses: dict[int, int]
    response_bytes: float
    log_bytes: float

    @property
    def billed(self) -> list[int]:
        return [billed_ms(w) for w in self.walls]

    def billed_at(self, memory_mb: int) -> float:
        return statistics.fmean(billed_ms(scaled_duration_ms(w, c, memory_mb)) for w, c in zip(self.walls, self.cpus,
                                                                                                  strict=True))


def invoke_series(handler: Callable[..., dict[str, Any]], case: Case, memory_mb: int, timeout_s: int, n: int,
                  warmup: int, log_size: Callable[[], int]) -> Series:
    walls, cpus, sizes = [], [], []
    statuses: dict[int, int] = {}
    for i in range(warmup + n):
        body = case.body()
        headers = dict(case.headers)
        if case.sign is not None and body is not None:
            headers["stripe-signature"] = case.sign(body)
        event = http_api_event(case.method, case.path, headers=headers, body=body, route=case.route)
        context = FakeContext(case.function, memory_mb, timeout_s)
        new_trace_id()
        if i == warmup:
            logged_before = log_size()
        t0, c0 = time.perf_counter(), time.process_time()
        response = handler(event, context)
        wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        if i < warmup:
            continue
        walls.append(wall)
        cpus.append(cpu)
        statuses[response["statusCode"]] = statuses.get(response["statusCode"], 0) + 1
        sizes.append(len(response.get("body") or ""))
    return Series(case.function, memory_mb, walls, cpus, statuses, statistics.fmean(sizes),
                  (log_size() - logged_before) / n)


def run_buffered(svc: Services, n: int, tracing: bool) -> tuple[list[Series], dict[str, float]]:
    if "gateway.observability" in sys.modules:  # its tracer was chosen at import, under another environment
        raise RuntimeError("the gateway was imported before the Lambda environment was set")
    os.environ.update(lambda_env(svc, tracing=tracing))
    from gateway import db  # after the environment is set
    from gateway.config import reset_settings

    reset_settings()
    # Powertools warns (once per container) when a function published no metric: not a result
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    functions = serverless_functions(load_template(str(ROOT / "template.yaml")))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # Mangum runs every invocation on the current loop
    results: list[Series] = []
    query_usage: dict[str, float] = {}
    with captured_stdout() as log_size:
        for case in cases(svc):
            props = functions[case.function]
            handler = load_handler(props["CodeUri"], props["Handler"])
            memory, timeout = int(props.get("MemorySize", 128)), int(props.get("Timeout", 3))
            count = n if case.function == "QueryFunction" else max(50, n // 4)
            if case.function == "QueryFunction":
                invoke_series(handler, case, memory, timeout, 20, 0, log_size)  # warm the container first
                loop.run_until_complete(db.close_pool())  # publish the warm-up's database counters
                db_ms0, xacts0 = svc.db_activity()
                upstash0 = svc.upstash_commands()
                series = invoke_series(handler, case, memory, timeout, count, 0, log_size)
                # the pool was opened by the first invocation; its backends are still alive here
                db_cpu = sum(svc.backend_cpu_seconds().values())
                loop.run_until_complete(db.close_pool())
                db_ms1, xacts1 = svc.db_activity()
                query_usage = {"db_active_ms": (db_ms1 - db_ms0) / count, "db_statements": (xacts1 - xacts0) / count,
                               "db_cpu_ms": db_cpu * 1000 / count,
                               "upstash_commands": (svc.upstash_commands() - upstash0) / count}
            else:
                series = invoke_series(handler, case, memory, timeout, count, 10, log_size)
            results.append(series)
        loop.run_until_complete(db.close_pool())
    asyncio.set_event_loop(None)
    loop.close()
    return results, query_usage


# --------------------------------------------------------------------------- streaming (run.sh)
async def run_streaming(svc: Services, n: int, memory_mb: int) -> dict[str, Any]:
    port = free_port()
    env = svc.gateway_env(AWS_LAMBDA_FUNCTION_NAME="QueryStreamFunction", POWERTOOLS_LOG_LEVEL="INFO",
                          POWERTOOLS_TRACE_DISABLED="true", **import_bundle_env())
    # run.sh itself, as the Web Adapter starts it (``stream_app``): `python` on PATH is this interpreter
    env.update(PORT=str(port), PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = spawn("stream", ["bash", str(ROOT / "functions" / "query" / "run.sh")], env=env)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"authorization": f"Bearer {svc.api_key}"}
        wait_until(proc, url, body=chat_body(), headers=headers)
        direct = await measure(f"{svc.openai_base}/chat/completions", {"authorization": "Bearer sk-fake-openai"},
                               chat_body(stream=True), n, 1, stream=True)
        cpu0 = cpu_seconds(descendants(proc.pid))
        m = await measure(url, headers, chat_body(stream=True), n, 1, stream=True)
        cpu_ms = (cpu_seconds(descendants(proc.pid)) - cpu0) * 1000 / (n + 20)  # measure() warms up with 20
        return {"memory_mb": memory_mb, "p50": m["p50"], "p99": m["p99"], "mean": m["mean"], "cpu_ms": cpu_ms,
                "ttfb_p50": m["ttfb_p50"], "direct_p50": direct["p50"], "errors": m["errors"],
                "billed": billed_ms(m["mean"]),  # the mean stream rounded up (per-stream rounding adds < 1 ms)
                "billed_at": {mb: billed_ms(scaled_duration_ms(m["mean"], cpu_ms, mb)) for mb in MEMORY_SIZES}}
    finally:
        proc.stop()


# --------------------------------------------------------------------------- cold start
def compile_sources() -> None:
    """Compile the gateway package and the query function, as the deployed layer ships them
    (layers/common/Makefile). The environment sets PYTHONDONTWRITEBYTECODE, so without this every
    cold start would compile the ~40 gateway modules it imports (as bench/ab.py's cold case does)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "layers" / "common" / "gateway"),
                    str(ROOT / "functions" / "query")], check=True, capture_output=True)


def cold_starts(svc: Services, runs: int, tracing: bool) -> list[dict[str, float]]:
    """``runs`` fresh interpreters running bench/coldstart.py (50 invocations each)."""
    env = lambda_env(svc, tracing=tracing)
    env.update(import_bundle_env())  # as template.yaml's QueryFunction
    env["BENCH_API_KEY"] = svc.api_key
    compile_sources()
    out = []
    for _ in range(runs):
        t0 = time.time()
        done = subprocess.run([sys.executable, "-m", "bench.coldstart", "--invocations", "50"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cold-start probe failed: {done.stderr.strip().splitlines()[-1:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["interpreter_ms"] = (row.pop("started_wall") - t0) * 1000
        row["init_ms"] = row["interpreter_ms"] + row["import_ms"] + row["first_ms"]
        out.append(row)
    return out


# --------------------------------------------------------------------------- report
def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


COST_TARGET = Decimal("2")  # USD per million requests, tokens excluded (issue 15)
COLD_START_TARGET_MS = 400.0  # import + app build + first request's lazy setup (issue 15)


def targets(totals: dict[int, tuple[Decimal, float]], template_mb: int,
            cold: dict[str, list[dict[str, float]]]) -> list[str]:
    """Issue 15's Lambda targets, met or not: the cost per million at the template's memory size
    and the cold start (import + first invocation) with each tracer setting; then the memory size
    the measured durations make cheapest. ``totals``: per memory size, the total per million and
    the billed ms of an invocation."""
    cost, billed = totals[template_mb]
    cheapest = min(totals, key=lambda mb: (totals[mb][0], mb))
    lines = ["Targets (issue 15):",
             f"- cost per million at the template's {template_mb} MB <= ${COST_TARGET}: ${cost}, "
             + ("met" if cost <= COST_TARGET else "MISSED")]
    for label, rows in cold.items():
        ms = statistics.median(r["import_ms"] + r["first_ms"] for r in rows)
        lines.append(f"- cold start (import + first invocation), X-Ray tracer {label}, <= {COLD_START_TARGET_MS:g} ms: "
                     f"{ms:.0f} ms, " + ("met" if ms <= COLD_START_TARGET_MS else "MISSED"))
    low, low_billed = totals[cheapest]
    lines.append(f"Memory: {cheapest} MB is the cheapest size modelled (${low} per million, {low_billed:.2f} billed ms)"
                 + ("." if cheapest == template_mb else
                    f"; the template's {template_mb} MB costs ${cost - low} more per million and bills "
                    f"{billed:.2f} ms: the gateway's own CPU runs faster, and a second of provider wait costs more "
                    "(above)."))
    return lines


def report(series: list[Series], query_usage: dict[str, float], stream: dict[str, Any],
           cold: dict[str, list[dict[str, float]]], meta: dict[str, str], assumptions: Assumptions,
           network_ms: float, system_log_level: str = "WARN", tracing_mode: str = "PassThrough") -> str:
    platform_bytes, traced_share = platform_log_bytes(system_log_level), traced_fraction(tracing_mode)
    out = [f"Measured {meta['when']}; load average before {meta['load_before']}, after {meta['load_after']}. "
           f"{meta['sizes']}", ""]
    out += ["Buffered functions (Mangum handler in-process, API Gateway v2 events, warm container):", "",
            "| function | memory MB | invocations | status | wall p50 / p99 ms | CPU ms mean | billed ms mean | "
            "log bytes / inv. | response bytes |", "|---|---|---|---|---|---|---|---|---|"]
    for s in series:
        status = ", ".join(f"{k}: {v}" for k, v in sorted(s.statuses.items()))
        out.append(f"| {s.function} | {s.memory_mb} | {len(s.walls)} | {status} | {statistics.median(s.walls):.2f} / "
                   f"{percentile(s.walls, 99):.2f} | {statistics.fmean(s.cpus):.2f} | "
                   f"{statistics.fmean(s.billed):.2f} | {s.log_bytes:.0f} | {s.response_bytes:.0f} |")
    q = next(s for s in series if s.function == "QueryFunction")
    out += ["", f"Query function per request: {query_usage['db_statements']:.2f} Postgres statements "
                f"(transactions), {query_usage['db_active_ms']:.3f} ms Postgres active time (statements executing, "
                f"commit flushes included), {query_usage['db_cpu_ms']:.3f} ms Postgres backend CPU, "
                f"{query_usage['upstash_commands']:.2f} Upstash commands.", ""]
    out += [f"Streaming function (uvicorn, uvloop + httptools as run.sh), c=1, {stream['n']} streams: duration "
            f"p50 {stream['p50']:.2f} ms (direct to the upstream {stream['direct_p50']:.2f}), p99 {stream['p99']:.2f}, "
            f"first byte p50 {stream['ttfb_p50']:.2f} ms, CPU {stream['cpu_ms']:.2f} ms per stream, billed "
            f"{stream['billed']} ms at {stream['memory_mb']} MB; non-200: {int(stream['errors'])}.", ""]

    out += ["Cold start of the query function (fresh interpreter, medians of "
            f"{len(next(iter(cold.values())))} runs; the import builds the app, the first invocation does the lazy "
            "setup; CPU is the whole process's up to the end of the first invocation):", "",
            "| X-Ray tracer | exec to interpreter ready ms | import ms | first invocation ms | import + first ms | "
            "exec to first answer ms | CPU ms | second ms | warm p50 ms | peak RSS MiB (50 invocations) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in cold.items():
        out.append(f"| {label} | {_median(rows, 'interpreter_ms'):.0f} | {_median(rows, 'import_ms'):.0f} | "
                   f"{_median(rows, 'first_ms'):.0f} | "
                   f"{statistics.median(r['import_ms'] + r['first_ms'] for r in rows):.0f} | "
                   f"{_median(rows, 'init_ms'):.0f} | {_median(rows, 'init_cpu_ms'):.0f} | "
                   f"{_median(rows, 'second_ms'):.1f} | {_median(rows, 'warm_p50_ms'):.1f} | "
                   f"{_median(rows, 'peak_rss_mib'):.1f} |")
    traced = cold.get("on (as deployed)") or next(iter(cold.values()))
    init_ms, init_cpu = _median(traced, "init_ms"), _median(traced, "init_cpu_ms")

    def usage(memory: int, billed: float, api: bool = True, s: Series = q) -> Usage:
        return Usage(billed_ms=billed, memory_mb=memory, upstash_commands=query_usage["upstash_commands"],
                     db_active_ms=query_usage["db_active_ms"], log_bytes=s.log_bytes + platform_bytes,
                     response_bytes=s.response_bytes + 300, api_gateway=api, traced_fraction=traced_share)

    def cold_billed(memory: int) -> float:
        return billed_ms(scaled_duration_ms(init_ms, min(init_cpu, init_ms), memory))

    out += ["", "Cost per million requests of the buffered query function (USD; the template's 1024 MB and "
            "other sizes modelled from CPU time; 0 ms upstream, so this is the gateway's own cost):", "",
            "| memory MB | billed ms mean | cold start billed ms (model) | Lambda duration | cold starts | "
            "Lambda requests | API Gateway | Upstash | Postgres | CloudWatch Logs | X-Ray | data out | total | "
            f"total with +{network_ms:g} ms network wait |", "|---" * 14 + "|"]
    totals: dict[int, tuple[Decimal, float]] = {}
    for memory in MEMORY_SIZES:
        billed = q.billed_at(memory)
        a = Assumptions(assumptions.db_utilisation, assumptions.cold_start_rate, cold_billed(memory))
        c = cost_per_million(usage(memory, billed), a)
        c_net = cost_per_million(usage(memory, billed + network_ms), a)
        totals[memory] = (c["total"], billed)
        out.append(f"| {memory} | {billed:.2f} | {cold_billed(memory):.0f} | {c['lambda_duration']} | "
                   f"{c['lambda_cold_starts']} | {c['lambda_requests']} | {c['api_gateway']} | {c['upstash']} | "
                   f"{c['postgres']} | {c['cloudwatch_logs']} | {c['xray']} | {c['data_transfer']} | "
                   f"**{c['total']}** | {c_net['total']} |")
    s_usage = Usage(billed_ms=stream["billed"], memory_mb=stream["memory_mb"],
                    upstash_commands=query_usage["upstash_commands"], db_active_ms=query_usage["db_active_ms"],
                    log_bytes=q.log_bytes + platform_bytes, api_gateway=False, traced_fraction=traced_share)
    sc = cost_per_million(s_usage, Assumptions(assumptions.db_utilisation, assumptions.cold_start_rate,
                                               cold_billed(stream["memory_mb"])))
    out += ["", f"Streaming function at {stream['memory_mb']} MB (Function URL, no API Gateway): "
                f"{sc['total']} USD per million streams (Lambda duration {sc['lambda_duration']}, Upstash "
                f"{sc['upstash']}, Postgres {sc['postgres']}, logs {sc['cloudwatch_logs']}); billed ms at "
                + ", ".join(f"{mb} MB {ms}" for mb, ms in stream["billed_at"].items()) + ".", ""]
    out += ["Each second spent waiting for the provider adds, per million requests: "
            + ", ".join(f"{mb} MB ${wait_cost(1.0, mb)}" for mb in MEMORY_SIZES) + ".", ""]
    out += [*targets(totals, q.memory_mb, cold), ""]
    out += [f"Assumptions: Postgres = Neon compute at {assumptions.db_utilisation:.0%} average utilisation "
            f"(cost = active time / utilisation x CU-hour price); cold starts {assumptions.cold_start_rate:.0%} of "
            f"invocations, billed INIT + first invocation (tracer on) with CPU stretched like the rest; "
            f"SystemLogLevel {system_log_level}: {platform_bytes} bytes of Lambda platform log lines per "
            f"invocation; Tracing {tracing_mode}: X-Ray records {traced_share:.0%} of requests; response bytes + 300 "
            "bytes of headers go out through API "
            f"Gateway; +{network_ms:g} ms network wait = in-region round trips the loopback run does not have "
            "(admit stage + settle).", "", f"Prices (USD, us-east-1, read {PRICES_READ}):"]
    out += [f"- {name}: {p.amount.normalize():f} per {p.unit} — {p.source}" for name, p in PRICES.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lambda_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=1000, help="query-function invocations (others: 1/4)")
    parser.add_argument("--stream-requests", type=int, default=500)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--tracing", action="store_true", help="X-Ray tracer on for the buffered invocations")
    parser.add_argument("--cold-only", action="store_true",
                        help="only the cold starts of the query function (tracer off), medians and each run")
    parser.add_argument("--db-utilisation", type=float, default=0.25)
    parser.add_argument("--cold-start-rate", type=float, default=0.01)
    parser.add_argument("--network-ms", type=float, default=3.0,
                        help="extra wait per request for in-region round trips (Upstash/Postgres)")
    defaults = template_defaults()
    parser.add_argument("--system-log-level", choices=("DEBUG", "INFO", "WARN"),
                        default=defaults.get("SystemLogLevel", "INFO"),
                        help="Lambda's SystemLogLevel for the cost (default: template.yaml's)")
    parser.add_argument("--tracing-mode", choices=("Active", "PassThrough"), default=defaults.get("Tracing", "Active"),
                        help="Lambda's Tracing mode for the cost (default: template.yaml's)")
    args = parser.parse_args(argv)
    load_before = load_average()
    svc = start_services()
    try:
        if args.cold_only:
            rows = cold_starts(svc, args.cold_runs, tracing=False)
            keys = ("interpreter_ms", "import_ms", "first_ms", "init_ms", "import_cpu_ms", "init_cpu_ms",
                    "peak_rss_mib")
            print(f"load {load_before} -> {load_average()}; medians of {len(rows)} cold starts (tracer off): " +
                  ", ".join(f"{k} {_median(rows, k):.1f}" for k in keys if k in rows[0]))
            for r in rows:
                print("  " + ", ".join(f"{k} {r[k]:.1f}" for k in keys if k in r))
            return
        cold = {"off": cold_starts(svc, args.cold_runs, tracing=False),
                "on (as deployed)": cold_starts(svc, args.cold_runs, tracing=True)}
        series, query_usage = run_buffered(svc, args.invocations, args.tracing)
        memory = int(serverless_functions(load_template(str(ROOT / "template.yaml")))["QueryStreamFunction"]
                     .get("MemorySize", 128))
        stream = asyncio.run(run_streaming(svc, args.stream_requests, memory))
        stream["n"] = args.stream_requests
        meta = {"when": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "load_before": load_before,
                "load_after": load_average(),
                "sizes": f"{args.invocations} query invocations (other functions {max(50, args.invocations // 4)}),"
                         f" {args.stream_requests} streams, {args.cold_runs} cold starts per tracer setting; "
                         f"buffered invocations with the X-Ray tracer {'on' if args.tracing else 'off'}."}
        print(report(series, query_usage, stream, cold, meta,
                     Assumptions(args.db_utilisation, args.cold_start_rate), args.network_ms,
                     args.system_log_level, args.tracing_mode))
    finally:
        svc.close()


if __name__ == "__main__":
    main()
