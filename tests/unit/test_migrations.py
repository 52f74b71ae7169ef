"""Migration files: the code's expected schema version follows the files; discovery order and checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import db
from gateway.migrate import Migration, default_directory, discover

REPO = Path(__file__).resolve().parents[2]


def test_default_directory_is_the_package_data() -> None:
    assert default_directory() == REPO / "layers" / "common" / "gateway" / "migrations"
    assert (default_directory() / "0001_init.sql").is_file()


def test_no_migration_is_left_in_the_old_folder() -> None:
    # Migrations ship inside the gateway package (pip install . + mlp migrate must find them).
    # A file added to infra/migrations/ would never be applied: move it.
    stray = sorted(p.name for p in (REPO / "infra" / "migrations").glob("*.sql"))
    assert not stray, f"move {stray} to layers/common/gateway/migrations/"


def test_migrations_are_package_data() -> None:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    assert "migrations/*.sql" in data["gateway"]


def test_expected_schema_version_is_the_newest_file() -> None:
    migrations = discover()
    assert migrations, "no migrations found"
    assert db.EXPECTED_SCHEMA_VERSION == migrations[-1].version


def test_repo_migrations_follow_the_naming_convention() -> None:
    # /health compares versions as text (max(version)), so they must all be 4-digit, zero-padded.
    migrations = discover()
    for m in migrations:
        assert len(m.version) == 4 and m.version.isdigit(), m.path.name
        assert m.name and m.name != m.path.stem, m.path.name
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    # Numbers are handed out per branch (several are in flight at once), so a branch may have a gap
    # until the others merge; duplicates and a missing start never pass.
    assert int(migrations[0].version) == 1 and len({m.version for m in migrations}) == len(migrations)


def _write(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_text(f"-- {name}\nSELECT 1;\n", encoding="utf-8")


def test_discover_orders_by_version(tmp_path: Path) -> None:
    _write(tmp_path, "0010_ten.sql", "0002_two.sql", "0001_one.sql", "0003_three.sql")
    (tmp_path / "README.md").write_text("not a migration")
    (tmp_path / "0004_draft.sql.bak").write_text("not a migration")
    found = discover(tmp_path)
    assert [m.version for m in found] == ["0001", "0002", "0003", "0010"]
    assert [m.name for m in found] == ["one", "two", "three", "ten"]
    assert all(isinstance(m, Migration) and m.path.parent == tmp_path for m in found)


def test_discover_orders_numerically_not_lexically(tmp_path: Path) -> None:
    _write(tmp_path, "10_ten.sql", "2_two.sql", "1_one.sql")
    assert [m.version for m in discover(tmp_path)] == ["1", "2", "10"]


def test_discover_rejects_duplicate_versions(tmp_path: Path) -> None:
    _write(tmp_path, "0001_init.sql", "0002_a.sql", "0002_b.sql")
    with pytest.raises(ValueError, match="duplicate migration version"):
        discover(tmp_path)


def test_discover_rejects_numerically_equal_versions(tmp_path: Path) -> None:
    _write(tmp_path, "0001_init.sql", "1_again.sql")
    with pytest.raises(ValueError, match="duplicate migration version"):
        discover(tmp_path)


def test_discover_rejects_unnumbered_files(tmp_path: Path) -> None:
    _write(tmp_path, "0001_init.sql", "add_things.sql")
    with pytest.raises(ValueError, match="must start with a number"):
        discover(tmp_path)


def test_discover_empty_directory(tmp_path: Path) -> None:
    assert discover(tmp_path) == []


def test_name_defaults_to_the_stem(tmp_path: Path) -> None:
    _write(tmp_path, "0007.sql")
    (m,) = discover(tmp_path)
    assert (m.version, m.name) == ("0007", "0007")


def test_checksum_follows_the_content(tmp_path: Path) -> None:
    _write(tmp_path, "0001_init.sql")
    (m,) = discover(tmp_path)
    before = m.checksum
    assert len(before) == 64
    assert m.checksum == before
    m.path.write_text("SELECT 2;\n", encoding="utf-8")
    assert m.checksum != before
    assert m.sql == "SELECT 2;\n"


def test_migrations_dir_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "0001_only.sql")
    monkeypatch.setenv("MIGRATIONS_DIR", str(tmp_path))
    assert default_directory() == tmp_path
    assert [m.name for m in discover()] == ["only"]
