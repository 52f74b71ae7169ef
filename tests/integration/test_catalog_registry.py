"""The query path's copy of the active models (gateway/catalog/registry.py) and ``catalog_version``
(migration 0017): an expired copy is kept, not re-read, while the version is the one its rows were
read with, and every write of what the copy holds changes the version."""

# ruff: noqa: F811  (test arguments named after the catalog_env fixture imported below)

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest

from gateway.catalog import registry
from tests.support.catalog import CatalogEnv, catalog_env  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration

MODEL = "openai/gpt-4o"


def _version(env: CatalogEnv) -> int:
    (row,) = env.sql("SELECT version FROM catalog_version")
    return int(row["version"])


def _selected_columns() -> set[str]:
    """The model_pricing columns registry.SELECT_ACTIVE reads or filters on."""
    match = re.search(r"AS catalog_version,(.*)FROM model_pricing WHERE (\w+)", registry.SELECT_ACTIVE, re.S)
    assert match is not None, registry.SELECT_ACTIVE
    return {c.strip() for c in match[1].split(",")} | {match[2]}


def test_every_write_of_a_column_the_copy_reads_bumps_the_version(catalog_env: CatalogEnv) -> None:
    env = catalog_env
    columns = [r["column_name"] for r in env.sql(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'model_pricing' "
        "AND table_schema = current_schema() ORDER BY ordinal_position")]
    bumping = set()
    for column in columns:
        before = _version(env)
        # a statement that changes no row still counts: it names the column
        env.sql(f"UPDATE model_pricing SET {column} = {column} WHERE false")
        if _version(env) != before:
            bumping.add(column)
    assert bumping == _selected_columns(), "the trigger's columns are exactly the ones SELECT_ACTIVE reads"
    assert {"last_seen_at", "seen_in", "updated_at"}.isdisjoint(bumping), "discovery's touch is no change"

    for statement in ("INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length, "
                      "max_completion_tokens, prompt_price, completion_price) "
                      "VALUES ('x/new', 'X', 'openrouter', 'x/new', 'x', 1000, 100, 0, 0)",
                      "DELETE FROM model_pricing WHERE id = 'x/new'",
                      "TRUNCATE model_pricing"):
        before = _version(env)
        env.sql(statement)
        assert _version(env) == before + 1, statement


async def test_an_expired_copy_is_kept_while_the_version_is_unchanged(catalog_env: CatalogEnv, setting: Any) -> None:
    setting(catalog_ttl_s=0)  # every use finds the copy expired
    first = await registry.models()
    assert first[MODEL].price.prompt == Decimal("0.0000025")
    catalog_env.sql("UPDATE model_pricing SET last_seen_at = now(), seen_in = '{openai}'")
    again = await registry.models()
    assert again is first, "checked, not re-read: the same models"

    catalog_env.sql("UPDATE model_pricing SET prompt_price = 0.000005 WHERE id = %s", (MODEL,))
    changed = await registry.models()
    assert changed is not first and changed[MODEL].price.prompt == Decimal("0.000005")
    assert await registry.models() is changed


async def test_a_copy_within_its_ttl_is_trusted_without_a_statement(catalog_env: CatalogEnv, setting: Any) -> None:
    setting(catalog_ttl_s=3600)
    first = await registry.models()
    catalog_env.sql("UPDATE model_pricing SET prompt_price = 0.000005 WHERE id = %s", (MODEL,))
    assert (await registry.models())[MODEL].price.prompt == Decimal("0.0000025"), "trusted for CATALOG_TTL_S"
    registry.invalidate()
    assert (await registry.models())[MODEL].price.prompt == Decimal("0.000005"), "invalidate() re-reads"
    assert first[MODEL].price.prompt == Decimal("0.0000025")


async def test_a_change_not_yet_committed_is_loaded_once_it_is(catalog_env: CatalogEnv, setting: Any,
                                                                conns: Any) -> None:
    """The copy is labelled with the version read in its rows' snapshot: a writer's open
    transaction (its version bump row-locked) neither blocks the reader nor leaves it a version
    newer than the rows it read."""
    setting(catalog_ttl_s=0)
    registry.invalidate()
    writer = await conns()
    await writer.execute("UPDATE model_pricing SET completion_price = 0.00002 WHERE id = %s", (MODEL,))
    before = await registry.models()  # a full read while the change is open
    assert before[MODEL].price.completion == Decimal("0.00001")
    assert await registry.models() is before
    await writer.commit()
    after = await registry.models()
    assert after is not before and after[MODEL].price.completion == Decimal("0.00002")


async def test_deactivating_a_model_drops_it_from_an_expired_copy(catalog_env: CatalogEnv, setting: Any) -> None:
    setting(catalog_ttl_s=0)
    assert MODEL in await registry.models()
    catalog_env.sql("UPDATE model_pricing SET active = false WHERE id = %s", (MODEL,))
    assert MODEL not in await registry.models()
    assert await registry.get_model(MODEL) is None
