"""Discovery + pricing sync against the fake provider servers (300 OpenRouter models with real
field shapes, OpenAI/Anthropic/Gemini lists) and the real Postgres."""

# ruff: noqa: F811  (test arguments named after the catalog_env fixture imported below)

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest

from gateway.catalog import cache, discovery, registry
from gateway.config import reset_settings
from infra.local import fake_catalog
from tests.support.catalog import CatalogEnv, catalog_env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
D = Decimal

SEEDS_NOT_UPSTREAM = {"meta-llama/llama-4-maverick", "mistralai/mistral-small-3.1-24b-instruct",
                      "mistralai/codestral-2501", "deepseek/deepseek-chat-v3-0324:free"}
# Seeded models the fake OpenRouter does not list but a direct provider does (kept active).
SEEDS_DIRECT_ONLY = {"openai/o4-mini", "google/gemini-2.5-flash-lite"}


def importable_openrouter_ids(models: list[dict[str, Any]] | None = None) -> set[str]:
    models = models if models is not None else (fake_catalog.openrouter_models()
                                                + fake_catalog.openrouter_embedding_models())
    return {m["id"] for m in models if D(m["pricing"]["prompt"]) >= 0 and D(m["pricing"]["completion"]) >= 0}


def rows(env: CatalogEnv, where: str = "true") -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in env.sql(f"SELECT * FROM model_pricing WHERE {where}")}


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without the columns every successful run touches."""
    return {k: v for k, v in row.items() if k not in ("last_seen_at", "seen_in")}


async def test_first_sync_adds_updates_and_deactivates(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    seeds = rows(env)
    assert len(seeds) == 26
    or_ids = importable_openrouter_ids()
    # 300 listed (openrouter/auto has the dynamic price "-1") + 4 embedding models (GET /embeddings/models)
    assert len(or_ids) == 303

    result = await discovery.discover(trigger="test")

    assert result.status == "ok" and result.failed_sources == []
    assert result.added == len(or_ids - set(seeds)) == 283
    assert {c["id"] for c in result.changes if c["change"] == "deactivated"} == SEEDS_NOT_UPSTREAM
    assert result.deactivated == len(SEEDS_NOT_UPSTREAM)
    assert result.sources["openrouter"].fetched == 300 and result.sources["openrouter"].added == 283
    assert result.sources["openai"].fetched == len(fake_catalog.openai_models())

    after = rows(env)
    active = {i for i, r in after.items() if r["active"]}
    assert active == or_ids | SEEDS_DIRECT_ONLY
    assert set(after) == set(seeds) | or_ids, "vanished models are kept (inactive), never deleted"
    for model_id in SEEDS_NOT_UPSTREAM:
        assert not after[model_id]["active"] and after[model_id]["deactivated_reason"] == "vanished"
        assert after[model_id]["deactivated_at"] is not None

    # every price exactly as listed (Decimal, not float)
    index = fake_catalog.openrouter_pricing_index(fake_catalog.openrouter_models()
                                                  + fake_catalog.openrouter_embedding_models())
    for model_id in or_ids:
        assert after[model_id]["prompt_price"] == index[model_id]["prompt"], model_id
        assert after[model_id]["completion_price"] == index[model_id]["completion"], model_id
        assert after[model_id]["request_price"] == index[model_id].get("request", 0), model_id
    assert after["perplexity/sonar"]["request_price"] == D("0.005")
    assert "openrouter/auto" not in after

    # routing: new models go direct when that provider lists them; seeded routing never changes
    assert (after["openai/gpt-3.5-turbo"]["provider"], after["openai/gpt-3.5-turbo"]["upstream_model"]) == (
        "openai", "gpt-3.5-turbo")
    assert after["x-ai/grok-3-mini"]["provider"] == "openrouter"
    assert after["x-ai/grok-3-mini"]["upstream_model"] == "x-ai/grok-3-mini"
    for model_id, seed in seeds.items():
        assert (after[model_id]["provider"], after[model_id]["upstream_model"], after[model_id]["source"]) == (
            seed["provider"], seed["upstream_model"], "seed")
    assert after["openai/o4-mini"]["seen_in"] == ["openai"]
    assert after["openai/gpt-4o"]["seen_in"] == ["openrouter", "openai"]
    new = after["qwen/qwen-2.5-72b-instruct"]
    assert new["source"] == "discovery" and new["architecture"]["tokenizer"] == "Qwen"
    assert new["max_completion_tokens"] == 16384 and new["context_length"] == 32768
    assert after["mistralai/mistral-large"]["max_completion_tokens"] == 128000  # null limit -> the context

    # a seeded price that differs upstream is updated, the old one archived
    flash = env.sql("SELECT * FROM model_price_history WHERE model_id = 'google/gemini-2.5-flash'")
    assert len(flash) == 1 and flash[0]["input_cache_read_price"] == D("0.000000075")
    assert flash[0]["changed_by"] == f"discovery:test:{result.sync_id}"
    assert after["google/gemini-2.5-flash"]["input_cache_read_price"] == D("0.00000003")

    syncs = env.sql("SELECT * FROM catalog_syncs")
    assert [(s["status"], s["added"], s["deactivated"]) for s in syncs] == [("ok", 283, 4)]
    sources = {s["source"]: s for s in env.sql("SELECT * FROM catalog_sources")}
    assert sources["openrouter"]["last_count"] == 300 and sources["openrouter"]["consecutive_failures"] == 0

    # the query path sees the new catalogue at once in this container
    assert (await registry.get_model("x-ai/grok-3-mini")) is not None
    assert (await registry.get_model("mistralai/codestral-2501")) is None

    # idempotent: the second run changes nothing and publishes the same catalogue version
    history_before = env.sql("SELECT count(*) AS n FROM model_price_history")[0]["n"]
    again = await discovery.discover(trigger="test")
    assert (again.added, again.updated, again.price_changed, again.deactivated, again.reactivated) == (0, 0, 0, 0, 0)
    assert again.unchanged == len(active)
    assert again.published_version == result.published_version
    assert env.sql("SELECT count(*) AS n FROM model_price_history")[0]["n"] == history_before
    assert {i: stable(r) for i, r in rows(env).items()} == {i: stable(r) for i, r in after.items()}


async def test_price_change_is_recorded_in_history(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    await discovery.discover(trigger="test")
    before = rows(env, "id = 'openai/gpt-4o'")["openai/gpt-4o"]
    assert before["prompt_price"] == D("0.0000025")

    listed = env.fake_get("openrouter")
    for m in listed:
        if m["id"] == "openai/gpt-4o":
            m["pricing"].update(prompt="0.000003", completion="0.000012")
    env.fake_put("openrouter", listed)
    result = await discovery.discover(trigger="test")

    assert (result.price_changed, result.updated, result.added, result.deactivated) == (1, 1, 0, 0)
    change = next(c for c in result.changes if c["id"] == "openai/gpt-4o")
    assert change["fields"]["prompt_price"] == ["0.0000025", "0.000003"]
    now = rows(env, "id = 'openai/gpt-4o'")["openai/gpt-4o"]
    assert (now["prompt_price"], now["completion_price"]) == (D("0.000003"), D("0.000012"))
    assert now["updated_at"] > before["updated_at"] and now["price_changed_at"] > before["price_changed_at"]

    history = env.sql("SELECT * FROM model_price_history WHERE model_id = 'openai/gpt-4o' ORDER BY id")
    assert len(history) == 1
    old = history[0]
    assert (old["prompt_price"], old["completion_price"]) == (D("0.0000025"), D("0.00001"))
    assert old["valid_from"] == before["price_changed_at"] and old["valid_to"] == now["price_changed_at"]
    # past usage stays explainable: the price in force at any instant
    in_force = env.sql("""SELECT prompt_price FROM model_price_history
                          WHERE model_id = 'openai/gpt-4o' AND valid_from <= %s AND valid_to > %s""",
                       (before["price_changed_at"], before["price_changed_at"]))
    assert in_force == [{"prompt_price": D("0.0000025")}]

    info = await registry.get_model("openai/gpt-4o")
    assert info is not None and info.price.prompt == D("0.000003")  # billing uses the new price
    catalogue, _ = await cache.get_catalogue()
    body = json.loads(catalogue.model_body("openai/gpt-4o", D("0.10")) or b"")
    assert body["pricing"]["prompt"] == "0.0000033"


async def test_vanished_models_deactivate_and_come_back(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    await discovery.discover(trigger="test")
    listed = env.fake_get("openrouter")
    dropped = [m for m in listed if m["id"].startswith(("acme-ai/", "nimbus/"))][:40]
    assert len(dropped) == 40
    env.fake_put("openrouter", [m for m in listed if m not in dropped])
    dropped_ids = {m["id"] for m in dropped}

    result = await discovery.discover(trigger="test")
    assert result.deactivated == 40 and result.added == 0 and result.status == "ok"
    after = rows(env)
    assert all(i in after and not after[i]["active"] for i in dropped_ids), "inactive, not deleted"
    catalogue, _ = await cache.get_catalogue()
    assert not dropped_ids & set(catalogue.by_id)
    assert (await registry.get_model(next(iter(dropped_ids)))) is None

    env.fake_put("openrouter", listed)
    back = await discovery.discover(trigger="test")
    assert back.reactivated == 40 and back.deactivated == 0 and back.added == 0
    again = rows(env)
    assert all(again[i]["active"] and again[i]["deactivated_reason"] is None for i in dropped_ids)


async def test_failing_source_keeps_the_last_good_catalogue(catalog_env: CatalogEnv,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    env = catalog_env
    first = await discovery.discover(trigger="test")
    good = {i: stable(r) for i, r in rows(env).items()}
    listed = env.fake_get("openrouter")
    env.fake_put("openrouter", [m for m in listed if m["id"] != "x-ai/grok-3-mini"])  # would deactivate
    env.fake_fail("openrouter", 500)
    capsys.readouterr()

    result = await discovery.discover(trigger="test", emit_metrics=True)

    assert result.status == "partial" and result.failed_sources == ["openrouter"]
    assert result.sources["openrouter"].error == "HTTP 500"
    assert (result.added, result.updated, result.deactivated) == (0, 0, 0)
    assert {i: stable(r) for i, r in rows(env).items()} == good
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "CatalogSourceFailure" in line]
    assert any((doc.get("source") == "openrouter" and doc.get("CatalogSourceFailure") == [1.0]) or
               doc.get("CatalogSourceFailure") == 1.0 for doc in emf), emf
    src = env.sql("SELECT * FROM catalog_sources WHERE source = 'openrouter'")[0]
    assert src["consecutive_failures"] == 1 and src["last_error"] == "HTTP 500" and src["last_count"] == 300
    catalogue, _ = await cache.get_catalogue()
    assert catalogue.version == first.published_version and len(catalogue) == 305

    env.fake_recover("openrouter")
    recovered = await discovery.discover(trigger="test")
    assert recovered.status == "ok" and recovered.deactivated == 1
    assert env.sql("SELECT consecutive_failures FROM catalog_sources WHERE source = 'openrouter'")[0][
        "consecutive_failures"] == 0


async def test_seeded_models_survive_when_every_source_fails(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    seeds = {i: stable(r) for i, r in rows(env).items()}
    for provider in ("openrouter", "openai", "anthropic", "gemini"):
        env.fake_fail(provider, 503)
    result = await discovery.discover(trigger="test")
    assert result.status == "failed" and sorted(result.failed_sources) == ["anthropic", "gemini", "openai",
                                                                           "openrouter"]
    assert {i: stable(r) for i, r in rows(env).items()} == seeds
    assert all(r["active"] for r in seeds.values())
    assert env.sql("SELECT status FROM catalog_syncs") == [{"status": "failed"}]
    catalogue, _ = await cache.get_catalogue()
    assert len(catalogue) == 26  # the seeded catalogue is still served
    assert (await registry.get_model("openai/gpt-4o")) is not None


async def test_truncated_list_counts_as_a_failure_unless_forced(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    await discovery.discover(trigger="test")
    env.fake_put("openrouter", env.fake_get("openrouter")[:20])
    guarded = await discovery.discover(trigger="test")
    assert guarded.status == "partial" and "shrank from 300 to 20" in (guarded.sources["openrouter"].error or "")
    assert guarded.deactivated == 0
    forced = await discovery.discover(trigger="test", force=True)
    assert forced.status == "ok" and forced.deactivated == 301 - 20 - len(SEEDS_DIRECT_ONLY)


async def test_discount_and_context_tiers_are_billed_not_undercharged(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    listed = env.fake_get("openrouter")
    for m in listed:
        if m["id"] == "openai/gpt-4o":
            m["pricing"]["discount"] = 0.2  # a JSON number, as OpenRouter sends it
        if m["id"] == "google/gemini-2.5-pro":
            m["pricing"]["overrides"] = [{"min_prompt_tokens": 200000, "prompt": "0.0000025",
                                          "completion": "0.000015"}]
    env.fake_put("openrouter", listed)
    await discovery.discover(trigger="test")

    gpt = rows(env, "id = 'openai/gpt-4o'")["openai/gpt-4o"]
    assert gpt["discount"] == D("0.2")
    assert (gpt["prompt_price"], gpt["completion_price"]) == (D("0.000002"), D("0.000008"))
    assert gpt["list_pricing"]["prompt"] == "0.0000025" and gpt["list_pricing"]["discount"] == "0.2"
    pro = rows(env, "id = 'google/gemini-2.5-pro'")["google/gemini-2.5-pro"]
    assert (pro["prompt_price"], pro["completion_price"]) == (D("0.0000025"), D("0.000015"))
    assert pro["price_tiers"] == [{"min_prompt_tokens": 200000, "prompt": "0.0000025", "completion": "0.000015"}]

    info = await registry.get_model("google/gemini-2.5-pro")
    assert info is not None and info.price.prompt == D("0.0000025")
    catalogue, _ = await cache.get_catalogue()
    shown = json.loads(catalogue.model_body("google/gemini-2.5-pro", D("0.10"), admin=True) or b"")
    assert shown["pricing"]["prompt"] == "0.00000275"
    assert shown["pricing_tiers"] == [{"min_prompt_tokens": 200000, "prompt": "0.00000275",
                                       "completion": "0.0000165"}]
    assert shown["provider_pricing"]["prompt"] == "0.0000025"


async def test_without_an_openrouter_key_only_directly_routable_models_are_added(
        catalog_env: CatalogEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = catalog_env
    monkeypatch.setenv("OPENROUTER_API_KEY", "")
    reset_settings()
    result = await discovery.discover(trigger="test")
    added = env.sql("SELECT id, provider FROM model_pricing WHERE source = 'discovery'")
    assert added == [{"id": "openai/gpt-3.5-turbo", "provider": "openai"}] and result.added == 1
    assert result.sources["openrouter"].skipped >= 278
    assert env.fake_requests("openrouter")[-1]["key"] is None  # the list is public; no key to send


async def test_direct_providers_are_asked_with_their_keys(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    await discovery.discover(trigger="test")
    anthropic = env.fake_requests("anthropic")[-1]
    assert anthropic["key"] == "sk-ant-fake" and anthropic["headers"].get("anthropic-version") == "2023-06-01"
    assert anthropic["status"] == 200
    assert env.fake_requests("gemini")[-1]["key"] == "fake-gemini-key"
    assert env.fake_requests("openai")[-1]["key"] == "sk-fake-openai"
    assert env.fake_requests("openrouter")[-1]["key"] == "sk-or-fake"


async def test_paginated_model_lists_are_read_to_the_last_page(catalog_env: CatalogEnv) -> None:
    """Anthropic (``after_id``) and Gemini (``pageToken``) lists longer than a page (1,000) are read
    whole, each page asking for the one after the last; every entry counts as listed, kept or not."""
    env = catalog_env
    n = 2345
    env.fake_put("anthropic", [f"claude-test-{i:04d}" for i in range(n)])
    embedding = {"name": "models/text-embedding-test", "supportedGenerationMethods": ["embedContent"]}
    env.fake_put("gemini", [f"gemini-test-{i:04d}" for i in range(n - 1)] + [embedding])

    sources = await discovery.fetch_sources(["anthropic", "gemini"])

    anthropic, gemini = sources["anthropic"], sources["gemini"]
    assert anthropic.ok and anthropic.count == n
    assert [m.upstream for m in anthropic.direct] == [f"claude-test-{i:04d}" for i in range(n)]
    assert gemini.ok and gemini.count == n  # the embedding model is listed, not kept
    assert [m.upstream for m in gemini.direct] == [f"gemini-test-{i:04d}" for i in range(n - 1)]
    pages = [r["query"] for r in env.fake_requests("anthropic") if r["path"].endswith("/models")]
    assert pages == [{"limit": "1000"}, {"limit": "1000", "after_id": "claude-test-0999"},
                     {"limit": "1000", "after_id": "claude-test-1999"}]
    pages = [r["query"] for r in env.fake_requests("gemini") if r["path"].endswith("/models")]
    assert pages == [{"pageSize": "1000"}, {"pageSize": "1000", "pageToken": "fake-page-1000"},
                     {"pageSize": "1000", "pageToken": "fake-page-2000"}]


async def test_concurrent_runs_serialise(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    a, b = await asyncio.gather(discovery.discover(trigger="test"), discovery.discover(trigger="test"))
    assert a.status == b.status == "ok"
    assert a.added + b.added == 283 and a.deactivated + b.deactivated == 4
    assert env.sql("SELECT count(*) AS n FROM model_pricing WHERE active")[0]["n"] == 305


async def test_dry_run_writes_nothing(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    before = rows(env)
    result = await discovery.discover(trigger="test", dry_run=True)
    assert result.dry_run and result.added == 283 and result.deactivated == 4
    assert rows(env) == before
    assert env.sql("SELECT count(*) AS n FROM catalog_syncs")[0]["n"] == 0


async def test_openrouter_embedding_models_are_discovered_and_repriced(catalog_env: CatalogEnv) -> None:
    """OpenRouter lists its embedding models apart (GET /embeddings/models): discovery imports
    them as embedding models (per-input-token price, no output) and keeps seeded ones priced."""
    env = catalog_env
    env.sql("""INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
                   max_completion_tokens, prompt_price, completion_price, output_modalities)
               VALUES ('openai/text-embedding-3-large', 'seeded', 'openai', 'text-embedding-3-large', 'openai',
                       8192, 0, 0.0000001, 0, ARRAY['embeddings'])""")
    result = await discovery.discover(trigger="test")
    assert result.status == "ok"
    after = rows(env, "id = ANY(ARRAY['openai/text-embedding-3-small', 'openai/text-embedding-3-large', "
                      "'google/gemini-embedding-001'])")
    small = after["openai/text-embedding-3-small"]
    assert small["active"] and small["output_modalities"] == ["embeddings"] and small["max_completion_tokens"] == 0
    assert small["prompt_price"] == D("0.00000002") and small["completion_price"] == 0
    assert small["context_length"] == 8192 and small["source"] == "discovery"
    large = after["openai/text-embedding-3-large"]  # the seeded row: repriced, its direct route kept
    assert large["active"] and large["prompt_price"] == D("0.00000013") and large["provider"] == "openai"
    assert after["google/gemini-embedding-001"]["context_length"] == 2048
    registry.invalidate()
    embedding = await registry.embedding_models()
    assert set(fake_catalog.OPENROUTER_EMBEDDING_IDS) <= set(embedding)
    assert not set(fake_catalog.OPENROUTER_EMBEDDING_IDS) & set(await registry.models())
