"""The local stack (`make dev`): every function of template.yaml on one port.

Routes are read from template.yaml (no second route list): each HttpApi event of each
function is mounted at exactly its method and path, dispatching to that function's FastAPI
``app`` — the same object Mangum wraps in Lambda. Around it the stack starts:
- Postgres: ``DATABASE_URL`` if set, else the local server (database ``mlp_dev``), else an
  embedded server (pgserver) under ``.local/pgdata``; migrations applied;
- the Upstash REST bridge on the real Redis (unless ``UPSTASH_REDIS_REST_URL`` is set);
- the fake provider servers (unless ``--real-providers``);
- the fake Stripe API with its hosted Checkout / Billing Portal pages (unless ``STRIPE_SECRET_KEY``);
- the local OIDC identity provider for the console's sign-up / sign-in (unless sign-in is already
  configured: ``JWT_JWKS_URL``, ``JWT_HS256_SECRET`` or ``CONSOLE_CLIENT_ID``), wired into the JWT
  settings exactly as template.yaml wires Cognito;
- a dev user with credit and an API key, printed with curl / openai-SDK examples and written to
  ``.local/dev-credentials.json``, plus the console URL.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from infra.local.servers import free_port
from infra.local.template import http_routes, load_template

ROOT = Path(__file__).resolve().parents[2]
LOCAL_DIR = ROOT / ".local"
CREDENTIALS_FILE = LOCAL_DIR / "dev-credentials.json"
DEV_EMAIL = "dev@example.com"
DEV_CREDIT = Decimal("25")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


# --------------------------------------------------------------------------- routing
def _path_regex(path: str) -> re.Pattern[str]:
    """API Gateway path syntax → regex: ``{name}`` one segment, ``{name+}`` greedy."""
    out = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("}"):
            out += ".+" if part.endswith("+}") else "[^/]+"
        else:
            out += re.escape(part)
    return re.compile("^" + out + "$")


def load_function_app(code_uri: str, handler: str, cache: dict[str, Any]) -> Any:
    module_file, _, _ = handler.partition(".")
    path = (ROOT / code_uri / f"{module_file}.py").resolve()
    key = str(path)
    if key not in cache:
        name = "fn_" + re.sub(r"\W", "_", str(path.relative_to(ROOT).with_suffix("")))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        cache[key] = module.app
    return cache[key]


class TemplateRouter:
    """An ASGI app dispatching (method, path) to the function app template.yaml maps it to."""

    def __init__(self, routes: list[tuple[str, str, Any]]) -> None:
        self.exact: dict[tuple[str, str], Any] = {}
        self.patterns: list[tuple[str, re.Pattern[str], Any]] = []
        for method, path, app in routes:
            if "{" in path:
                self.patterns.append((method.upper(), _path_regex(path), app))
            else:
                self.exact[(method.upper(), path)] = app
        self.paths = {p for _, p in self.exact}

    def resolve(self, method: str, path: str) -> tuple[Any | None, bool]:
        app = self.exact.get((method, path)) or self.exact.get(("ANY", path))
        if app is not None:
            return app, True
        path_known = path in self.paths
        for m, rx, candidate in self.patterns:
            if rx.match(path):
                if m in (method, "ANY"):
                    return candidate, True
                path_known = True
        return None, path_known

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            from gateway.http import lifespan_without_work

            await lifespan_without_work(receive, send)
            return
        method = scope.get("method", "GET")
        app, path_known = self.resolve(method, scope["path"])
        if app is None and method in ("OPTIONS", "HEAD") and path_known:
            for m in ("GET", "POST", "PUT", "DELETE", "ANY"):
                app, _ = self.resolve(m, scope["path"])
                if app is not None:
                    break
        if app is None:
            status, code = (405, "method_not_allowed") if path_known else (404, "not_found")
            msg = (f"Method {method} is not allowed on {scope['path']}." if path_known
                   else f"No route for {method} {scope['path']}.")
            body = json.dumps({"error": {"message": msg, "type": "invalid_request_error", "code": code,
                                         "param": None}}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)


def build_router(template_path: Path | None = None) -> TemplateRouter:
    template = load_template(str(template_path or ROOT / "template.yaml"))
    cache: dict[str, Any] = {}
    routes = []
    for method, path, _logical_id, code_uri, handler in http_routes(template):
        if not handler.endswith(".handler"):
            continue
        routes.append((method, path, load_function_app(code_uri, handler, cache)))
    return TemplateRouter(routes)


# --------------------------------------------------------------------------- services
def _can_connect(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=3).close()
        return True
    except psycopg.OperationalError:
        return False


def ensure_database(explicit: str | None) -> str:
    if explicit:
        return explicit
    server = os.environ.get("LOCAL_PG_SERVER", "postgresql://postgres@127.0.0.1:5432")
    if _can_connect(f"{server}/postgres"):
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mlp_dev'").fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("mlp_dev")))
        return f"{server}/mlp_dev"
    print("No Postgres reachable: starting an embedded one (pgserver) in .local/pgdata", flush=True)
    import pgserver  # type: ignore[import-not-found]

    srv = pgserver.get_server(str(LOCAL_DIR / "pgdata"), cleanup_mode=None)
    return str(srv.get_uri())


def _die_with_parent() -> None:
    """Child processes get SIGTERM when the dev server dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(args: list[str], url: str, ready_path: str = "/", env: dict[str, str] | None = None,
           headers: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            preexec_fn=_die_with_parent)
    atexit.register(lambda: proc.poll() is None and proc.terminate())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{args[1]} exited with {proc.returncode}")
        try:
            httpx.get(url + ready_path, timeout=1, headers=headers)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{args[1]} did not start")


def ensure_redis(redis_url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
    except redis.RedisError:
        print("Redis not reachable; starting it with the documented command", flush=True)
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
                        "--save", "", "--appendonly", "no"], check=False)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _load_credentials() -> dict[str, Any]:
    try:
        return dict(json.loads(CREDENTIALS_FILE.read_text()))
    except (OSError, ValueError):
        return {}


async def seed(previous: dict[str, Any]) -> tuple[str, str]:
    """The dev user (with credit) and a working API key; reuses the previous key if still valid."""
    from gateway import auth, db
    from gateway.account import users
    from gateway.errors import Unauthorized

    try:
        row = await db.fetchone("SELECT id FROM users WHERE lower(email) = %s", (DEV_EMAIL,))
        user_id = row["id"] if row else await users.create_user(DEV_EMAIL, tier="pro",
                                                                     welcome_credit=DEV_CREDIT)
        key = previous.get("api_key")
        if key:
            try:
                principal = await auth.authenticate_key(key)
                if principal.user_id != user_id:
                    key = None
            except Unauthorized:
                key = None
        if not key:
            key = (await users.create_api_key(user_id, "dev")).secret
        await db.execute(
            """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
                   max_completion_tokens, prompt_price, completion_price, source)
               VALUES ('compat/llama3.2', 'Local: Llama 3.2 (OpenAI-compatible server)', 'compat', 'llama3.2',
                       'local', 131072, 8192, 0.0000001, 0.0000002, 'local')
               ON CONFLICT (id) DO NOTHING""")
        await db.execute(  # an embedding model on the same server (POST /v1/embeddings)
            """INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length,
                   max_completion_tokens, prompt_price, completion_price, output_modalities, source)
               VALUES ('compat/nomic-embed-text', 'Local: nomic-embed-text (OpenAI-compatible server)', 'compat',
                       'nomic-embed-text:latest', 'local', 2048, 0, 0.00000001, 0, ARRAY['embeddings'], 'local')
               ON CONFLICT (id) DO NOTHING""")
        return str(user_id), key
    finally:
        await db.close_pool()


# Local Stripe prices for the fake (docs/billing.md): TIERS_JSON of a real deploy sets real ones.
LOCAL_STRIPE_PRICES = {"pro": {"stripe_price_id": "price_local_pro"},
                       "premium": {"stripe_price_id": "price_local_premium"},
                       "team": {"stripe_price_id": "price_local_team"}}
LOCAL_PRICE_CENTS = {"pro": 2000, "premium": 4900, "team": 9900}  # monthly USD prices the fake knows


def start_fake_stripe(stack_url: str) -> str:
    """Billing without Stripe: the fake Stripe API (infra/local/fake_stripe.py) with stand-ins for
    its hosted Checkout and Billing Portal pages (fake_stripe_pages.py); it signs and delivers
    webhook events to this stack when a checkout is paid or a plan changed through it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    webhook_secret = "whsec_local_" + secrets.token_hex(16)
    plans = [f"--plan={name}={row['stripe_price_id']}" for name, row in LOCAL_STRIPE_PRICES.items()]
    prices = [f"--price={row['stripe_price_id']}={LOCAL_PRICE_CENTS[tier]}:usd"
              for tier, row in LOCAL_STRIPE_PRICES.items()]
    _spawn(["-m", "infra.local.fake_stripe_pages", "--port", str(port), "--webhook-url", f"{stack_url}/webhooks/stripe",
            "--webhook-secret", webhook_secret, *plans, *prices], base, "/__fake/health")
    os.environ.update({"STRIPE_API_BASE": base, "STRIPE_SECRET_KEY": "sk_test_local_fake",
                       "STRIPE_WEBHOOK_SECRET": webhook_secret, "FAKE_STRIPE_URL": base})
    os.environ.setdefault("TIERS_JSON", json.dumps(LOCAL_STRIPE_PRICES))
    return base


LOCAL_CONSOLE_CLIENT = "mlp-console-local"


def start_identity_provider(stack_url: str, state_file: Path | None) -> str:
    """Sign-up and sign-in for the console without Cognito: the local OIDC provider
    (infra/local/idp.py), configured the way template.yaml configures the Cognito pool."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    origins = {stack_url, stack_url.replace("127.0.0.1", "localhost")}
    args = ["-m", "infra.local.idp", "--port", str(port), "--client-id", LOCAL_CONSOLE_CLIENT]
    for origin in sorted(origins):
        args += ["--redirect-uri", f"{origin}/console/callback", "--logout-uri", f"{origin}/console/signed-out"]
    if state_file is not None:
        args += ["--state-file", str(state_file)]
    _spawn(args, base, "/health")
    issuer = f"{base}/local_dev"
    os.environ.update({
        "JWT_JWKS_URL": f"{issuer}/.well-known/jwks.json", "JWT_ISSUER": issuer, "JWT_AUDIENCE": LOCAL_CONSOLE_CLIENT,
        "CONSOLE_CLIENT_ID": LOCAL_CONSOLE_CLIENT, "CONSOLE_AUTHORIZE_URL": f"{base}/oauth2/authorize",
        "CONSOLE_TOKEN_URL": f"{base}/oauth2/token", "CONSOLE_SIGNUP_URL": f"{base}/signup",
        "CONSOLE_LOGOUT_URL": f"{base}/logout", "IDP_URL": base})
    return base


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run every function of template.yaml locally on one port.")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--real-providers", action="store_true",
                        help="use the provider base URLs/keys from the environment instead of the fake servers")
    parser.add_argument("--credentials-file", default=str(CREDENTIALS_FILE))
    args = parser.parse_args(argv)
    LOCAL_DIR.mkdir(exist_ok=True)
    credentials_file = Path(args.credentials_file)
    previous = _load_credentials() if credentials_file == CREDENTIALS_FILE else {}

    os.environ.setdefault("STAGE", "local")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    admin_key = os.environ.get("ADMIN_API_KEY") or previous.get("admin_key") or "local-admin-" + secrets.token_hex(12)
    os.environ["ADMIN_API_KEY"] = admin_key

    database_url = ensure_database(os.environ.get("DATABASE_URL"))
    os.environ["DATABASE_URL"] = database_url
    direct_url = os.environ.get("DATABASE_DIRECT_URL") or database_url  # DATABASE_URL may be a pooler
    from gateway.migrate import migrate

    applied = migrate(direct_url)
    print(f"database ready ({len(applied)} migrations applied)", flush=True)

    if not os.environ.get("UPSTASH_REDIS_REST_URL"):
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        ensure_redis(redis_url)
        token = "local-upstash-" + secrets.token_hex(8)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        _spawn(["-m", "infra.local.upstash_bridge", "--port", str(port), "--redis-url", redis_url, "--token", token],
               url, headers={"Authorization": f"Bearer {token}"})
        os.environ.update({"UPSTASH_REDIS_REST_URL": url, "UPSTASH_REDIS_REST_TOKEN": token})

    if not args.real_providers:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        _spawn(["-m", "infra.local.fake_providers", "--port", str(port)], base, "/__fake/requests")
        os.environ.update({
            "OPENAI_BASE_URL": f"{base}/openai/v1", "OPENROUTER_BASE_URL": f"{base}/openrouter/api/v1",
            "ANTHROPIC_BASE_URL": f"{base}/anthropic/v1", "GEMINI_BASE_URL": f"{base}/gemini/v1beta",
            "COMPAT_BASE_URL": f"{base}/compat/v1", "OPENAI_API_KEY": "sk-fake-openai",
            "OPENROUTER_API_KEY": "sk-or-fake", "ANTHROPIC_API_KEY": "sk-ant-fake",
            "GEMINI_API_KEY": "fake-gemini-key", "COMPAT_API_KEY": "fake-compat-key",
            "FAKE_PROVIDERS_URL": base,
        })

    stack_url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
    for name, page in (("BILLING_SUCCESS_URL", "billing?checkout=success&session_id={CHECKOUT_SESSION_ID}"),
                       ("BILLING_CANCEL_URL", "billing?checkout=cancelled"), ("BILLING_PORTAL_RETURN_URL", "billing")):
        os.environ.setdefault(name, f"{stack_url}/console/{page}")
    if not os.environ.get("STRIPE_SECRET_KEY"):
        start_fake_stripe(stack_url)
    if not any(os.environ.get(name) for name in ("JWT_JWKS_URL", "JWT_HS256_SECRET", "CONSOLE_CLIENT_ID")):
        idp_state = LOCAL_DIR / "idp-state.json" if credentials_file == CREDENTIALS_FILE else None
        start_identity_provider(stack_url, idp_state)

    user_id, api_key = asyncio.run(seed(previous))
    router = build_router()
    base_url = f"http://{args.host}:{args.port}"
    credentials = {"base_url": base_url, "openai_base_url": f"{base_url}/v1", "api_key": api_key,
                   "admin_key": admin_key, "user_id": user_id, "database_url": direct_url,
                   "functions_database_url": database_url,
                   "database_pooled": os.environ.get("DATABASE_POOLED", "").lower() == "true",
                   "upstash_url": os.environ["UPSTASH_REDIS_REST_URL"],
                   "upstash_token": os.environ.get("UPSTASH_REDIS_REST_TOKEN"),
                   "fake_providers_url": os.environ.get("FAKE_PROVIDERS_URL"),
                   "fake_stripe_url": os.environ.get("FAKE_STRIPE_URL"),
                   "stripe_webhook_secret": os.environ.get("STRIPE_WEBHOOK_SECRET")
                   if os.environ.get("FAKE_STRIPE_URL") else None,
                   "console_url": f"{base_url}/console", "idp_url": os.environ.get("IDP_URL"),
                   "mailbox_url": f"{os.environ['IDP_URL']}/__dev/mailbox" if os.environ.get("IDP_URL") else None}
    fake_stripe = os.environ.get("FAKE_STRIPE_URL")
    billing_hint = (f"  fake Stripe : {fake_stripe}  (POST /v1/billing/checkout, then pay it with: curl -X POST "
                    f"{fake_stripe}/__fake/checkout/sessions/<id>/complete -d '{{\"deliver\": true}}')\n"
                    if fake_stripe else "")
    idp = os.environ.get("IDP_URL")
    console_hint = (f"  console     : {base_url}/console  (sign up there; verification codes arrive in the dev "
                    f"mailbox {idp}/__dev/mailbox)\n" if idp else f"  console     : {base_url}/console\n")
    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    credentials_file.write_text(json.dumps(credentials, indent=2))
    credentials_file.chmod(0o600)
    print(f"""
Multi-LLM gateway running at {base_url}  (routes from template.yaml: {len(router.exact) + len(router.patterns)})
  dev API key : {api_key}
  admin key   : {admin_key}
  credentials : {credentials_file}
{console_hint}{billing_hint}
  curl {base_url}/health -H "Authorization: Bearer {api_key}"
  curl {base_url}/v1/chat/completions -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \\
       -d '{{"model": "openai/gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base_url}/v1', api_key='{api_key}'); \\
print(c.chat.completions.create(model='openai/gpt-4o-mini', messages=[{{'role':'user','content':'Hi'}}]))"

  Anthropic Messages (Claude Code, the anthropic SDK) and the Responses API (docs/surfaces.md):
  ANTHROPIC_BASE_URL={base_url} ANTHROPIC_API_KEY={api_key} ANTHROPIC_MODEL=anthropic/claude-sonnet-4 claude
  python -c "from openai import OpenAI; c = OpenAI(base_url='{base_url}/v1', api_key='{api_key}'); \
print(c.responses.create(model='openai/gpt-4o-mini', input='Hi').output_text)"
""", flush=True)

    import uvicorn

    uvicorn.run(router, host=args.host, port=args.port, log_level=os.environ.get("UVICORN_LOG_LEVEL", "warning"),
                access_log=False, lifespan="on")


if __name__ == "__main__":
    main()
