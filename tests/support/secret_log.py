"""Secrets never reach the logs: a tap on every log record of the whole test session, and a
registry of every secret the fixtures create (API keys, provider keys, JWTs, master keys, ...).

``tests/conftest.py`` installs the tap for the session and checks at the end; tests call
``register(...)`` for secrets they make themselves (every API key generated in-process is
registered automatically) and may call ``leaks()`` to check early.

The tap wraps ``logging.Logger.callHandlers``, so it sees each emitted record exactly once,
whatever handlers, propagation or uvicorn's logging config do; records are rendered the way
production renders them (the Powertools JSON formatter for the gateway logger, with every
``extra`` field and traceback) plus a repr of all extra attributes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

MIN_SECRET_CHARS = 8
# Environment variables whose values are secrets in the test session (when set).
SECRET_ENV = ("ADMIN_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY",
              "COMPAT_API_KEY", "UPSTASH_REDIS_REST_TOKEN", "JWT_HS256_SECRET", "BYOK_MASTER_KEYS",
              "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")
_STANDARD = set(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {"message", "asctime"}

SECRETS: set[str] = set()
LINES: list[str] = []
_lock = threading.Lock()
_plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
_original_call_handlers: Callable[[logging.Logger, logging.LogRecord], None] | None = None


def register(*values: str | None) -> None:
    """Remember secrets (and, for a master-key list, each key in it)."""
    with _lock:
        for value in values:
            if not value:
                continue
            if len(value) >= MIN_SECRET_CHARS:
                SECRETS.add(value)
            if "," in value or ":" in value:  # "v1:<hex>,v2:<hex>" — each key alone is a secret too
                for part in value.split(","):
                    key = part.partition(":")[2].strip()
                    if len(key) >= 32:
                        SECRETS.add(key)


def register_env() -> None:
    register(*(os.environ.get(name) for name in SECRET_ENV))


def _render(logger: logging.Logger, record: logging.LogRecord) -> str:
    formatter: logging.Formatter = _plain
    for handler in logger.handlers:
        if handler.formatter is not None and type(handler.formatter).__name__ == "LambdaPowertoolsFormatter":
            formatter = handler.formatter
            break
    try:
        text = formatter.format(record)
    except Exception:  # a formatter that chokes must not break the test
        text = f"{record.levelname} {record.name} {record.msg!r} {record.args!r}"
    extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    return f"{text} {extras!r}" if extras else text


def install() -> None:
    global _original_call_handlers
    if _original_call_handlers is not None:
        return
    original = logging.Logger.callHandlers
    _original_call_handlers = original

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        try:
            LINES.append(_render(self, record))
        except Exception:
            LINES.append(f"{record.name} {record.msg!r}")
        original(self, record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]


def uninstall() -> None:
    global _original_call_handlers
    if _original_call_handlers is not None:
        logging.Logger.callHandlers = _original_call_handlers  # type: ignore[method-assign]
        _original_call_handlers = None


def mask(secret: str) -> str:
    return secret[:4] + "…" + f"({len(secret)} chars)"


def leaks(lines: list[str] | None = None) -> list[str]:
    """One description per (secret, line) where a registered secret appears; the secret masked."""
    register_env()
    found = []
    with _lock:
        secrets = sorted(SECRETS)
    for line in list(LINES if lines is None else lines):
        for secret in secrets:
            if secret in line:
                found.append(f"{mask(secret)} in: {line.replace(secret, mask(secret))[:300]}")
    return found


def wrap_key_generator(module: Any, name: str = "generate_api_key") -> None:
    """Register every API key ``module.<name>()`` generates (the function is replaced by a wrapper)."""
    fn = getattr(module, name)
    if getattr(fn, "_registers_secrets", False):
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        register(result[0])
        return result

    wrapper._registers_secrets = True  # type: ignore[attr-defined]
    setattr(module, name, wrapper)
