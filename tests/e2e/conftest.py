"""e2e: the local stack exactly as `make dev` runs it (a subprocess on a free port, with a
fresh database), driven through HTTP and the official clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.local.servers import free_port
from tests.support import pgbouncer, services

ROOT = Path(__file__).resolve().parents[2]

# Extra environment for the stack; other test modules may add to it before the fixture starts.
STACK_ENV: dict[str, str] = {
    "STAGE": "local",
    "AUTH_CACHE_TTL_S": "1",
    "CATALOG_TTL_S": "1",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    # the embeddings tests assert Gemini batches billed by Google's count, which the fake answers at
    # once; 5 s instead of 0.2 s once the batch answered, so a loaded machine cannot make it late
    "EMBEDDINGS_COUNT_GRACE_S": "5",
}


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with start_local_stack(tmp_path_factory) as creds:
        yield creds


@contextmanager
def start_local_stack(tmp_path_factory: pytest.TempPathFactory,
                      drop_env: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """The stack in a subprocess with STACK_ENV minus the names starting with ``drop_env``."""
    services.ensure_services()
    database_url = services.create_database("mlp_e2e")
    bouncer = pgbouncer.start() if pgbouncer.via_pgbouncer() else None
    port = free_port()
    creds_file = tmp_path_factory.mktemp("stack") / "dev-credentials.json"
    log_file = creds_file.with_name("stack.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSTASH_", "OPENAI_", "ANTHROPIC_", "GEMINI_",
                                                                    "OPENROUTER_", "COMPAT_", "RATELIMIT_",
                                                                    "STRIPE_"))}
    env.update({k: v for k, v in STACK_ENV.items() if not k.startswith(drop_env or ("\0",))})
    env.update({"DATABASE_URL": database_url, "PORT": str(port), "ADMIN_API_KEY": "e2e-admin-" + os.urandom(8).hex(),
                "PYTHONUNBUFFERED": "1"})
    if bouncer is not None:  # the functions through PgBouncer (transaction mode), migrations direct
        env.update({"DATABASE_URL": bouncer.pooled(database_url), "DATABASE_DIRECT_URL": database_url,
                    "DATABASE_POOLED": "true"})
    with open(log_file, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "infra.local.devserver", "--port", str(port),
                                 "--credentials-file", str(creds_file)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError("local stack exited:\n" + log_file.read_text()[-4000:])
            if creds_file.exists():
                try:
                    creds = json.loads(creds_file.read_text())
                    if httpx.get(creds["base_url"] + "/health", timeout=2).status_code in (200, 503):
                        break
                except (ValueError, httpx.HTTPError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("local stack did not start:\n" + log_file.read_text()[-4000:])
            time.sleep(0.2)
        creds["log_file"] = str(log_file)
        yield creds
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        if bouncer is not None:
            bouncer.stop()
        services.drop_database(database_url)


def create_user(database_url: str, balance: str = "0", tier: str = "pro") -> dict[str, str]:
    """A user with an API key written straight into the stack's database (same rows the
    admin route / CLI write: user, balance, welcome ledger entry, hashed key)."""
    import uuid

    import psycopg

    from gateway.auth import generate_api_key

    secret, key_hash, prefix = generate_api_key()
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        user_id = conn.execute("INSERT INTO users (email, tier) VALUES (%s, %s) RETURNING id",
                               (f"e2e-{uuid.uuid4().hex[:10]}@example.com", tier)).fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO balances (user_id, balance) VALUES (%s, %s)", (user_id, balance))
        if balance != "0":
            conn.execute("INSERT INTO ledger_entries (user_id, amount, kind, reference) VALUES (%s, %s, 'grant', %s)",
                         (user_id, balance, f"e2e:{user_id}"))
        conn.execute("INSERT INTO api_keys (user_id, key_hash, prefix, name) VALUES (%s, %s, %s, 'e2e')",
                     (user_id, key_hash, prefix))
    return {"user_id": str(user_id), "api_key": secret}
