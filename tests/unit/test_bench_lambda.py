"""The Lambda benchmark (bench/lambda_bench.py) says which of issue 15's Lambda targets are met."""

from __future__ import annotations

from decimal import Decimal

from bench import lambda_bench

COLD = {"off": [{"import_ms": 220.0, "first_ms": 20.0}, {"import_ms": 230.0, "first_ms": 25.0},
                {"import_ms": 390.0, "first_ms": 30.0}],
        "on (as deployed)": [{"import_ms": 380.0, "first_ms": 30.0}, {"import_ms": 390.0, "first_ms": 35.0},
                             {"import_ms": 240.0, "first_ms": 20.0}]}


def test_cost_and_cold_start_targets_are_judged_at_the_template_memory() -> None:
    totals = {256: (Decimal("1.9098"), 9.67), 512: (Decimal("1.9142"), 5.48), 1024: (Decimal("2.0001"), 3.45)}
    lines = lambda_bench.targets(totals, 1024, COLD)
    assert lines[1] == "- cost per million at the template's 1024 MB <= $2: $2.0001, MISSED"
    # the median of import + first per run (not the sum of two medians)
    assert "- cold start (import + first invocation), X-Ray tracer off, <= 400 ms: 255 ms, met" in lines
    assert "- cold start (import + first invocation), X-Ray tracer on (as deployed), <= 400 ms: 410 ms, MISSED" in lines
    assert lines[-1].startswith("Memory: 256 MB is the cheapest size modelled ($1.9098 per million, 9.67 billed ms); "
                                "the template's 1024 MB costs $0.0903 more per million and bills 3.45 ms")


def test_the_template_size_met_and_cheapest() -> None:
    totals = {256: (Decimal("1.99"), 9.0), 1024: (Decimal("1.98"), 3.0)}
    lines = lambda_bench.targets(totals, 1024, {"off": COLD["off"]})
    assert lines[1] == "- cost per million at the template's 1024 MB <= $2: $1.98, met"
    assert lines[-1] == "Memory: 1024 MB is the cheapest size modelled ($1.98 per million, 3.00 billed ms)."
