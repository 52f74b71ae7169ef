"""`mlp smoke` against the local stack, as an operator runs it against a deployed stage: the API is
the local stack (every function of template.yaml), the streaming URL is functions/query/run.sh
itself (uvicorn serving the streaming function's app, as behind the Lambda Web Adapter)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.local.servers import free_port
from tests.e2e.conftest import create_user
from tests.support.apps import stream_function

pytestmark = pytest.mark.e2e

MLP = Path(sys.executable).parent / "mlp"


@pytest.fixture(scope="module")
def stream_url(local_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    fake = local_stack["fake_providers_url"]
    env = {"ADMIN_API_KEY": local_stack["admin_key"],
           "OPENAI_BASE_URL": f"{fake}/openai/v1", "OPENAI_API_KEY": "sk-fake-openai",
           "OPENROUTER_BASE_URL": f"{fake}/openrouter/api/v1", "OPENROUTER_API_KEY": "sk-or-fake"}
    with stream_function(local_stack, tmp_path_factory.mktemp("stream"), env, "/v1/chat/completions") as url:
        yield url


def _smoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MLP), "smoke", *args], capture_output=True, text=True, timeout=180, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")})


def test_smoke_passes_against_the_local_stack(local_stack: dict[str, Any], stream_url: str) -> None:
    user = create_user(local_stack["database_url"], balance="5")
    r = _smoke("--base-url", local_stack["base_url"], "--stream-url", stream_url, "--api-key", user["api_key"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == "smoke: all checks passed"
    assert not [line for line in lines if line.startswith("FAIL")]
    for expected in ("GET /health", "POST chat on the API", "POST streamed chat on the streaming URL",
                     "4 usage records, one per request", "billed once each", "a forged Stripe webhook is refused"):
        assert any(expected in line for line in lines), (expected, lines)


def test_smoke_reports_what_fails(local_stack: dict[str, Any]) -> None:
    user = create_user(local_stack["database_url"], balance="5")
    dead = f"http://127.0.0.1:{free_port()}"
    r = _smoke("--base-url", local_stack["base_url"], "--stream-url", dead, "--api-key", user["api_key"],
               "--wait", "2")
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert any("streaming URL" in line for line in fails), r.stdout
    assert any("4 usage records" in line for line in fails), r.stdout
    assert "Traceback" not in r.stdout + r.stderr
