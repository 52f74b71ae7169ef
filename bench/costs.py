"""Infrastructure cost per request on AWS Lambda, and how Lambda's memory size scales CPU.

Pure functions and the price list only (no I/O), used by bench/lambda_bench.py and tested in
tests/unit/test_bench_costs.py. Prices are list prices for us-east-1, read on PRICES_READ from
the sources given with each one (BENCHMARKS.md repeats them); Decimal throughout, like all money.

Memory and CPU: Lambda gives a function CPU in proportion to its memory, one full vCPU at
1,769 MB (https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html). We
approximate a function's duration at memory M from one measurement on this machine (where the
process had a whole core) by stretching only its CPU time: ``wall - cpu + cpu / share(M)``, with
``share(M) = min(1, M / 1769)``. That assumes this machine's core does as much per second as a
Graviton2 vCPU and that waiting for I/O does not depend on memory: an approximation, not a
measurement on Lambda.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

PRICES_READ = "2026-12-04"
MB_PER_VCPU = 1769
MILLION = Decimal(1_000_000)
GIB = Decimal(1024**3)


@dataclass(frozen=True, slots=True)
class Price:
    amount: Decimal  # USD per unit
    unit: str
    source: str


PRICES: dict[str, Price] = {
    "lambda_arm_gb_second": Price(Decimal("0.0000133334"), "GB-second of arm64 duration (first 7.5 billion per month)",
                                  "https://aws.amazon.com/lambda/pricing/"),
    "lambda_request": Price(Decimal("0.20") / MILLION, "request (invocation)", "https://aws.amazon.com/lambda/pricing/"),
    "http_api_request": Price(Decimal("1.00") / MILLION, "HTTP API request (first 300 million per month)",
                              "https://aws.amazon.com/api-gateway/pricing/"),
    "data_transfer_out_gb": Price(Decimal("0.09"), "GB out to the internet (after the first 100 GB)",
                                  "https://aws.amazon.com/api-gateway/pricing/"),
    "upstash_command": Price(Decimal("0.20") / Decimal(100_000), "command (pay-as-you-go)",
                             "https://upstash.com/docs/redis/overall/billing"),
    "neon_cu_hour": Price(Decimal("0.14"), "compute-unit hour (Launch plan; 1 CU = 1 vCPU, 4 GB)",
                          "https://neon.com/docs/introduction/plans"),
    "cloudwatch_logs_gb": Price(Decimal("0.50"), "GB of logs ingested (standard class)",
                                "https://aws.amazon.com/cloudwatch/pricing/"),
    "xray_trace": Price(Decimal("5.00") / MILLION, "trace recorded (after 100,000 free per month)",
                        "https://aws.amazon.com/xray/pricing/"),
}


# Lambda's START/END/REPORT lines per invocation (text format; assumed, not measured here). With
# the JSON log format and a system log level of WARN (template.yaml's default) Lambda writes none
# of them: they are INFO platform events.
PLATFORM_LINES_BYTES = 350
_SYSTEM_LEVELS = ("DEBUG", "INFO", "WARN")
# X-Ray's default sampling rule: the first request each second, then 5%.
XRAY_DEFAULT_SAMPLING = 0.05


def platform_log_bytes(system_log_level: str | None) -> int:
    """Bytes of Lambda's own log lines per invocation at a ``SystemLogLevel`` (None: no advanced
    logging controls, the plain-text START/END/REPORT lines)."""
    if system_log_level is None:
        return PLATFORM_LINES_BYTES
    if system_log_level not in _SYSTEM_LEVELS:
        raise ValueError(f"unknown system log level {system_log_level!r}")
    return 0 if system_log_level == "WARN" else PLATFORM_LINES_BYTES


def traced_fraction(tracing_mode: str) -> float:
    """Share of requests X-Ray records for a Lambda ``Tracing`` mode. Active samples by X-Ray's
    default rule (the reservoir of 1 request per second is ignored); PassThrough records only an
    invocation whose caller sent a sampled trace header: an HTTP API has no X-Ray support and sends
    none, and callers of the streaming Function URL are assumed not to."""
    if tracing_mode == "Active":
        return XRAY_DEFAULT_SAMPLING
    if tracing_mode == "PassThrough":
        return 0.0
    raise ValueError(f"unknown tracing mode {tracing_mode!r}")


def price(name: str) -> Decimal:
    return PRICES[name].amount


def cpu_share(memory_mb: int) -> float:
    """The fraction of one vCPU Lambda gives a function of ``memory_mb`` (capped at one: our
    handler runs one request at a time on one thread, so more vCPUs do not help it)."""
    if memory_mb <= 0:
        raise ValueError("memory_mb must be positive")
    return min(1.0, memory_mb / MB_PER_VCPU)


def scaled_duration_ms(wall_ms: float, cpu_ms: float, memory_mb: int) -> float:
    """Approximate duration at ``memory_mb`` of an invocation that took ``wall_ms`` with
    ``cpu_ms`` of CPU on a whole core here (see the module docstring)."""
    cpu = min(max(cpu_ms, 0.0), wall_ms)
    return wall_ms - cpu + cpu / cpu_share(memory_mb)


def billed_ms(duration_ms: float) -> int:
    """Lambda bills duration rounded up to the next millisecond."""
    return max(1, math.ceil(duration_ms - 1e-9))


def _d(value: float) -> Decimal:
    return Decimal(repr(float(value)))


@dataclass(frozen=True, slots=True)
class Usage:
    """What one request uses, averaged over a run."""

    billed_ms: float                 # mean billed Lambda milliseconds per invocation
    memory_mb: int
    upstash_commands: float = 0.0
    db_active_ms: float = 0.0        # Postgres time executing our statements
    log_bytes: float = 0.0           # bytes written to CloudWatch Logs (ours + the platform's lines)
    response_bytes: float = 0.0      # bytes sent back to the client
    api_gateway: bool = True         # HttpApi in front (the streaming Function URL has none)
    traced_fraction: float = 0.0     # share of requests X-Ray records


@dataclass(frozen=True, slots=True)
class Assumptions:
    db_utilisation: float = 0.25     # average busy share of the Neon compute we pay for
    cold_start_rate: float = 0.01    # share of invocations that start a new environment
    cold_start_billed_ms: float = 0.0  # billed INIT + first-invocation ms of a cold start at this memory


def cost_per_million(u: Usage, a: Assumptions = Assumptions()) -> dict[str, Decimal]:
    """USD per million requests, by line; ``total`` is their sum."""
    gb = Decimal(u.memory_mb) / Decimal(1024)
    lines = {
        "lambda_duration": _d(u.billed_ms) / 1000 * gb * price("lambda_arm_gb_second") * MILLION,
        "lambda_cold_starts": _d(a.cold_start_rate * a.cold_start_billed_ms) / 1000 * gb
        * price("lambda_arm_gb_second") * MILLION,
        "lambda_requests": price("lambda_request") * MILLION,
        "api_gateway": price("http_api_request") * MILLION if u.api_gateway else Decimal(0),
        "upstash": _d(u.upstash_commands) * price("upstash_command") * MILLION,
        "postgres": _d(u.db_active_ms / a.db_utilisation) / 1000 / 3600 * price("neon_cu_hour") * MILLION
        if a.db_utilisation > 0 else Decimal(0),
        "cloudwatch_logs": _d(u.log_bytes) / GIB * price("cloudwatch_logs_gb") * MILLION,
        "xray": _d(u.traced_fraction) * price("xray_trace") * MILLION,
        "data_transfer": _d(u.response_bytes) / GIB * price("data_transfer_out_gb") * MILLION,
    }
    lines["total"] = sum(lines.values(), Decimal(0))
    return {k: v.quantize(Decimal("0.0001")) for k, v in lines.items()}


def upstream_wait_cost_per_million(seconds: float, memory_mb: int) -> Decimal:
    """What each second the function waits for the provider adds per million requests: Lambda
    bills the wait at the full memory size (the lever is memory, not CPU)."""
    gb = Decimal(memory_mb) / Decimal(1024)
    return (_d(seconds) * gb * price("lambda_arm_gb_second") * MILLION).quantize(Decimal("0.01"))
