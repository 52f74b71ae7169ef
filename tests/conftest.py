"""Test settings shared by every tier. Environment is fixed before any gateway import."""

from __future__ import annotations

import os

os.environ["STAGE"] = "test"
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "MultiLLMTest")
os.environ["ADMIN_API_KEY"] = "test-admin-key-7f3a9c1e5b2d4f60"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Carried holds (docs/money.md) leave one standing reservation per key after a request: the suite's
# "nothing left reserved" assertions hold with them off; tests/integration/test_carried_holds.py and
# the e2e carried-hold test turn them on (the product's default) and assert what they leave.
os.environ.setdefault("CARRY_HOLDS", "false")
for _name in ("DATABASE_URL", "UPSTASH_REDIS_REST_URL", "UPSTASH_REDIS_REST_TOKEN", "SECRETS_SSM_PATH",
              "TIERS_JSON", "CORS_ALLOW_ORIGINS"):
    os.environ.pop(_name, None)

ADMIN_KEY = os.environ["ADMIN_API_KEY"]


# ----------------------------------------------------------------------------- secrets never in logs
# Every log record of the session is captured (tests/support/secret_log.py); at the end, no secret
# a fixture created (API keys, provider keys, JWTs, master keys, the admin key, ...) may appear.
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _no_secrets_in_session_logs():  # type: ignore[no-untyped-def]
    from gateway import auth
    from gateway.account import users
    from tests.support import secret_log

    secret_log.install()
    secret_log.wrap_key_generator(auth)
    secret_log.wrap_key_generator(users)
    secret_log.register(ADMIN_KEY)
    yield
    leaks = secret_log.leaks()
    secret_log.uninstall()
    assert not leaks, f"{len(leaks)} secret(s) found in the session's logs:\n" + "\n".join(leaks[:20])
