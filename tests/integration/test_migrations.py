"""Migrations against a real Postgres: idempotent, safe under concurrency, tamper-evident; the
seeded catalog and the lookup indexes the hot path relies on."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from gateway.migrate import ChecksumMismatch, current_version, default_directory, discover, migrate
from gateway.money import ledger
from tests.support import services

pytestmark = pytest.mark.integration

ALL_VERSIONS = [m.version for m in discover()]


@pytest.fixture
def fresh_db() -> Iterator[str]:
    services.ensure_services()
    url = services.create_database("mlp_mig")
    try:
        yield url
    finally:
        services.drop_database(url)


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(default_directory(), target)
    return target


def _applied(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1")]


def test_migrate_fresh_then_noop(fresh_db: str) -> None:
    lines: list[str] = []
    assert migrate(fresh_db, echo=lines.append) == ALL_VERSIONS
    assert lines == [f"applied {m.path.name}" for m in discover()]
    assert current_version(fresh_db) == ALL_VERSIONS[-1]
    recorded = _applied(fresh_db)
    assert recorded == [(m.version, m.checksum) for m in discover()]

    lines.clear()
    assert migrate(fresh_db, echo=lines.append) == []
    assert lines == []
    assert _applied(fresh_db) == recorded


def test_concurrent_migrate_applies_each_version_once(fresh_db: str) -> None:
    results: list[list[str]] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrate(fresh_db))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(results) == 4
    applied = Counter(v for r in results for v in r)
    assert applied == Counter(ALL_VERSIONS)  # every version applied by exactly one caller
    assert sum(1 for r in results if r) == 1  # the first through the lock did all the work
    with psycopg.connect(fresh_db) as conn:
        rows = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY 1 ORDER BY 1").fetchall()
        assert rows == [(v, 1) for v in ALL_VERSIONS]
        models = conn.execute("SELECT count(*), count(DISTINCT id) FROM model_pricing").fetchone()
        assert models is not None and models[0] == models[1]  # the seed ran once


def test_changed_applied_file_is_refused(fresh_db: str, migrations_copy: Path) -> None:
    assert migrate(fresh_db, migrations_copy) == ALL_VERSIONS
    first = sorted(migrations_copy.glob("*.sql"))[0]
    first.write_text(first.read_text(encoding="utf-8") + "\n-- edited after it was applied\n", encoding="utf-8")
    with pytest.raises(ChecksumMismatch, match=first.name):
        migrate(fresh_db, migrations_copy)
    # the advisory lock was released: a correct run still works afterwards
    first.write_text(first.read_text(encoding="utf-8").replace("\n-- edited after it was applied\n", ""),
                     encoding="utf-8")
    assert migrate(fresh_db, migrations_copy) == []


def test_new_file_is_applied_alone(fresh_db: str, migrations_copy: Path) -> None:
    migrate(fresh_db, migrations_copy)
    (migrations_copy / "9000_extra.sql").write_text(
        "CREATE TABLE mig_extra (id int PRIMARY KEY); INSERT INTO mig_extra VALUES (1), (2);", encoding="utf-8")
    assert migrate(fresh_db, migrations_copy) == ["9000"]
    assert current_version(fresh_db) == "9000"
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM mig_extra").fetchone() == (2,)
        name = conn.execute("SELECT name FROM schema_migrations WHERE version = '9000'").fetchone()
        assert name == ("extra",)


def test_failing_migration_is_rolled_back_and_not_recorded(fresh_db: str, migrations_copy: Path) -> None:
    migrate(fresh_db, migrations_copy)
    (migrations_copy / "9001_broken.sql").write_text(
        "CREATE TABLE mig_half (id int); SELECT * FROM no_such_table;", encoding="utf-8")
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(fresh_db, migrations_copy)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('mig_half')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version = '9001'").fetchone() == (0,)
    assert current_version(fresh_db) == ALL_VERSIONS[-1]
    # fixed file: applies (the lock was released after the failure)
    (migrations_copy / "9001_broken.sql").write_text("CREATE TABLE mig_half (id int);", encoding="utf-8")
    assert migrate(fresh_db, migrations_copy) == ["9001"]


# ----------------------------------------------------------------------------------- seed and indexes
def test_seed_catalog(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, owned_by, provider, prompt_price, completion_price, is_free, context_length, "
            "max_completion_tokens, active, output_modalities FROM model_pricing").fetchall()
    assert len(rows) >= 23
    owners = {r[1] for r in rows}
    assert {"openai", "anthropic", "google", "meta-llama", "mistralai", "deepseek"} <= owners
    free = [r for r in rows if r[0].endswith(":free")]
    assert free, "the seed has free models"
    embedding = [r[0] for r in rows if r[9] == ["embeddings"]]
    assert {"openai/text-embedding-3-small", "google/gemini-embedding-001"} <= set(embedding)
    for model_id, owner, provider, prompt, completion, is_free, ctx, max_out, active, outputs in rows:
        assert model_id.startswith(owner + "/"), model_id
        assert provider in {"openai", "anthropic", "gemini", "openrouter", "compat"}, model_id
        assert isinstance(prompt, Decimal) and isinstance(completion, Decimal)
        assert active
        if outputs == ["embeddings"]:  # billed per input token; no output
            assert ctx > 0 and max_out == 0 and prompt > 0 and completion == 0 and not is_free, model_id
            continue
        assert ctx > 0 and 0 < max_out <= ctx, model_id
        if model_id.endswith(":free"):
            assert is_free and prompt == 0 and completion == 0, model_id
        else:
            assert not is_free, model_id
            assert prompt > 0 and completion > 0, model_id
            assert completion >= prompt, model_id  # output tokens never cheaper than input in this seed


def _index_defs(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s", (table,))]


@pytest.mark.parametrize(("table", "fragment", "unique"), [
    ("users", "(lower(email))", True),
    ("api_keys", "(key_hash)", True),
    ("usage_records", "(user_id, created_at DESC)", False),
    ("usage_records", "(request_id)", True),
    ("ledger_entries", "(user_id", False),
    ("ledger_entries", "(reference)", True),
    ("subscriptions", "(user_id)", False),
    ("reservations", "(created_at)", False),
])
def test_lookup_indexes_exist(database_url: str, table: str, fragment: str, unique: bool) -> None:
    defs = _index_defs(database_url, table)
    matching = [d for d in defs if fragment in d]
    assert matching, f"no index on {table} {fragment}: {defs}"
    if unique:
        assert any(d.startswith("CREATE UNIQUE INDEX") for d in matching), matching


def test_lookups_use_the_indexes(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_seqscan = off")
        uid = "00000000-0000-0000-0000-000000000001"
        plans = {
            "api_keys": "SELECT * FROM api_keys WHERE key_hash = 'x'",
            "users": "SELECT * FROM users WHERE lower(email) = 'a@b.c'",
            "usage": f"SELECT * FROM usage_records WHERE user_id = '{uid}' ORDER BY created_at DESC LIMIT 20",
            "ledger": f"SELECT * FROM ledger_entries WHERE user_id = '{uid}'",
            "subs": f"SELECT * FROM subscriptions WHERE user_id = '{uid}'",
            # migration 0015: the sweeper's orphan scan, a user's reservations, a user's standing ones
            "orphans": ledger.ORPHANS_SQL.replace("%s", "5", 1).replace("%s", "100", 1),
            "reservations": f"SELECT sum(amount) FROM reservations WHERE user_id = '{uid}'",
            "standing": f"SELECT request_id FROM reservations WHERE user_id = '{uid}' AND standing_until IS NOT NULL",
        }
        for name, query in plans.items():
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query))  # type: ignore[arg-type]
            assert "Index" in plan, (name, plan)
