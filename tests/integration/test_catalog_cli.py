"""``mlp refresh-models``: discovery from the ops CLI, with its progress display."""

# ruff: noqa: F811  (test arguments named after the catalog_env fixture imported below)

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from gateway import db
from gateway.cli import main
from tests.support.catalog import CatalogEnv, catalog_env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
async def mlp(catalog_env: CatalogEnv, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Cli]:
    await db.close_pool()  # the CLI runs its own event loop (in a thread, as from a shell)

    def call(argv: list[str]) -> int:
        try:
            return main(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1

    async def run(*argv: str) -> Result:
        await db.close_pool()
        capsys.readouterr()
        code = await asyncio.to_thread(call, list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    yield run
    await db.close_pool()


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("{")]  # skip JSON log lines


async def test_refresh_models_shows_progress_per_source(catalog_env: CatalogEnv, mlp: Cli) -> None:
    result = await mlp("refresh-models")
    assert result.code == 0, result
    err = progress_lines(result.err)
    assert err[0] == "refresh-models: fetching openrouter, openai, anthropic, gemini ..."
    fetched = {m.group(1): int(m.group(2)) for line in err
               if (m := re.match(r"\s+ok\s+(\w+)\s+fetched\s+(\d+) models", line))}
    assert fetched == {"openrouter": 300, "openai": 18, "anthropic": 9, "gemini": 12}
    assert "writing model_pricing ..." in err
    header = next(i for i, line in enumerate(err) if line.startswith("source"))
    assert err[header].split() == ["source", "fetched", "added", "updated", "price", "Δ", "deactivated",
                                   "reactivated", "skipped"]
    table = {line.split()[0]: line.split()[1:] for line in err[header + 1:header + 6]}
    assert table["openrouter"][:2] == ["300", "283"] and table["openrouter"][4] == "4"  # fetched, added, deact.
    assert table["total"][:1] == ["283"]
    assert any(line.startswith("published catalogue ") and "(305 active models)" in line for line in err)
    assert result.out.strip().splitlines() == [
        "ok: 283 added, 20 updated (7 price changes), 4 deactivated, 0 reactivated, 15 skipped; 305 active models"]
    assert catalog_env.sql("SELECT trigger, status FROM catalog_syncs") == [{"trigger": "cli", "status": "ok"}]

    again = await mlp("refresh-models")
    assert again.out.startswith("ok: 0 added, 0 updated (0 price changes), 0 deactivated")


async def test_failing_source_is_reported_and_strict_fails(catalog_env: CatalogEnv, mlp: Cli) -> None:
    catalog_env.fake_fail("gemini", 500)
    result = await mlp("refresh-models")
    assert result.code == 0
    assert any(re.match(r"\s+FAIL\s+gemini\s+HTTP 500 .*keeping its last good data", line)
               for line in progress_lines(result.err)), result.err
    assert result.out.startswith("partial: ") and "failed: gemini" in result.out
    strict = await mlp("refresh-models", "--strict")
    assert strict.code == 1
    assert strict.err.strip().splitlines()[-1].startswith("mlp: error: refresh-models partial: gemini: HTTP 500")


async def test_dry_run_json_and_source_selection(catalog_env: CatalogEnv, mlp: Cli) -> None:
    dry = await mlp("refresh-models", "--dry-run", "--json", "--source", "openrouter", "--show-changes")
    assert dry.code == 0
    doc = json.loads(dry.out)
    assert doc["dry_run"] is True and list(doc["sources"]) == ["openrouter"]
    assert doc["added"] == 283
    assert doc["deactivated"] == 4  # models the (skipped) direct sources list are not judged vanished
    assert any('"change": "added"' in line for line in dry.err.splitlines())
    assert catalog_env.sql("SELECT count(*) AS n FROM model_pricing")[0]["n"] == 26  # nothing written
    assert catalog_env.sql("SELECT count(*) AS n FROM catalog_syncs")[0]["n"] == 0


async def test_every_source_failing_exits_1(catalog_env: CatalogEnv, mlp: Cli) -> None:
    for provider in ("openrouter", "openai", "anthropic", "gemini"):
        catalog_env.fake_fail(provider, 503)
    result = await mlp("refresh-models")
    assert result.code == 1 and result.err.strip().splitlines()[-1].startswith("mlp: error: refresh-models failed")
    assert "Traceback" not in result.err
