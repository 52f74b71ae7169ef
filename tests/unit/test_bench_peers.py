"""The peer benchmark (bench/peers.py) measures our gateway as it is deployed: functions/query/run.sh
itself (uvicorn serving ``stream_app``), and reports spawn to first answer over every spawn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import peers
from bench.stack import Services

ROOT = Path(__file__).resolve().parents[2]


def _services() -> Services:
    return Services(database_url="postgresql://x/y", upstream="http://127.0.0.1:1", upstash_url="http://127.0.0.1:2",
                    upstash_token="t", user_id="u", api_key="sk-test", procs=[])


def test_ours_is_run_sh_itself_on_this_interpreter() -> None:
    peer = peers.build_peer("ours", _services(), argparse.Namespace())
    assert peer.argv == ["bash", str(ROOT / "functions" / "query" / "run.sh")]
    assert peer.env["PORT"] == str(peer.port)
    assert peer.env["PATH"].split(":")[0] == str(Path(sys.executable).parent)  # run.sh runs `python`
    assert "exec python -m serve" in (ROOT / "functions" / "query" / "run.sh").read_text()  # uvicorn: stream_app


def test_spawn_to_first_answer_is_the_median_of_every_spawn() -> None:
    peer = peers.build_peer("ours", _services(), argparse.Namespace())
    run = {"p50": 1.0, "p99": 2.0, "rps": 10.0, "ttfb_p50": 1.0, "errors": 0}
    result = peers.Result(peer, 0.9, run, run, run, run, run, run, run, 1.0, 50.0, 0.0)
    meta = {"when": "now", "host": "h", "load_before": "0", "load_after": "0", "sizes": "s", "round_loads": "0"}
    text = peers.report({"ours": [result]}, {}, meta, {"ours": [0.3, 0.4, 0.5, 0.6]})
    assert "| spawn to first answer (s) | 0.50 |" in text
    assert "Spawn to first answer, each run (s): ours 0.300, 0.400, 0.500, 0.600, 0.900" in text


def test_spawns_alone_are_reported_with_ours_paired_against_each_peer() -> None:
    meta = {"when": "now", "host": "h", "load_before": "0", "load_after": "0"}
    text = peers.spawn_report({"ours": [0.30, 0.50, 0.40], "portkey": [0.35, 0.45, 0.38], "bare": []},
                              {"bare": "not installed"}, meta)
    assert "| ours | 3 | 0.400 |" in text and "| portkey | 3 | 0.380 |" in text
    assert "ours first against portkey: 1 of 3 runs, median paired difference +20 ms" in text
    assert "| bare |" not in text and "Skipped: bare: not installed" in text


def _table(**changes: float | str) -> dict[str, float | str]:
    ours: dict[str, float | str] = {
        "overhead p50, c=1 (ms)": 0.8, "overhead p99, c=1 (ms)": 1.5, "requests/s, c=16": 1200.0,
        "CPU ms per request, c=1": 0.7, "streaming first-byte overhead (ms)": 0.8,
        "streaming total overhead (ms)": 1.2, "RSS after load (MiB)": 61.0, "spawn to first answer (s)": 0.35,
        "100 ms upstream: p50 c=1 minus bare (ms)": 0.8, "100 ms upstream: p50 c=16 minus bare (ms)": 0.2,
        "Upstash commands per request (c=1)": 0.11}
    return {**ours, **changes}


def test_the_report_says_which_targets_ours_meets() -> None:
    lines = peers.verdict({"ours": _table(**{"streaming total overhead (ms)": 1.54, "requests/s, c=16": 999.0,
                                             "Upstash commands per request (c=1)": 0.2})}, {})
    assert lines[0] == "Targets (issue 15) met by ours: 7 of 10"
    assert "- streaming total overhead (ms) <= 1.5: 1.54, MISSED" in lines
    assert "- requests/s, c=16 >= 1000: 999, MISSED" in lines
    assert "- Upstash commands per request (c=1) < 0.2: 0.20, MISSED" in lines  # strictly under
    assert "- overhead p50, c=1 (ms) <= 1: 0.80, met" in lines
    assert "- RSS after load (MiB) <= 80: 61.0, met" in lines


def test_ours_leads_a_peer_only_where_it_is_better_and_a_failed_figure_is_led() -> None:
    portkey = _table(**{"overhead p50, c=1 (ms)": 1.8, "requests/s, c=16": 700.0, "spawn to first answer (s)": 0.33,
                        "streaming total overhead (ms)": "failed (500 non-200)",
                        "streaming first-byte overhead (ms)": "failed (500 non-200)",
                        "Upstash commands per request (c=1)": 0.0})
    bare = _table(**{"overhead p50, c=1 (ms)": 0.3, "spawn to first answer (s)": 0.2})
    lines = peers.verdict({"ours": _table(), "portkey": portkey, "bare": bare},
                          {"ours": [0.30, 0.40, 0.36], "portkey": [0.33, 0.32, 0.34]})
    lead = next(line for line in lines if line.startswith("Ours leads portkey"))
    # equal figures are not a lead; Upstash commands are not compared; the bare passthrough is no peer
    assert lead.startswith("Ours leads portkey on 4 of 10 figures, 2 of them because portkey failed (streaming "
                           "first-byte overhead (ms), streaming total overhead (ms)); behind on ")
    assert "spawn to first answer (s): ours 0.35, portkey 0.33" in lead
    behind = lead.split("; behind on ")[1]
    assert "overhead p50" not in behind and "requests/s" not in behind and "streaming" not in behind
    assert "ours first against portkey: 1 of 3 runs, median paired difference +20 ms" in lines
    assert not any(line.startswith("Ours leads bare") or "against bare" in line for line in lines)


def test_spawn_is_led_by_the_paired_runs_not_by_the_medians() -> None:
    table = {"ours": _table(**{"spawn to first answer (s)": 0.33}),
             "portkey": _table(**{"spawn to first answer (s)": 0.34, "overhead p50, c=1 (ms)": 2.0})}
    # ours' median is lower, but in the runs that ran back to back portkey answered first twice
    lines = peers.verdict(table, {"ours": [0.33, 0.31, 0.45], "portkey": [0.32, 0.30, 0.50]})
    assert "spawn to first answer (s): ours 0.33, portkey 0.34" in lines[-2]
    assert lines[-1] == "ours first against portkey: 1 of 3 runs, median paired difference +10 ms"
    lines = peers.verdict(table, {"ours": [0.31, 0.29, 0.45], "portkey": [0.32, 0.30, 0.40]})
    assert "spawn" not in lines[-2] and lines[-1].endswith("median paired difference -10 ms")


def test_the_full_report_ends_with_the_verdict() -> None:
    peer = peers.build_peer("ours", _services(), argparse.Namespace())
    run = {"p50": 1.0, "p99": 2.0, "rps": 1100.0, "ttfb_p50": 1.0, "errors": 0}
    result = peers.Result(peer, 0.9, run, run, run, run, run, run, run, 0.5, 50.0, 0.1)
    meta = {"when": "now", "host": "h", "load_before": "0", "load_after": "0", "sizes": "s", "round_loads": "0"}
    text = peers.report({"ours": [result]}, {}, meta)
    assert "Targets (issue 15) met by ours: 8 of 10" in text
    assert "- overhead p50, c=1 (ms) <= 1: 0.00, met" in text
    assert "- 100 ms upstream: p50 c=1 minus bare (ms) <= 1: n/a (no bare run), MISSED" in text  # not measured
