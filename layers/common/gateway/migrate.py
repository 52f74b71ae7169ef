"""Plain ordered SQL migrations (``infra/migrations/NNNN_name.sql``).

``migrate()`` takes a Postgres advisory lock, so concurrent runs (two deploys, many test
workers) serialise; each file is applied in its own transaction and recorded in
``schema_migrations`` with its checksum. Re-running is a no-op; an edited, already-applied file
is refused (write a new migration instead).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import psycopg

LOCK_ID = 0x4D4C5031  # "MLP1": advisory lock key for migrations

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


def default_directory() -> Path:
    env = os.environ.get("MIGRATIONS_DIR")
    if env:
        return Path(env)
    # layers/common/gateway/migrate.py -> repo root
    return Path(__file__).resolve().parents[3] / "infra" / "migrations"


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


class ChecksumMismatch(RuntimeError):
    pass


def migrate(dsn: str, directory: Path | None = None, *, echo=None) -> list[str]:  # type: ignore[no-untyped-def]
    """Apply pending migrations; returns the versions applied by this call."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
        try:
            conn.execute(CREATE_TABLE)
            done = {row[0]: row[1] for row in conn.execute("SELECT version, checksum FROM schema_migrations")}
            for m in migrations:
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise ChecksumMismatch(f"migration {m.path.name} changed after it was applied")
                    continue
                with conn.transaction():
                    conn.execute(m.sql)  # type: ignore[arg-type]
                    conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                                 (m.version, m.name, m.checksum))
                applied_now.append(m.version)
                if echo:
                    echo(f"applied {m.path.name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))
    return applied_now


def current_version(dsn: str) -> str | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return row[0] if row else None
