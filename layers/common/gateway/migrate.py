"""Plain ordered SQL migrations, shipped as package data: ``gateway/migrations/NNNN_name.sql``
(``importlib.resources``), so a non-editable ``pip install .`` + ``mlp migrate`` finds them.

``migrate()`` applies every pending file in ONE transaction that first takes a
transaction-scoped advisory lock: concurrent runs (two deploys, many test workers) serialise, and
the lock is safe through a transaction-mode pooler as well as on the direct URL that
``mlp migrate`` uses (``DATABASE_DIRECT_URL``; a session-level lock would leak through a pooler).
Each file is recorded in ``schema_migrations`` with its checksum; re-running is a no-op, an
edited, already-applied file is refused (write a new migration instead), and a failing file rolls
the whole run back. No server-side prepared statements are used (poolers break them).

With ``statement_timeout_ms`` the run also sets the database's defaults for new sessions:
``statement_timeout`` (the functions' bound through a pooler, which refuses it as a startup
option) and ``idle_in_transaction_session_timeout`` (a function killed mid-transaction must not
hold row locks until its TCP connection times out).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

LOCK_ID = 0x4D4C5031  # "MLP1": advisory lock key for migrations
LOCK_TIMEOUT = "10s"   # a migration waiting longer for a table lock fails instead of queueing traffic
IDLE_IN_TRANSACTION_TIMEOUT = "60s"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


class NoMigrations(ValueError):
    """No migration files where they were looked for: a broken install, never "up to date"."""


class ChecksumMismatch(RuntimeError):
    pass


def default_directory() -> Path:
    """``MIGRATIONS_DIR`` if set, else the ``migrations`` folder inside the installed package."""
    env = os.environ.get("MIGRATIONS_DIR")
    if env:
        return Path(env)
    return Path(str(files("gateway").joinpath("migrations")))


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or default_directory()
    out = []
    for path in directory.glob("*.sql"):
        version, _, name = path.stem.partition("_")
        if not (version.isascii() and version.isdigit()):
            raise ValueError(f"migration file {path.name} must start with a number")
        out.append(Migration(version=version, name=name or path.stem, path=path))
    # Numeric order ("2" before "10"); "0001" and "1" are the same version.
    out.sort(key=lambda m: (int(m.version), m.path.name))
    seen: dict[int, str] = {}
    for m in out:
        if int(m.version) in seen:
            raise ValueError(f"duplicate migration version {m.version} in {directory}: "
                             f"{seen[int(m.version)]} and {m.path.name}")
        seen[int(m.version)] = m.path.name
    return out


def _connect(dsn: str, connect_kwargs: dict[str, Any] | None) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, **{"autocommit": True, "prepare_threshold": None, **(connect_kwargs or {})})


def migrate(dsn: str, directory: Path | None = None, *, echo: Callable[[str], Any] | None = None,
            statement_timeout_ms: int | None = None, connect_kwargs: dict[str, Any] | None = None) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call."""
    directory = directory or default_directory()
    migrations = discover(directory)
    if not migrations:
        raise NoMigrations(f"no migrations found in {directory}: the package is incomplete "
                           "(or MIGRATIONS_DIR points to the wrong place)")
    applied_now: list[Migration] = []
    with _connect(dsn, connect_kwargs) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        conn.execute("SELECT set_config('statement_timeout', '0', true), set_config('lock_timeout', %s, true)",
                     (LOCK_TIMEOUT,))
        conn.execute(CREATE_TABLE)
        done = {row[0]: row[1] for row in conn.execute("SELECT version, checksum FROM schema_migrations")}
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise ChecksumMismatch(f"migration {m.path.name} changed after it was applied")
                continue
            conn.execute(m.sql)  # type: ignore[arg-type]
            conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                         (m.version, m.name, m.checksum))
            applied_now.append(m)
        if statement_timeout_ms is not None:
            _set_database_defaults(conn, statement_timeout_ms, echo)
    if echo:
        for m in applied_now:
            echo(f"applied {m.path.name}")
    return [m.version for m in applied_now]


def _set_database_defaults(conn: psycopg.Connection[Any], statement_timeout_ms: int,
                           echo: Callable[[str], Any] | None) -> None:
    wanted = {"statement_timeout": f"{int(statement_timeout_ms)}ms",
              "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT}
    row = conn.execute("SELECT current_database(), (SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d "
                       "ON d.oid = s.setdatabase WHERE d.datname = current_database() AND s.setrole = 0)"
                       ).fetchone()
    assert row is not None
    database, current = row[0], dict(item.split("=", 1) for item in (row[1] or []))
    changes = {k: v for k, v in wanted.items() if current.get(k) != v}
    if not changes:
        return
    statements = [sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(database), sql.Identifier(k),
                                                                   sql.Literal(v)) for k, v in changes.items()]
    try:
        with conn.transaction():  # a savepoint: a refusal must not undo the migrations
            for statement in statements:
                conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        if echo:
            echo("warning: not allowed to set the database defaults; as the database owner run: "
                 + "; ".join(s.as_string(conn) for s in statements))
        return
    if echo:
        echo("database defaults for new sessions: " + ", ".join(f"{k}={v}" for k, v in changes.items()))


def current_version(dsn: str, connect_kwargs: dict[str, Any] | None = None) -> str | None:
    with _connect(dsn, connect_kwargs) as conn:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return row[0] if row else None
