"""The ``mlp`` ops CLI against a real Postgres: in-process through ``main([...])`` (each command runs
its own event loop, like the console script) and once through the installed entry point."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from gateway import auth, db
from gateway.cli import main
from gateway.config import reset_settings
from gateway.errors import Unauthorized
from gateway.migrate import discover
from gateway.money import ledger
from infra.local.servers import free_port
from tests.support import services

pytestmark = pytest.mark.integration

MLP = Path(sys.executable).parent / "mlp"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def line(self) -> str:
        return self.out.strip()


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
async def cli(database_url: str, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Cli]:
    # The CLI runs asyncio.run() in a worker thread (a loop of its own, as from a shell); the
    # session loop's pool is closed first so it is not orphaned when the CLI binds its own.
    await db.close_pool()

    def call(argv: list[str]) -> int:
        try:
            return main(argv)
        except SystemExit as exc:  # argparse: --help / usage errors
            return exc.code if isinstance(exc.code, int) else 1

    async def run(*argv: str) -> Result:
        await db.close_pool()  # the test's own queries may have opened one in this loop meanwhile
        capsys.readouterr()
        code = await asyncio.to_thread(call, list(argv))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    yield run
    await db.close_pool()


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mlp: error: "), lines
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.err + result.out


# ----------------------------------------------------------------------------------- help / usage
async def test_help_lists_the_commands(cli: Cli) -> None:
    r = await cli("--help")
    assert r.code == 0
    for command in ("migrate", "create-user", "create-key", "grant-credits", "revoke-key", "doctor", "check"):
        assert command in r.out


async def test_usage_errors_exit_2(cli: Cli) -> None:
    assert (await cli()).code == 2
    assert (await cli("no-such-command")).code == 2
    assert (await cli("create-key", "--user-id", "not-a-uuid")).code == 2
    r = await cli("grant-credits", "--user-id", str(uuid.uuid4()), "--amount", "lots", "--reason", "x")
    assert r.code == 2 and "not a valid amount" in r.err
    assert (await cli("doctor", "--release-orphans-older-than", "0")).code == 2


# ----------------------------------------------------------------------------------- migrate
async def test_migrate(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    r = await cli("migrate")
    assert r.code == 0 and r.out == ""
    assert "up to date" in r.err

    fresh = services.create_database("mlp_cli")
    try:
        monkeypatch.setenv("DATABASE_URL", fresh)
        reset_settings()
        first = await cli("migrate")
        assert first.code == 0, first
        assert first.line.split() == [m.version for m in discover()]
        assert f"applied {discover()[0].path.name}" in first.err
        second = await cli("migrate")
        assert second.code == 0 and second.out == "" and "up to date" in second.err
    finally:
        monkeypatch.undo()
        reset_settings()
        services.drop_database(fresh)


# ----------------------------------------------------------------------------------- users / keys
async def test_create_user_key_and_revoke(cli: Cli) -> None:
    r = await cli("create-user", "--email", "ops@example.com", "--tier", "pro", "--credit", "12.5")
    assert r.code == 0, r
    assert UUID_RE.match(r.line)
    user_id = uuid.UUID(r.line)
    state = await ledger.get_balance(user_id)
    assert state is not None and state["balance"] == Decimal("12.5")
    row = await db.fetchone("SELECT email, tier FROM users WHERE id = %s", (user_id,))
    assert row == {"email": "ops@example.com", "tier": "pro"}
    assert "$12.50" in r.err

    k = await cli("create-key", "--user-id", str(user_id), "--name", "ci")
    assert k.code == 0, k
    secret = k.line
    assert re.fullmatch(r"sk-mlp-[A-Za-z0-9_-]{43}", secret)
    assert "shown once" in k.err
    principal = await auth.authenticate_key(secret)
    assert principal.user_id == user_id
    assert await db.fetchone("SELECT name FROM api_keys WHERE id = %s", (principal.key_id,)) == {"name": "ci"}

    rv = await cli("revoke-key", "--key-id", str(principal.key_id))
    assert rv.code == 0 and str(principal.key_id) in rv.out
    auth.forget_key()  # the CLI ran in another "process" as far as this cache is concerned
    with pytest.raises(Unauthorized):
        await auth.authenticate_key(secret)
    again = await cli("revoke-key", "--key-id", str(principal.key_id))
    assert_one_line_error(again, "no active key")


async def test_create_user_defaults_and_alias(cli: Cli) -> None:
    r = await cli("create-user", "--email", "hobbyist@example.com", "--tier", "hobby")
    assert r.code == 0
    user_id = uuid.UUID(r.line)
    assert await db.fetchone("SELECT tier FROM users WHERE id = %s", (user_id,)) == {"tier": "free"}
    state = await ledger.get_balance(user_id)
    assert state is not None and state["balance"] == 0
    assert await db.fetchone("SELECT count(*) AS n FROM ledger_entries WHERE user_id = %s", (user_id,)) == {"n": 0}


async def test_create_user_errors(cli: Cli) -> None:
    assert (await cli("create-user", "--email", "dup@example.com")).code == 0
    assert_one_line_error(await cli("create-user", "--email", "DUP@example.com"), "already exists")
    assert_one_line_error(await cli("create-user", "--email", "x@example.com", "--tier", "platinum"),
                          "unknown tier")
    assert_one_line_error(await cli("create-user", "--email", "y@example.com", "--credit", "-1"), "negative")
    assert_one_line_error(await cli("create-user", "--email", "nope"), "invalid email")
    count = await db.fetchone("SELECT count(*) AS n FROM users")
    assert count == {"n": 1}


async def test_create_key_for_unknown_user(cli: Cli) -> None:
    assert_one_line_error(await cli("create-key", "--user-id", str(uuid.uuid4())), "user not found")


# ----------------------------------------------------------------------------------- credit
async def test_grant_credits(cli: Cli, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="1")
    uid = str(user.user_id)

    r = await cli("grant-credits", "--user-id", uid, "--amount", "5", "--reason", "support ticket 42")
    assert r.code == 0, r
    assert "granted $5.00" in r.out and "balance $6.00" in r.out
    ref = re.search(r"reference (admin:[0-9a-f-]{36})", r.out)
    assert ref is not None
    entry = await db.fetchone("SELECT amount, kind, description FROM ledger_entries WHERE reference = %s",
                              (ref.group(1),))
    assert entry == {"amount": Decimal("5"), "kind": "grant", "description": "support ticket 42"}

    # without --reference every run is a new grant
    assert (await cli("grant-credits", "--user-id", uid, "--amount", "5", "--reason", "again")).code == 0
    assert (await ledger.get_balance(user.user_id))["balance"] == Decimal("11")  # type: ignore[index]

    # with --reference: idempotent
    args = ("grant-credits", "--user-id", uid, "--amount", "2.5", "--reason", "promo", "--reference", "promo:1")
    assert (await cli(*args)).code == 0
    replay = await cli(*args)
    assert replay.code == 0 and "already applied" in replay.out
    assert (await ledger.get_balance(user.user_id))["balance"] == Decimal("13.5")  # type: ignore[index]

    # negative = deduction
    d = await cli("grant-credits", "--user-id", uid, "--amount", "-3.5", "--reason", "chargeback")
    assert d.code == 0 and "deducted $3.50" in d.out
    assert (await ledger.get_balance(user.user_id))["balance"] == Decimal("10")  # type: ignore[index]
    kinds = await db.fetchall("SELECT kind FROM ledger_entries WHERE user_id = %s AND amount < 0", (user.user_id,))
    assert kinds == [{"kind": "adjustment"}]

    # refused deductions and amounts
    assert_one_line_error(await cli("grant-credits", "--user-id", uid, "--amount=-50", "--reason", "x"),
                          "exceeds the available balance")
    assert_one_line_error(await cli("grant-credits", "--user-id", uid, "--amount", "0.000000001",
                                    "--reason", "x"), "8 decimal places")
    assert_one_line_error(await cli("grant-credits", "--user-id", uid, "--amount", "0", "--reason", "x"),
                          "must not be zero")
    assert_one_line_error(await cli("grant-credits", "--user-id", str(uuid.uuid4()), "--amount", "1",
                                    "--reason", "x"), "user not found")
    forced = await cli("grant-credits", "--user-id", uid, "--amount", "-50", "--reason", "refund",
                       "--allow-negative")
    assert forced.code == 0 and "available -$40.00" in forced.out
    assert await ledger.invariant_violations() == []


# ----------------------------------------------------------------------------------- doctor
async def test_doctor_clean(cli: Cli, make_user) -> None:  # type: ignore[no-untyped-def]
    await make_user()
    r = await cli("doctor")
    assert r.code == 0, r
    assert "FAIL" not in r.out
    assert "balances match the ledger" in r.out
    assert (await cli("check")).code == 0


async def test_doctor_closes_orphans(cli: Cli, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    await ledger.reserve(user.user_id, "req-orphan-1", Decimal("2"))
    await ledger.reserve(user.user_id, "req-orphan-sent", Decimal("0.5"))
    await ledger.mark_upstream("req-orphan-sent")
    await ledger.reserve(user.user_id, "req-in-flight", Decimal("1"))
    await db.execute("UPDATE reservations SET created_at = now() - interval '30 minutes' "
                     "WHERE request_id IN ('req-orphan-1', 'req-orphan-sent')")
    dry = await cli("doctor", "--no-release")
    assert dry.code == 0 and "req-orphan-1" not in dry.out
    r = await cli("doctor", "--release-orphans-older-than", "15")
    assert r.code == 0, r
    assert "closed 2 orphan" in r.out and "req-orphan-1 charged 0" in r.out
    assert "req-orphan-sent charged 0.5" in r.out  # it reached a provider: charged its hold
    assert "req-in-flight" not in r.out
    state = await ledger.get_balance(user.user_id)
    assert state is not None and state["reserved"] == Decimal("1") and state["balance"] == Decimal("9.5")
    again = await cli("check", "--release-orphans-older-than", "15")
    assert again.code == 0 and "no orphan reservations" in again.out


async def test_doctor_reports_violations(cli: Cli, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    await db.execute("UPDATE balances SET balance = balance + 1 WHERE user_id = %s", (user.user_id,))
    for command in ("doctor", "check"):
        r = await cli(command)
        assert r.code == 1, r
        assert "FAIL 1 user" in r.out and str(user.user_id) in r.out
        assert "ledger 10" in r.out
    await db.execute("UPDATE balances SET balance = balance - 1 WHERE user_id = %s", (user.user_id,))
    assert (await cli("doctor")).code == 0


async def test_doctor_reports_old_schema(cli: Cli) -> None:
    removed = await db.fetchall("DELETE FROM schema_migrations WHERE version >= %s RETURNING *",
                                (db.EXPECTED_SCHEMA_VERSION,))
    try:
        r = await cli("doctor")
    finally:
        for row in removed:
            await db.execute("INSERT INTO schema_migrations (version, name, checksum, applied_at) "
                             "VALUES (%(version)s, %(name)s, %(checksum)s, %(applied_at)s)", row)
    assert r.code == 1
    assert "mlp migrate" in r.out


async def test_database_unavailable_is_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/nope")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    reset_settings()
    try:
        r = await cli("create-key", "--user-id", str(uuid.uuid4()))
        m = await cli("migrate")
    finally:
        monkeypatch.undo()
        reset_settings()
    assert_one_line_error(r, "database unavailable")
    assert_one_line_error(m, "database unavailable")


async def test_deployed_stage_with_placeholders_is_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGE", "prod")
    monkeypatch.setenv("ADMIN_API_KEY", "changeme")
    reset_settings()
    try:
        r = await cli("migrate")
    finally:
        monkeypatch.undo()
        reset_settings()
    assert_one_line_error(r, "invalid configuration")


# ----------------------------------------------------------------------------------- entry point
def test_console_script_help() -> None:
    assert MLP.exists(), f"{MLP} missing: reinstall the project (pip install -e .)"
    proc = subprocess.run([str(MLP), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: mlp" in proc.stdout
    for command in ("migrate", "create-user", "create-key", "grant-credits", "revoke-key", "doctor"):
        assert command in proc.stdout


def test_console_script_runs_a_command(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    proc = subprocess.run([str(MLP), "check", "--no-release"], capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "balances match the ledger" in proc.stdout


async def test_create_key_with_limits_and_doctor_checks_key_drift(cli: Cli, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(balance="10")
    r = await cli("create-key", "--user-id", str(user.user_id), "--name", "ci", "--rpm", "30", "--spend-cap", "2.5")
    assert r.code == 0, r
    row = await db.fetchone("SELECT id, rpm, spend_cap FROM api_keys WHERE user_id = %s AND name = 'ci'",
                            (user.user_id,))
    assert row is not None and row["rpm"] == 30 and row["spend_cap"] == Decimal("2.5")
    assert (await cli("create-key", "--user-id", str(user.user_id), "--spend-cap", "0")).code == 1
    assert "capped keys' reserved amounts match" in (await cli("doctor")).out
    await db.execute("UPDATE api_keys SET reserved = 1 WHERE id = %s", (row["id"],))
    r = await cli("doctor", "--no-release")
    assert r.code == 1 and "FAIL 1 capped key" in r.out and str(row["id"]) in r.out
