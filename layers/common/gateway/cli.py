"""``mlp``: the operator's command line (migrations, users, keys, credit, health of the books).

Configuration is the same as the functions': the environment (``DATABASE_URL`` ...) or, with
``SECRETS_SSM_PATH``, the stage's SecureStrings. Output is meant for people *and* scripts: the one
value a command produces (a user id, a key) is the only line on stdout; details go to stderr.
Exit status: 0 ok, 1 failed (one line ``mlp: error: ...`` on stderr, no traceback for expected
errors), 2 bad usage.

Adding a command: write its handler (a sync ``(args) -> int``, or an ``async`` one wrapped in
``_run_async``; its docstring is the command's description in ``mlp <command> --help``) and
``def _add_<name>(sub)`` that declares it with ``_command`` and adds its arguments, and append that
to ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from pydantic import ValidationError

from . import __version__

Handler = Callable[[argparse.Namespace], int]
SubParsers = Any  # argparse._SubParsersAction (private type)


class CliError(Exception):
    """An expected failure: reported as one line, exit status 1."""


# ----------------------------------------------------------------------------------- helpers
def _out(line: str = "") -> None:
    print(line, flush=True)


def _info(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid id (UUID): {value!r}") from None


def _decimal(value: str) -> Decimal:
    try:
        d = Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a valid amount: {value!r}") from None
    if not d.is_finite():
        raise argparse.ArgumentTypeError(f"not a valid amount: {value!r}")
    return d


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _usd(amount: Decimal) -> str:
    """$5.00, $0.00035, -$1.50: at least cents, never trailing zeros beyond them."""
    text = f"{abs(amount).normalize():f}"
    whole, _, frac = text.partition(".")
    return ("-" if amount < 0 else "") + "$" + whole + "." + frac.ljust(2, "0")


def _run_async(fn: Callable[[argparse.Namespace], Awaitable[int]]) -> Handler:
    """Run an async command in its own event loop and close the connection pool afterwards."""

    @functools.wraps(fn)
    def handler(args: argparse.Namespace) -> int:
        async def main() -> int:
            from . import db

            try:
                return await fn(args)
            finally:
                await db.close_pool()

        return asyncio.run(main())

    return handler


def _command(sub: SubParsers, name: str, handler: Handler, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The subcommand ``name``: ``help`` is its line in ``mlp --help``, the handler's docstring its
    description in ``mlp <name> --help``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=inspect.getdoc(handler), **kwargs)
    p.set_defaults(func=handler)
    return p


# ----------------------------------------------------------------------------------- migrate
def _cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the migrations shipped in the gateway package, in order, on DATABASE_DIRECT_URL (the
    direct, non-pooled endpoint; DATABASE_URL if unset); safe to run concurrently and repeatedly.
    Also sets the database's default statement_timeout (DB_STATEMENT_TIMEOUT_MS) for the functions'
    pooled connections. Prints the versions applied by this run; fails if it finds no migrations."""
    from .config import get_settings, is_pooled_url
    from .db import tls_kwargs
    from .migrate import current_version, migrate

    settings = get_settings()
    dsn = settings.migrations_url
    if is_pooled_url(dsn) or (not settings.database_direct_url and settings.pooled):
        _info("warning: migrating through a connection pooler; set DATABASE_DIRECT_URL to the database's "
              "direct (non-pooled) endpoint")
    connect_kwargs = tls_kwargs(settings, dsn)
    try:
        applied = migrate(dsn, args.dir, echo=_info, statement_timeout_ms=settings.db_statement_timeout_ms,
                          connect_kwargs=connect_kwargs)
    except ValueError as exc:  # no migrations, or unusable files (bad name, duplicate version)
        raise CliError(str(exc)) from None
    version = current_version(dsn, connect_kwargs)
    if applied:
        _out(" ".join(applied))
        _info(f"applied {len(applied)} migration(s); schema version is now {version}")
    else:
        _info(f"database is up to date (schema version {version})")
    return 0


def _add_migrate(sub: SubParsers) -> None:
    p = _command(sub, "migrate", _cmd_migrate, "apply pending SQL migrations (DATABASE_DIRECT_URL, else DATABASE_URL)")
    p.add_argument("--dir", type=_dir, default=None,
                   help="migrations directory (default: the gateway package's migrations)")


def _dir(value: str) -> Any:
    from pathlib import Path

    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {value}")
    return path


# ----------------------------------------------------------------------------------- users / keys
async def _cmd_create_user(args: argparse.Namespace) -> int:
    from .account import users
    from .config import get_settings
    from .errors import BadRequest

    settings = get_settings()
    try:
        tier = settings.known_tier(args.tier).name
    except BadRequest:
        raise CliError(f"unknown tier {args.tier!r} (known: {', '.join(settings.tier_ranking())})") from None
    credit = args.credit
    if credit < 0:
        raise CliError("--credit must not be negative")
    user_id = await users.create_user(args.email, tier=tier, welcome_credit=credit)
    _out(str(user_id))
    _info(f"created user {args.email} (tier {tier}, credit {_usd(credit)})")
    return 0


def _add_create_user(sub: SubParsers) -> None:
    p = _command(sub, "create-user", _run_async(_cmd_create_user), "create a user (prints the user id)")
    p.add_argument("--email", required=True)
    p.add_argument("--tier", default="free", help="tier name from the tier table (default: free)")
    p.add_argument("--credit", type=_decimal, default=Decimal(0), metavar="USD",
                   help="initial credit in USD, recorded as a ledger entry (default: none)")


async def _cmd_create_key(args: argparse.Namespace) -> int:
    from .account import users

    if args.spend_cap is not None and args.spend_cap <= 0:
        raise CliError("--spend-cap must be positive")
    key = await users.create_api_key(args.user_id, args.name, rpm=args.rpm, spend_cap=args.spend_cap)
    _out(key.secret)
    _info(f"created key {key.key_id} ({key.prefix}…, name {key.name!r}) for user {args.user_id}. "
          "The key is shown once: store it now.")
    return 0


def _add_create_key(sub: SubParsers) -> None:
    p = _command(sub, "create-key", _run_async(_cmd_create_key), "create an API key (prints the secret, once)")
    p.add_argument("--user-id", required=True, type=_uuid)
    p.add_argument("--name", default="default")
    p.add_argument("--rpm", type=_positive_int, default=None, help="this key's own requests per minute")
    p.add_argument("--spend-cap", type=_decimal, default=None, metavar="USD",
                   help="USD this key may spend in total (enforced atomically with each reservation)")


async def _cmd_revoke_key(args: argparse.Namespace) -> int:
    from .account import users

    if not await users.revoke_api_key(args.key_id):
        raise CliError(f"no active key with id {args.key_id} (unknown or already revoked)")
    _out(f"revoked key {args.key_id}")
    _info("other warm containers stop accepting it within AUTH_CACHE_TTL_S seconds")
    return 0


def _add_revoke_key(sub: SubParsers) -> None:
    p = _command(sub, "revoke-key", _run_async(_cmd_revoke_key), "revoke an API key")
    p.add_argument("--key-id", required=True, type=_uuid)


# ----------------------------------------------------------------------------------- credit
async def _cmd_grant_credits(args: argparse.Namespace) -> int:
    """Record a ledger entry for a user. A negative amount is a deduction and is refused if it
    exceeds the available credit (unless --allow-negative). With an explicit --reference the
    command is idempotent: re-running it changes nothing."""
    from .money import ledger

    amount: Decimal = args.amount
    if amount == 0:
        raise CliError("--amount must not be zero")
    reference = args.reference or f"admin:{uuid.uuid4()}"
    kind = "grant" if amount > 0 else "adjustment"
    result = await ledger.credit(args.user_id, amount, kind, reference, description=args.reason,
                                 allow_negative=args.allow_negative)
    balance = f"balance {_usd(result.balance)}, available {_usd(result.available)}"
    if not result.applied:
        _out(f"already applied: reference {reference} (nothing changed); {balance}")
        return 0
    verb = "granted" if amount > 0 else "deducted"
    _out(f"{verb} {_usd(abs(amount))} {'to' if amount > 0 else 'from'} user {args.user_id} "
         f"(reference {reference}); {balance}")
    return 0


def _add_grant_credits(sub: SubParsers) -> None:
    p = _command(sub, "grant-credits", _run_async(_cmd_grant_credits),
                 "add (or, with a negative amount, deduct) credit")
    p.add_argument("--user-id", required=True, type=_uuid)
    p.add_argument("--amount", required=True, type=_decimal, metavar="USD",
                   help="USD, up to 8 decimal places; negative = deduction (use --amount=-5)")
    p.add_argument("--reason", required=True, help="why (stored as the ledger entry's description)")
    p.add_argument("--reference", default=None,
                   help="unique reference making the grant idempotent (default: a new admin:<uuid>)")
    p.add_argument("--allow-negative", action="store_true",
                   help="allow a deduction to take available credit below zero")


# ----------------------------------------------------------------------------------- doctor
async def _cmd_doctor(args: argparse.Namespace) -> int:
    """Checks the schema version and the ledger invariants (balance = sum of the ledger, reserved =
    sum of open reservations), releases reservations left by functions that died mid-request, and
    exits 1 if anything is wrong."""
    from . import db
    from .config import get_settings
    from .money import ledger

    problems = 0
    row = await db.fetchone("SELECT max(version) AS version FROM schema_migrations")
    version = row["version"] if row else None
    expected = db.EXPECTED_SCHEMA_VERSION
    if version is None or not version.isdigit() or int(version) < int(expected):
        _out(f"FAIL schema version {version}, code expects {expected}: run `mlp migrate`")
        problems += 1
    else:
        _out(f"ok   schema version {version} (code expects {expected})")

    if args.no_release:
        _out("skip orphan reservations (--no-release)")
    else:
        minutes = args.release_orphans_older_than or get_settings().reservation_orphan_minutes
        idle = await ledger.release_idle_standing()
        if idle:
            _out(f"fixed released {idle} carried hold(s) idle past their time")
        closed = await ledger.settle_orphans(minutes)
        if closed:
            _out(f"fixed closed {len(closed)} orphan reservation(s) older than {minutes} min "
                 "(charged their hold when sent upstream, else released):")
            for orphan in closed:
                _out(f"       {orphan.request_id} charged {orphan.charged}")
        else:
            _out(f"ok   no orphan reservations older than {minutes} min")

    violations = await ledger.invariant_violations()
    if violations:
        problems += 1
        _out(f"FAIL {len(violations)} user(s) whose cached balance/reserved disagree with their rows:")
        for v in violations:
            _out(f"       user {v['user_id']}: balance {v['balance']} vs ledger {v['ledger_sum']}; "
                 f"reserved {v['reserved']} vs reservations {v['reserved_sum']}; "
                 f"in flight {v['in_flight']} vs {v['reservations']}")
    else:
        _out("ok   balances match the ledger and reserved matches open reservations")

    from .account.keys import key_reservation_drift

    drift = await key_reservation_drift()
    if drift:
        problems += 1
        _out(f"FAIL {len(drift)} capped key(s) whose reserved amount disagrees with their open reservations:")
        for d in drift:
            _out(f"       key {d['id']} (user {d['user_id']}): reserved {d['reserved']} vs {d['reserved_sum']}")
    else:
        _out("ok   capped keys' reserved amounts match their open reservations")

    overdrawn = await db.fetchall(
        "SELECT user_id, balance - reserved AS available FROM balances WHERE balance - reserved < 0 "
        "ORDER BY 2 LIMIT 20")
    if overdrawn:
        _out(f"note {len(overdrawn)} user(s) below zero (recorded overruns or allowed deductions):")
        for o in overdrawn:
            _out(f"       user {o['user_id']}: available {o['available']}")

    if problems:
        _info(f"doctor found {problems} problem(s)")
        return 1
    return 0


def _add_doctor(sub: SubParsers) -> None:
    p = _command(sub, "doctor", _run_async(_cmd_doctor), "check the books; release orphan reservations",
                 aliases=["check"])
    p.add_argument("--release-orphans-older-than", type=_positive_int, default=None, metavar="MINUTES",
                   help="release reservations older than this (default: RESERVATION_ORPHAN_MINUTES)")
    p.add_argument("--no-release", action="store_true", help="only check; do not release orphans")


# ----------------------------------------------------------------------------------- models
async def _cmd_refresh_models(args: argparse.Namespace) -> int:
    """Fetch OpenRouter's model list and each direct provider's (where a key is configured), sync
    model_pricing (prices, history, deactivations) and re-publish the cached catalogue. The same run
    the 30-minute schedule does. A failing source keeps its last good data (exit 1 only if all
    failed, or with --strict)."""
    from .catalog import ops

    result = await ops.refresh_models(args, out=_out, info=_info)
    if result.status == "failed" or (args.strict and result.failed_sources):
        raise CliError(f"refresh-models {result.status}: {result.error}")
    return 0


def _add_refresh_models(sub: SubParsers) -> None:
    from .catalog import ops

    ops.add_arguments(_command(sub, "refresh-models", _run_async(_cmd_refresh_models),
                               "discover models and prices now (progress per source)"))


# ----------------------------------------------------------------------------------- BYOK master key
async def _cmd_rotate_master_key(args: argparse.Namespace) -> int:
    """Re-encrypt every stored provider key still under an older BYOK master-key version with the
    current one (the LAST entry of BYOK_MASTER_KEYS), then verify that every key decrypts.
    Rotation: append a new version, deploy, run this, then remove the old version. Safe to re-run;
    exit 1 if any key does not decrypt."""
    from .account import byok

    report = await byok.rotate(batch_size=args.batch_size)
    _out(f"rotated {report.rotated} provider key(s) to master key {report.current_version}; "
         f"{report.verified}/{report.total} decrypt")
    _info(f"examined {report.examined}, already current or changed meanwhile {report.skipped}, "
          f"failed {len(report.failed)}")
    for f in report.failed:
        _info(f"  cannot decrypt provider key {f['id']} (user {f['user_id']}, {f['provider']}, "
              f"version {f['key_version']}): {f['reason']}")
    if not report.ok:
        raise CliError(f"{report.total - report.verified} provider key(s) do not decrypt under BYOK_MASTER_KEYS; "
                       "keep every old version configured until this command succeeds")
    return 0


def _add_rotate_master_key(sub: SubParsers) -> None:
    p = _command(sub, "rotate-master-key", _run_async(_cmd_rotate_master_key),
                 "re-encrypt BYOK provider keys under the current master key")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="rows per batch (default: 500)")


# ----------------------------------------------------------------------------------- smoke
def _cmd_smoke(args: argparse.Namespace) -> int:
    """From the outside, with the API key of a dedicated smoke user (a little credit, no other
    traffic): /health; a chat and a streamed chat on the API URL and on the streaming URL, each
    billed exactly once; a forged Stripe webhook refused. Exit 1 if any check fails. Talks to the
    URLs only (no database)."""
    import os

    from .smoke import Smoke

    api_key = args.api_key or os.environ.get("MLP_SMOKE_API_KEY", "")
    if not api_key:
        raise CliError("an API key is needed: --api-key or MLP_SMOKE_API_KEY (a dedicated smoke user's key)")
    return Smoke(base_url=args.base_url, stream_url=args.stream_url, api_key=api_key, model=args.model,
                 wait_s=args.wait, out=_out).run()


def _add_smoke(sub: SubParsers) -> None:
    p = _command(sub, "smoke", _cmd_smoke, "check a deployed stage end to end (health, chats billed once, webhook)")
    p.add_argument("--base-url", required=True, help="the stack's ApiUrl output")
    p.add_argument("--stream-url", required=True, help="the stack's QueryStreamUrl output")
    p.add_argument("--api-key", default=None, help="default: $MLP_SMOKE_API_KEY")
    p.add_argument("--model", default="openai/gpt-4o-mini", help="a cheap model to call (default: %(default)s)")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the settlements to show (default: %(default)s)")


# ----------------------------------------------------------------------------------- wiring
# Order = order in --help.
COMMANDS: list[Callable[[SubParsers], None]] = [
    _add_migrate,
    _add_create_user,
    _add_create_key,
    _add_grant_credits,
    _add_revoke_key,
    _add_doctor,
    _add_refresh_models,
    _add_rotate_master_key,
    _add_smoke,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlp", description="Operate the multi-LLM gateway: migrations, users, keys, credit, checks.",
        epilog="Configuration comes from the environment (DATABASE_URL, ...) or SECRETS_SSM_PATH.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _database_reason() -> str:
    """The pool only says it timed out; one direct connection attempt tells why."""
    from .config import get_settings

    settings = get_settings()
    try:
        psycopg.connect(settings.database_url, connect_timeout=max(2, int(settings.db_connect_timeout_s))).close()
    except psycopg.Error as exc:
        return _one_line(str(exc)) or type(exc).__name__
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    from .db import DatabaseUnavailable
    from .errors import GatewayError
    from .migrate import ChecksumMismatch

    parser = build_parser()
    args = parser.parse_args(argv)
    # The pool logs each failed connection attempt; the CLI reports the failure once, below.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except CliError as exc:
        message = str(exc)
    except GatewayError as exc:
        message = exc.message
        if exc.extra:
            message += " (" + ", ".join(f"{k}={v}" for k, v in exc.extra.items()) + ")"
    except ChecksumMismatch as exc:
        message = f"{exc}; write a new migration instead of editing an applied one"
    except ValidationError as exc:
        message = "invalid configuration: " + _one_line(str(exc))
    except psycopg.OperationalError as exc:
        reason = _one_line(str(exc))
        if isinstance(exc, PoolTimeout | DatabaseUnavailable) or not reason:
            reason = _database_reason() or reason or type(exc).__name__
        message = "database unavailable: " + reason
    except psycopg.Error as exc:
        message = f"database error ({type(exc).__name__}): " + _one_line(str(exc))
    except KeyboardInterrupt:
        message = "interrupted"
    print(f"mlp: error: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
