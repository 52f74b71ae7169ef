"""Real services for integration and e2e tests: a throw-away Postgres database per run, the
Upstash REST bridge on the real Redis, and the fake provider servers."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

PG_SERVER = os.environ.get("TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

RESET_TABLES = ("usage_records", "ledger_entries", "reservations", "balances", "api_keys", "subscriptions",
                "stripe_events", "provider_keys", "users")


def _admin_dsn() -> str:
    return f"{PG_SERVER}/postgres"


def ensure_services() -> None:
    """Start PostgreSQL with the documented command if it is not running, and wait until it accepts."""
    try:
        psycopg.connect(_admin_dsn(), connect_timeout=3).close()
        return
    except psycopg.OperationalError:
        subprocess.run("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                       shell=True, check=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(_admin_dsn(), connect_timeout=3).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def create_database(prefix: str = "mlp_test") -> str:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{PG_SERVER}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def reset_tables(url: str, extra: tuple[str, ...] = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(RESET_TABLES + extra) + " RESTART IDENTITY CASCADE")


_router: Any = None


def kill_our_backends(url: str) -> int:
    """Terminate every server connection our pool holds (what a long freeze or a failover does)."""
    from gateway.config import get_settings

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND pid <> pg_backend_pid()", (get_settings().service_name[:60],)).fetchall()
    return len(rows)


def template_router() -> Any:
    """Every function of template.yaml mounted at its routes, as the local stack does
    (infra.local.devserver.build_router); built once per session, so every test drives the same
    function modules."""
    global _router
    if _router is None:
        from infra.local.devserver import build_router

        _router = build_router()
    return _router
