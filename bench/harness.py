"""Pieces every benchmark shares: the load generator and process measurements (the request
itself is bench/workload.py).

Load: ``measure`` sends the same chat request ``total`` times over ``concurrency`` keep-alive
connections (aiohttp) and returns latency percentiles, throughput and, for streams, the time to
the first body byte. Process figures come from ``/proc`` (Linux): CPU seconds and resident memory
of a process and, optionally, all of its descendants.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import sys
import time
from typing import Any

import aiohttp


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an unsorted list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def warm_up(url: str, headers: dict[str, str], body: dict[str, Any], n: int = 20) -> None:
    """``n`` sequential requests whose timings are thrown away (connections, caches, JIT)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(url, json=body, headers=headers) as r:
                await r.read()


async def measure(url: str, headers: dict[str, str], body: dict[str, Any], total: int, concurrency: int,
                  stream: bool = False, warmup: int = 20) -> dict[str, float]:
    """``total`` POSTs over ``concurrency`` connections, after ``warmup`` sequential ones.

    Returns ms: p50/p99 (whole response), ttfb_p50/ttfb_p99 (first body chunk, streams only),
    rps and the number of non-200 answers."""
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors = 0
    kinds: dict[int, tuple[int, bytes]] = {}  # non-200 status -> (how many, the first body)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(warmup):  # connections, caches, prepared statements
            async with session.post(url, json=body, headers=headers) as r:
                await r.read()
        remaining = total

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with session.post(url, json=body, headers=headers) as r:
                    data = b""
                    if stream:
                        first = True
                        async for _chunk in r.content.iter_any():
                            if first:
                                ttfbs.append(time.perf_counter() - t0)
                                first = False
                                data = _chunk
                    else:
                        data = await r.read()
                    if r.status != 200:
                        errors += 1
                        seen, first_body = kinds.get(r.status, (0, data))
                        kinds[r.status] = (seen + 1, first_body)
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    for status, (seen, first_body) in sorted(kinds.items()):  # what failed, on the log (not in the figures)
        print(f"… {seen} x {status} from {url} (c={concurrency}): {first_body[:300]!r}", file=sys.stderr, flush=True)
    out = {"p50": statistics.median(latencies) * 1000, "p99": percentile(latencies, 99) * 1000,
           "mean": statistics.fmean(latencies) * 1000, "rps": len(latencies) / elapsed, "errors": errors}
    if ttfbs:
        out["ttfb_p50"] = statistics.median(ttfbs) * 1000
        out["ttfb_p99"] = percentile(ttfbs, 99) * 1000
    return out


async def measure_get(url: str, total: int) -> dict[str, float]:
    """Sequential GETs (the warm catalogue)."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(url) as r:
                await r.read()
        for _ in range(total):
            t0 = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
                assert r.status == 200
            latencies.append(time.perf_counter() - t0)
    return {"p50": statistics.median(latencies) * 1000, "p99": percentile(latencies, 99) * 1000}


async def best_of(repeat: int, *args: Any, **kwargs: Any) -> dict[str, float]:
    """Run a measurement ``repeat`` times and keep the run with the median p50 (the machine is a
    shared 2-vCPU VM: single runs vary by ±20%)."""
    runs = sorted([await measure(*args, **kwargs) for _ in range(repeat)], key=lambda r: r["p50"])
    return runs[len(runs) // 2]


# --------------------------------------------------------------------------- /proc
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return raw[raw.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` (own threads included)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pids: list[int]) -> float:
    """Resident memory of ``pids`` added up (pages shared between them are counted twice)."""
    return sum(_status_kib(p, "VmRSS") for p in pids) / 1024


def peak_rss_mib(pid: int) -> float:
    """High-water mark of one process's resident memory (what Lambda reports as Max Memory Used)."""
    return _status_kib(pid, "VmHWM") / 1024


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"
