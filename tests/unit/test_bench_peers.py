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
