"""The benchmark's cost calculator (bench/costs.py): Lambda billing arithmetic and the memory model."""

from decimal import Decimal

import pytest

from bench.costs import (
    Assumptions,
    Usage,
    billed_ms,
    cost_per_million,
    cpu_share,
    platform_log_bytes,
    scaled_duration_ms,
    traced_fraction,
    upstream_wait_cost_per_million,
)


def test_lambda_bills_whole_milliseconds_rounded_up() -> None:
    assert billed_ms(0.2) == 1
    assert billed_ms(1.0) == 1
    assert billed_ms(1.0001) == 2
    assert billed_ms(12.5) == 13


def test_cpu_share_is_proportional_to_memory_up_to_one_vcpu() -> None:
    assert cpu_share(1769) == 1.0
    assert cpu_share(4096) == 1.0
    assert cpu_share(512) == pytest.approx(512 / 1769)
    with pytest.raises(ValueError):
        cpu_share(0)


def test_only_cpu_time_stretches_with_less_memory() -> None:
    # 10 ms wall of which 2 ms CPU: at half a vCPU the CPU part doubles, the I/O wait does not
    half = int(1769 / 2)
    assert scaled_duration_ms(10.0, 2.0, half) == pytest.approx(8.0 + 2.0 * 1769 / half)
    assert scaled_duration_ms(10.0, 2.0, 1769) == pytest.approx(10.0)
    # CPU measured above wall (other threads) is capped at the wall time
    assert scaled_duration_ms(1.0, 3.0, 1769) == pytest.approx(1.0)


def test_cost_lines_for_a_known_request() -> None:
    usage = Usage(billed_ms=10, memory_mb=1024, upstash_commands=1, db_active_ms=0.36, log_bytes=1024 ** 3 / 1e6,
                  response_bytes=0, traced_fraction=0.05)
    lines = cost_per_million(usage, Assumptions(db_utilisation=1.0, cold_start_rate=0))
    # 1M x 10 ms x 1 GB x $0.0000133334 = $0.133334
    assert lines["lambda_duration"] == Decimal("0.1333")
    assert lines["lambda_requests"] == Decimal("0.2000")
    assert lines["api_gateway"] == Decimal("1.0000")
    assert lines["upstash"] == Decimal("2.0000")            # $0.20 per 100k commands
    assert lines["postgres"] == Decimal("0.0140")           # 360 s of 1 CU at $0.14 per hour
    assert lines["cloudwatch_logs"] == Decimal("0.5000")    # 1 GiB at $0.50
    assert lines["xray"] == Decimal("0.2500")
    assert lines["lambda_cold_starts"] == Decimal("0.0000")
    assert lines["total"] == sum(v for k, v in lines.items() if k != "total")


def test_streaming_function_has_no_api_gateway_and_db_idle_share_costs_more() -> None:
    usage = Usage(billed_ms=5, memory_mb=512, db_active_ms=1.0, api_gateway=False)
    busy = cost_per_million(usage, Assumptions(db_utilisation=1.0, cold_start_rate=0))
    idle = cost_per_million(usage, Assumptions(db_utilisation=0.25, cold_start_rate=0))
    assert busy["api_gateway"] == 0
    assert idle["postgres"] == busy["postgres"] * 4


def test_cold_starts_are_billed_at_their_rate() -> None:
    usage = Usage(billed_ms=0, memory_mb=1024)
    lines = cost_per_million(usage, Assumptions(cold_start_rate=0.01, cold_start_billed_ms=1000))
    # 10,000 cold starts x 1 s x 1 GB
    assert lines["lambda_cold_starts"] == Decimal("0.1333")


def test_waiting_for_the_provider_is_billed_at_full_memory() -> None:
    assert upstream_wait_cost_per_million(1.0, 1024) == Decimal("13.33")
    assert upstream_wait_cost_per_million(1.0, 256) == Decimal("3.33")


def test_platform_lines_are_gone_at_system_log_level_warn() -> None:
    # template.yaml: LogFormat JSON, SystemLogLevel WARN (START/END/REPORT are INFO platform events)
    assert platform_log_bytes("WARN") == 0
    assert platform_log_bytes("INFO") == platform_log_bytes("DEBUG") == platform_log_bytes(None) == 350
    with pytest.raises(ValueError):
        platform_log_bytes("ERROR")


def test_xray_records_only_with_active_tracing() -> None:
    assert traced_fraction("Active") == 0.05
    assert traced_fraction("PassThrough") == 0.0
    with pytest.raises(ValueError):
        traced_fraction("Disabled")
    base = Usage(billed_ms=5, memory_mb=1024, log_bytes=570)
    active = cost_per_million(Usage(billed_ms=5, memory_mb=1024, log_bytes=570 + platform_log_bytes("INFO"),
                                    traced_fraction=traced_fraction("Active")))
    lean = cost_per_million(Usage(billed_ms=5, memory_mb=1024, log_bytes=570 + platform_log_bytes("WARN"),
                                  traced_fraction=traced_fraction("PassThrough")))
    assert active["xray"] == Decimal("0.2500") and lean["xray"] == 0
    # 920 vs 570 bytes per request at $0.50 per GiB
    assert active["cloudwatch_logs"] == Decimal("0.4284") and lean["cloudwatch_logs"] == Decimal("0.2654")
    assert lean["total"] == cost_per_million(base)["total"]
