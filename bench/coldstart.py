"""Lambda invocation plumbing (API Gateway v2 events, a fake context) and the cold-start probe.

Standard library only at import time, on purpose: ``python -m bench.coldstart`` runs in a fresh
interpreter and must not load anything the query function would import itself (psycopg, starlette,
pydantic …), or its import time would look shorter than in Lambda.

    python -m bench.coldstart [--invocations 50]   (environment, tracer on or off: bench/lambda_bench.py)

prints one JSON line: interpreter start, import of functions/query/app.py (which builds the app),
the first invocation (lazy setup: DB pool, catalogue, Upstash and HTTP clients), the following
ones, CPU time at each point and peak RSS.
"""

from __future__ import annotations

import time

STARTED_WALL = time.time()

import argparse  # noqa: E402  (timestamps first: they measure the imports below)
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench.workload import chat_body  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class FakeContext:
    """The attributes Powertools reads from a Lambda context."""

    def __init__(self, function_name: str, memory_mb: int, timeout_s: int) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2026/12/04/[$LATEST]bench"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def http_api_event(method: str, path: str, *, headers: dict[str, str] | None = None, body: str | None = None,
                   route: str | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, with a fresh request id each time (our
    billing reference comes from it)."""
    request_id = uuid.uuid4().hex[:16] + "="
    route_key = f"{method} {route or path}"
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": route_key, "rawPath": path, "rawQueryString": "",
        "headers": {"accept": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com",
                    "user-agent": "bench", "x-forwarded-for": "203.0.113.7", "x-forwarded-port": "443",
                    "x-forwarded-proto": "https", **(headers or {})},
        "requestContext": {"accountId": "123456789012", "apiId": "abc123",
                           "domainName": "abc123.execute-api.us-east-1.amazonaws.com", "domainPrefix": "abc123",
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "bench"},
                           "requestId": request_id, "routeKey": route_key, "stage": "$default",
                           "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
                           "timeEpoch": int(time.time() * 1000)},
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = body
        event["headers"]["content-type"] = "application/json"
    return event


def new_trace_id() -> None:
    """What the Lambda runtime does before each invocation (the X-Ray SDK reads it)."""
    os.environ["_X_AMZN_TRACE_ID"] = (f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
                                      f"Parent={uuid.uuid4().hex[:16]};Sampled=1")


@contextmanager
def captured_stdout() -> Iterator[Callable[[], int]]:
    """Send file descriptor 1 (where Lambda's logs go) to a temporary file; yields a function that
    returns how many bytes were written so far."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)

        def written() -> int:
            sys.stdout.flush()
            return os.fstat(sink.fileno()).st_size

        try:
            yield written
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def probe(invocations: int) -> dict[str, Any]:
    """Import the query function and invoke it ``invocations`` times; timings in ms."""
    t_main, cpu_main = time.perf_counter(), time.process_time()
    sys.path.insert(0, str(ROOT / "functions" / "query"))
    import app  # type: ignore[import-not-found]  # functions/query/app.py: builds the app at import

    t_imported, cpu_imported = time.perf_counter(), time.process_time()
    asyncio.set_event_loop(asyncio.new_event_loop())  # the loop Mangum keeps across invocations
    key = os.environ["BENCH_API_KEY"]
    walls, cpu_first = [], 0.0
    with captured_stdout():
        for i in range(invocations):
            event = http_api_event("POST", "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                   body=json.dumps(chat_body()))
            new_trace_id()
            t0 = time.perf_counter()
            response = app.handler(event, FakeContext("QueryFunction", 1024, 60))
            walls.append((time.perf_counter() - t0) * 1000)
            if i == 0:
                cpu_first = time.process_time()
            if response["statusCode"] != 200:
                raise RuntimeError(f"query function answered {response['statusCode']}: {response.get('body')}")
    return {"started_wall": STARTED_WALL, "startup_cpu_ms": cpu_main * 1000,
            "import_ms": (t_imported - t_main) * 1000, "import_cpu_ms": (cpu_imported - cpu_main) * 1000,
            "first_ms": walls[0], "init_cpu_ms": cpu_first * 1000,
            "second_ms": walls[1] if len(walls) > 1 else None,
            "warm_p50_ms": statistics.median(walls[2:]) if len(walls) > 2 else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart")
    parser.add_argument("--invocations", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(probe(max(1, args.invocations))), flush=True)


if __name__ == "__main__":
    main()
