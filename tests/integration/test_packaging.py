"""The operator's install: the project built as a wheel and installed NON-editably into a fresh
venv (its dependencies are borrowed from the dev venv so the test needs no network), run from
outside the checkout: `mlp migrate` finds the migrations shipped in the package and migrates a
fresh database, a second run changes nothing, and with no migrations it fails loudly."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.migrate import discover
from tests.support import services

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (no editable finder, no repo on sys.path)."""
    work = tmp_path_factory.mktemp("pkg")
    dist = work / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(REPO)], capture_output=True, text=True, timeout=300, check=False,
                           cwd=work)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("multi_llm_gateway-*.whl")
    target = work / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(target / "bin" / "python"), "-c", purelib], capture_output=True, text=True,
                               check=True).stdout.strip())
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
                              "--no-deps", "--no-index", "-q", str(wheel)], capture_output=True, text=True,
                             timeout=300, check=False, cwd=work)
    assert install.returncode == 0, install.stdout + install.stderr
    # Dependencies: the dev venv's site-packages AFTER the fresh one (a plain path: its .pth files,
    # among them the editable install's finder, are not processed).
    (site / "zz_dev_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return target


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "MIGRATIONS_", "PYTHON"))}
    env.update({"STAGE": "test", **extra})
    return env


@pytest.fixture
def fresh_db() -> Iterator[str]:
    services.ensure_services()
    url = services.create_database("mlp_pkg")
    try:
        yield url
    finally:
        services.drop_database(url)


def test_the_wheel_ships_the_migrations(installed: Path, tmp_path: Path) -> None:
    probe = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import gateway, gateway.migrate as m; print(gateway.__file__); "
                            "print(' '.join(x.path.name for x in m.discover()))"],
                           capture_output=True, text=True, check=False, cwd=tmp_path, env=_env())
    assert probe.returncode == 0, probe.stderr
    location, names = probe.stdout.strip().splitlines()
    assert location.startswith(str(installed)), location  # the installed copy, not the checkout
    assert names.split() == [m.path.name for m in discover()]


def test_non_editable_install_migrates_a_fresh_database(installed: Path, fresh_db: str, tmp_path: Path) -> None:
    mlp = str(installed / "bin" / "mlp")
    first = subprocess.run([mlp, "migrate"], capture_output=True, text=True, check=False, cwd=tmp_path,
                           env=_env(DATABASE_DIRECT_URL=fresh_db), timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [m.version for m in discover()]
    assert "database defaults for new sessions: statement_timeout=5000ms" in first.stderr
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(discover()),)
        assert conn.execute("SELECT to_regclass('ledger_entries') IS NOT NULL").fetchone() == (True,)
    second = subprocess.run([mlp, "migrate"], capture_output=True, text=True, check=False, cwd=tmp_path,
                            env=_env(DATABASE_DIRECT_URL=fresh_db), timeout=120)
    assert second.returncode == 0 and second.stdout == "" and "up to date" in second.stderr


def test_migrate_fails_loudly_without_migrations(installed: Path, fresh_db: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([str(installed / "bin" / "mlp"), "migrate"], capture_output=True, text=True, check=False,
                       cwd=tmp_path, env=_env(DATABASE_URL=fresh_db, MIGRATIONS_DIR=str(empty)), timeout=120)
    assert r.returncode == 1
    assert r.stderr.startswith("mlp: error: no migrations found in ") and "Traceback" not in r.stderr
    with psycopg.connect(fresh_db) as conn:  # nothing was created
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
