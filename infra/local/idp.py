"""A small local OpenID Connect provider that behaves like a Cognito User Pool's hosted UI.

``make dev`` runs it so that sign-up → email verification → sign-in works offline, and the
browser tests drive it exactly as a customer would drive Cognito. What it mirrors:

- **Endpoints** (Cognito's layout): ``GET /oauth2/authorize`` (``response_type=code`` with
  PKCE ``S256`` required, exact ``redirect_uri`` match), ``GET /login``, ``GET /signup``,
  ``POST /oauth2/token`` (``authorization_code`` with ``code_verifier``, ``refresh_token``;
  CORS for browser clients), ``GET /oauth2/userInfo``, ``POST /oauth2/revoke``, ``GET /logout``
  (``client_id`` + registered ``logout_uri``), and per pool ``/<pool>/.well-known/jwks.json``
  and ``/<pool>/.well-known/openid-configuration``.
- **Tokens**: RS256, ``kid`` = the key's RFC 7638 thumbprint. The ID token carries Cognito's
  claims (``sub``, ``email``, ``email_verified``, ``cognito:username``, ``aud`` = client id,
  ``token_use: id``, ``auth_time``, ``origin_jti``, ``event_id``, ``jti``, ``nonce``); the access
  token has ``client_id`` instead of ``aud``, ``token_use: access``, ``scope`` and ``username``.
- **Sign-up**: email + password (at least ``MIN_PASSWORD`` characters), a 6-digit code "emailed"
  to the dev mailbox (``GET /__dev/mailbox`` as a page, ``GET /__dev/mailbox.json?to=<email>``
  for tests); an unconfirmed user cannot get tokens (signing in sends a fresh code). After
  confirmation the user is signed in and sent back to the app, as Cognito's hosted UI does.
  ``email_verified`` is ``true`` only after the code was entered.
- A signed-in browser keeps an IdP session cookie, so a later ``/oauth2/authorize`` returns at
  once; ``/logout`` ends it.

Run: ``python -m infra.local.idp --port 9229 --client-id mlp-console-local
--redirect-uri http://127.0.0.1:8080/console/callback --logout-uri http://127.0.0.1:8080/console``.
With ``--state-file`` users and the signing key survive a restart.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

MIN_PASSWORD = 12
CODE_TTL_S = 300            # authorization codes, as Cognito
VERIFY_TTL_S = 24 * 3600    # email verification codes
TOKEN_TTL_S = 3600
REFRESH_TTL_S = 24 * 3600
FLOW_TTL_S = 3600           # a started sign-in (the authorize request's parameters)
MAX_FAILED_LOGINS = 5
LOCKOUT_S = 60
SESSION_COOKIE = "mlp_idp_session"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def pkce_challenge(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def _hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"{salt.hex()}:{digest.hex()}"


def _check_password(password: str, stored: str) -> bool:
    salt, _, _ = stored.partition(":")
    return hmac.compare_digest(_hash_password(password, bytes.fromhex(salt)), stored)


@dataclass
class User:
    sub: str
    email: str
    password: str            # scrypt "salt:hash"
    verified: bool = False
    code: str | None = None  # pending verification code
    code_expires: float = 0.0
    created: float = field(default_factory=time.time)
    failed: int = 0
    locked_until: float = 0.0


@dataclass
class Flow:
    """One started sign-in: the validated parameters of the authorize request."""

    client_id: str
    redirect_uri: str
    state: str | None
    scope: str
    code_challenge: str
    nonce: str | None
    expires: float


@dataclass
class Grant:
    sub: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    scope: str
    nonce: str | None
    auth_time: int
    expires: float
    origin_jti: str


@dataclass
class Client:
    client_id: str
    redirect_uris: frozenset[str]
    logout_uris: frozenset[str]


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class LocalIdP:
    """In-memory user pool + OAuth server. Thread-safe enough for one uvicorn worker."""

    def __init__(self, base_url: str, clients: list[Client], pool_id: str = "local_dev",
                 state_file: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.pool_id = pool_id
        self.issuer = f"{self.base_url}/{pool_id}"
        self.clients = {c.client_id: c for c in clients}
        self.users: dict[str, User] = {}       # lower-cased email -> user
        self.flows: dict[str, Flow] = {}
        self.grants: dict[str, Grant] = {}     # authorization code -> grant
        self.refresh: dict[str, tuple[str, str, float, str]] = {}  # token -> (sub, client, expires, scope)
        self.sessions: dict[str, tuple[str, int]] = {}             # cookie -> (sub, auth_time)
        self.mailbox: list[dict[str, Any]] = []
        self.state_file = state_file
        self._lock = threading.Lock()
        self.key = self._load_state()
        public = self.key.public_key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        thumb = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True)
        self.kid = b64url(hashlib.sha256(thumb.encode()).digest())
        self.jwk = {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    # ----------------------------------------------------------------- persistence (optional)
    def _load_state(self) -> rsa.RSAPrivateKey:
        if self.state_file and self.state_file.exists():
            data = json.loads(self.state_file.read_text())
            self.users = {k: User(**v) for k, v in data.get("users", {}).items()}
            key = serialization.load_pem_private_key(data["key"].encode(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            return key
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _save(self) -> None:
        if not self.state_file:
            return
        pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": pem, "users": {k: asdict(u) for k, u in self.users.items()}}))
        tmp.chmod(0o600)
        tmp.replace(self.state_file)

    # ----------------------------------------------------------------- users
    def sign_up(self, email: str, password: str) -> User:
        email = email.strip()
        if not _EMAIL.match(email):
            raise ValueError("Enter a valid email address.")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"Password must have at least {MIN_PASSWORD} characters.")
        with self._lock:
            if email.lower() in self.users:
                raise ValueError("An account with the given email already exists.")
            user = User(sub=str(uuid.uuid4()), email=email, password=_hash_password(password))
            self.users[email.lower()] = user
            self._send_code(user)
            self._save()
        return user

    def _send_code(self, user: User) -> None:
        user.code = f"{secrets.randbelow(1_000_000):06d}"
        user.code_expires = time.time() + VERIFY_TTL_S
        self.mailbox.append({"to": user.email, "subject": "Your verification code", "code": user.code,
                             "body": f"Your verification code is {user.code}. It expires in 24 hours.",
                             "sent_at": time.time()})

    def resend(self, email: str) -> None:
        with self._lock:
            user = self.users.get(email.strip().lower())
            if user is not None and not user.verified:
                self._send_code(user)
                self._save()

    def confirm(self, email: str, code: str) -> User:
        with self._lock:
            user = self.users.get(email.strip().lower())
            if user is None or user.verified:
                raise ValueError("Invalid verification code provided, please try again.")
            if user.code is None or time.time() > user.code_expires:
                raise ValueError("The verification code has expired; request a new one.")
            if not hmac.compare_digest(user.code, code.strip()):
                raise ValueError("Invalid verification code provided, please try again.")
            user.verified, user.code = True, None
            self._save()
            return user

    def authenticate(self, email: str, password: str) -> User:
        """The user, if the password is right (verified or not); ValueError with the hosted UI's words."""
        with self._lock:
            user = self.users.get(email.strip().lower())
            now = time.time()
            if user is not None and user.locked_until > now:
                raise ValueError("Password attempts exceeded; wait a minute and try again.")
            if user is None or not _check_password(password, user.password):
                if user is not None:
                    user.failed += 1
                    if user.failed >= MAX_FAILED_LOGINS:
                        user.failed, user.locked_until = 0, now + LOCKOUT_S
                raise ValueError("Incorrect username or password.")
            user.failed = 0
            if not user.verified:
                self._send_code(user)
                self._save()
            return user

    def user_by_sub(self, sub: str) -> User | None:
        return next((u for u in self.users.values() if u.sub == sub), None)

    # ----------------------------------------------------------------- OAuth
    def start_flow(self, params: dict[str, str]) -> str:
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client", "Unknown client_id.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise OAuthError("redirect_mismatch", "redirect_uri is not registered for this client.")
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge):
            raise OAuthError("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256.")
        scopes = params.get("scope", "openid").split()
        if "openid" not in scopes or not set(scopes) <= {"openid", "email", "profile"}:
            raise OAuthError("invalid_scope", "Scopes must include openid (allowed: openid email profile).")
        flow_id = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            for fid in [f for f, v in self.flows.items() if v.expires < now]:
                self.flows.pop(fid, None)
            self.flows[flow_id] = Flow(client.client_id, redirect_uri, params.get("state"), " ".join(scopes),
                                       challenge, params.get("nonce"), now + FLOW_TTL_S)
        return flow_id

    def flow(self, flow_id: str) -> Flow:
        flow = self.flows.get(flow_id)
        if flow is None or flow.expires < time.time():
            raise OAuthError("invalid_request", "This sign-in page has expired; go back to the app and start again.")
        return flow

    def finish(self, flow_id: str, user: User, auth_time: int) -> str:
        """The redirect back to the client with a fresh authorization code."""
        with self._lock:
            flow = self.flows.pop(flow_id, None)
        if flow is None:
            raise OAuthError("invalid_request", "This sign-in page has expired; go back to the app and start again.")
        code = secrets.token_urlsafe(32)
        self.grants[code] = Grant(user.sub, flow.client_id, flow.redirect_uri, flow.code_challenge, flow.scope,
                                  flow.nonce, auth_time, time.time() + CODE_TTL_S, str(uuid.uuid4()))
        query = {"code": code, **({"state": flow.state} if flow.state is not None else {})}
        return f"{flow.redirect_uri}{'&' if '?' in flow.redirect_uri else '?'}{urlencode(query)}"

    def exchange(self, form: dict[str, str]) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client", "Unknown client_id.", 401)
        if grant_type == "authorization_code":
            with self._lock:
                grant = self.grants.pop(form.get("code", ""), None)  # single use, even when it fails below
            if grant is None or grant.expires < time.time() or grant.client_id != client.client_id:
                raise OAuthError("invalid_grant", "The authorization code is invalid, expired or already used.")
            if form.get("redirect_uri") != grant.redirect_uri:
                raise OAuthError("invalid_grant", "redirect_uri does not match the authorization request.")
            verifier = form.get("code_verifier", "")
            if not _VERIFIER.match(verifier) or not hmac.compare_digest(pkce_challenge(verifier),
                                                                        grant.code_challenge):
                raise OAuthError("invalid_grant", "PKCE verification failed (code_verifier).")
            user = self.user_by_sub(grant.sub)
            if user is None or not user.verified:
                raise OAuthError("invalid_grant", "User is not confirmed.")
            refresh = secrets.token_urlsafe(48)
            self.refresh[refresh] = (user.sub, client.client_id, time.time() + REFRESH_TTL_S, grant.scope)
            tokens = self.tokens(user, client.client_id, grant.scope, grant.auth_time, grant.nonce, grant.origin_jti)
            return {**tokens, "refresh_token": refresh}
        if grant_type == "refresh_token":
            entry = self.refresh.get(form.get("refresh_token", ""))
            if entry is None or entry[2] < time.time() or entry[1] != client.client_id:
                raise OAuthError("invalid_grant", "Invalid refresh token.")
            user = self.user_by_sub(entry[0])
            if user is None:
                raise OAuthError("invalid_grant", "Invalid refresh token.")
            return self.tokens(user, client.client_id, entry[3], int(time.time()), None, str(uuid.uuid4()))
        raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token.")

    def tokens(self, user: User, client_id: str, scope: str, auth_time: int, nonce: str | None,
               origin_jti: str) -> dict[str, Any]:
        now = int(time.time())
        event_id = str(uuid.uuid4())
        common = {"sub": user.sub, "iss": self.issuer, "origin_jti": origin_jti, "event_id": event_id,
                  "auth_time": auth_time, "iat": now, "exp": now + TOKEN_TTL_S}
        id_claims: dict[str, Any] = {**common, "aud": client_id, "token_use": "id", "jti": str(uuid.uuid4()),
                                     "cognito:username": user.sub, "email": user.email,
                                     "email_verified": user.verified}
        if nonce:
            id_claims["nonce"] = nonce
        access_claims = {**common, "client_id": client_id, "token_use": "access", "scope": scope,
                         "jti": str(uuid.uuid4()), "username": user.sub}
        headers = {"kid": self.kid}
        return {"id_token": jwt.encode(id_claims, self.key, algorithm="RS256", headers=headers),
                "access_token": jwt.encode(access_claims, self.key, algorithm="RS256", headers=headers),
                "expires_in": TOKEN_TTL_S, "token_type": "Bearer"}

    def access_claims(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(token, self.key.public_key(), algorithms=["RS256"], issuer=self.issuer,
                                            options={"require": ["exp", "sub"]})
        if claims.get("token_use") != "access":
            raise jwt.InvalidTokenError("not an access token")
        return claims

    def discovery(self) -> dict[str, Any]:
        return {"issuer": self.issuer, "authorization_endpoint": f"{self.base_url}/oauth2/authorize",
                "token_endpoint": f"{self.base_url}/oauth2/token",
                "userinfo_endpoint": f"{self.base_url}/oauth2/userInfo",
                "revocation_endpoint": f"{self.base_url}/oauth2/revoke",
                "end_session_endpoint": f"{self.base_url}/logout",
                "jwks_uri": f"{self.issuer}/.well-known/jwks.json", "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "code_challenge_methods_supported": ["S256"], "scopes_supported": ["openid", "email", "profile"],
                "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["none"]}


# --------------------------------------------------------------------------- pages
CSS = """
*{box-sizing:border-box}body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1b1d21}
main{max-width:26rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:.75rem;
box-shadow:0 1px 3px #0002}h1{font-size:1.4rem;margin:0 0 1rem}label{display:block;margin:.75rem 0 .25rem;
font-weight:600}input{width:100%;padding:.6rem;border:1px solid #9aa0a6;border-radius:.4rem;font:inherit}
button{margin-top:1.25rem;width:100%;padding:.7rem;border:0;border-radius:.4rem;background:#3b4cca;color:#fff;
font:inherit;font-weight:600;cursor:pointer}button.link{background:none;color:#3b4cca;width:auto;padding:0}
:focus-visible{outline:3px solid #f5a623;outline-offset:2px}.error{background:#fde8e8;color:#8a1c1c;
padding:.6rem;border-radius:.4rem}.note{color:#555;font-size:.9rem}table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}.dev{font-size:.8rem;color:#666}
"""


def form_fields(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (without python-multipart)."""
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _page(title: str, body: str, status: int = 200, form_origins: frozenset[str] = frozenset()) -> HTMLResponse:
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           '<meta name="viewport" content="width=device-width,initial-scale=1">'
           '<link rel="stylesheet" href="/static/idp.css"></head><body><main>'
           f'<p class="dev">Local identity provider (development stand-in for Cognito)</p>{body}</main></body></html>')
    csp = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
           "form-action 'self' " + " ".join(sorted(form_origins)))
    return HTMLResponse(doc, status_code=status, headers={"content-security-policy": csp.strip(),
                                                          "x-frame-options": "DENY", "cache-control": "no-store",
                                                          "referrer-policy": "no-referrer"})


def _field(name: str, label: str, kind: str = "text", value: str = "", extra: str = "") -> str:
    return (f'<label for="{name}">{html.escape(label)}</label><input id="{name}" name="{name}" type="{kind}" '
            f'value="{html.escape(value)}" required {extra}>')


def _error(message: str | None) -> str:
    return f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""


def create_app(idp: LocalIdP) -> Starlette:
    origins = frozenset(f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for c in idp.clients.values()
                        for u in c.redirect_uris)

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return _page(title, body, status, origins)

    def login_page(flow_id: str, email: str = "", error: str | None = None, status: int = 200) -> HTMLResponse:
        return page("Sign in", f"""<h1>Sign in</h1>{_error(error)}
<form method="post" action="/login"><input type="hidden" name="flow" value="{html.escape(flow_id)}">
{_field("email", "Email", "email", email, 'autocomplete="username" autofocus')}
{_field("password", "Password", "password", "", 'autocomplete="current-password"')}
<button type="submit">Sign in</button></form>
<p class="note">New here? <a href="/signup?flow={html.escape(flow_id)}">Create an account</a></p>""", status)

    def signup_page(flow_id: str, email: str = "", error: str | None = None, status: int = 200) -> HTMLResponse:
        return page("Create an account", f"""<h1>Create an account</h1>{_error(error)}
<form method="post" action="/signup"><input type="hidden" name="flow" value="{html.escape(flow_id)}">
{_field("email", "Email", "email", email, 'autocomplete="email" autofocus')}
{_field("password", f"Password (at least {MIN_PASSWORD} characters)", "password", "",
        f'autocomplete="new-password" minlength="{MIN_PASSWORD}"')}
<button type="submit">Sign up</button></form>
<p class="note">Have an account? <a href="/login?flow={html.escape(flow_id)}">Sign in</a></p>""", status)

    def confirm_page(flow_id: str, email: str, error: str | None = None, info: str | None = None,
                     status: int = 200) -> HTMLResponse:
        note = f'<p role="status">{html.escape(info)}</p>' if info else ""
        return page("Confirm your account", f"""<h1>Confirm your account</h1>{_error(error)}{note}
<p>We have sent a code by email to {html.escape(email)}. Enter it below to confirm your account.</p>
<form method="post" action="/confirm"><input type="hidden" name="flow" value="{html.escape(flow_id)}">
<input type="hidden" name="email" value="{html.escape(email)}">
{_field("code", "Verification code", "text", "", 'inputmode="numeric" autocomplete="one-time-code" autofocus')}
<button type="submit">Confirm account</button></form>
<form method="post" action="/confirm/resend"><input type="hidden" name="flow" value="{html.escape(flow_id)}">
<input type="hidden" name="email" value="{html.escape(email)}"><button class="link" type="submit">Send a new
code</button></form>""", status)

    def oauth_error_page(exc: OAuthError) -> HTMLResponse:
        return page("Sign-in error", f"<h1>Sign-in error</h1>{_error(exc.description)}"
                                     f'<p class="note">error: {html.escape(exc.error)}</p>', 400)

    def session_user(request: Request) -> tuple[User, int] | None:
        entry = idp.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if entry is None:
            return None
        user = idp.user_by_sub(entry[0])
        return (user, entry[1]) if user is not None and user.verified else None

    def signed_in(flow_id: str, user: User) -> Response:
        auth_time = int(time.time())
        location = idp.finish(flow_id, user, auth_time)
        session = secrets.token_urlsafe(32)
        idp.sessions[session] = (user.sub, auth_time)
        response = RedirectResponse(location, status_code=302)
        response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="lax", path="/")
        return response

    async def form_of(request: Request) -> dict[str, str]:
        return form_fields(await request.body())

    def flow_from_query(request: Request) -> str:
        params = dict(request.query_params)
        if "flow" in params:
            idp.flow(params["flow"])
            return params["flow"]
        return idp.start_flow(params)

    async def authorize(request: Request) -> Response:
        try:
            flow_id = idp.start_flow(dict(request.query_params))
        except OAuthError as exc:
            return oauth_error_page(exc)
        current = session_user(request)
        if current is not None:
            return RedirectResponse(idp.finish(flow_id, current[0], current[1]), status_code=302)
        return RedirectResponse(f"/login?flow={flow_id}", status_code=303)

    def email_password_form(form_page: Callable[..., HTMLResponse], submit: Callable[[str, str], User],
                            then: Callable[[str, User], Response]) -> Callable[[Request], Awaitable[Response]]:
        """The sign-in and sign-up pages: GET shows ``form_page`` for the flow in the query (or a
        new one); POST runs ``submit(email, password)`` for the form's flow, then ``then(flow,
        user)``. A refused email or password shows the form again (400); an unknown or expired
        flow shows the error page."""

        async def endpoint(request: Request) -> Response:
            try:
                if request.method == "GET":
                    return form_page(flow_from_query(request))
                form = await form_of(request)
                flow_id = form.get("flow", "")
                idp.flow(flow_id)
            except OAuthError as exc:
                return oauth_error_page(exc)
            try:
                user = submit(form.get("email", ""), form.get("password", ""))
            except ValueError as exc:
                return form_page(flow_id, form.get("email", ""), str(exc), 400)
            return then(flow_id, user)

        return endpoint

    def signed_in_if_confirmed(flow_id: str, user: User) -> Response:
        if not user.verified:
            return confirm_page(flow_id, user.email, info="Your account is not confirmed yet: we sent a new code.")
        return signed_in(flow_id, user)

    def confirm_new_account(flow_id: str, user: User) -> Response:
        return confirm_page(flow_id, user.email)

    login = email_password_form(login_page, idp.authenticate, signed_in_if_confirmed)
    signup = email_password_form(signup_page, idp.sign_up, confirm_new_account)

    async def confirm(request: Request) -> Response:
        form = await form_of(request)
        flow_id, email = form.get("flow", ""), form.get("email", "")
        try:
            idp.flow(flow_id)
        except OAuthError as exc:
            return oauth_error_page(exc)
        try:
            user = idp.confirm(email, form.get("code", ""))
        except ValueError as exc:
            return confirm_page(flow_id, email, str(exc), status=400)
        return signed_in(flow_id, user)

    async def resend(request: Request) -> Response:
        form = await form_of(request)
        idp.resend(form.get("email", ""))
        return confirm_page(form.get("flow", ""), form.get("email", ""), info="A new code is on its way.")

    cors = {"access-control-allow-origin": "*", "access-control-allow-methods": "POST, GET, OPTIONS",
            "access-control-allow-headers": "authorization, content-type", "access-control-max-age": "600"}

    def oauth_json(body: dict[str, Any], status: int = 200) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers={**cors, "cache-control": "no-store",
                                                               "pragma": "no-cache"})

    async def token(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=cors)
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return oauth_json({"error": "invalid_request", "error_description": "Send a form-encoded body."}, 400)
        try:
            return oauth_json(idp.exchange(await form_of(request)))
        except OAuthError as exc:
            return oauth_json({"error": exc.error, "error_description": exc.description}, exc.status)

    async def revoke(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=cors)
        idp.refresh.pop((await form_of(request)).get("token", ""), None)
        return oauth_json({})

    async def userinfo(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=cors)
        auth = request.headers.get("authorization", "")
        try:
            claims = idp.access_claims(auth[7:] if auth.lower().startswith("bearer ") else "")
        except jwt.PyJWTError:
            return oauth_json({"error": "invalid_token", "error_description": "Access token is not valid."}, 401)
        user = idp.user_by_sub(claims["sub"])
        if user is None:
            return oauth_json({"error": "invalid_token", "error_description": "User does not exist."}, 401)
        return oauth_json({"sub": user.sub, "email": user.email, "email_verified": str(user.verified).lower(),
                           "username": user.sub})

    async def logout(request: Request) -> Response:
        client = idp.clients.get(request.query_params.get("client_id", ""))
        target = request.query_params.get("logout_uri", "")
        if client is None or target not in client.logout_uris:
            return page("Sign-out error", _error("logout_uri is not registered for this client."), 400)
        idp.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = RedirectResponse(target, status_code=302)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def well_known(request: Request) -> Response:
        doc = request.path_params["doc"]
        if request.path_params["pool"] != idp.pool_id or doc not in ("jwks.json", "openid-configuration"):
            return JSONResponse({"message": "Not found."}, status_code=404)
        body = {"keys": [idp.jwk]} if doc == "jwks.json" else idp.discovery()
        return JSONResponse(body, headers={**cors, "cache-control": "max-age=300"})

    async def mailbox_json(request: Request) -> Response:
        to = request.query_params.get("to", "").lower()
        return JSONResponse([m for m in idp.mailbox if not to or m["to"].lower() == to])

    async def mailbox_page(request: Request) -> Response:
        rows = "".join(f"<tr><td>{html.escape(m['to'])}</td><td>{html.escape(m['subject'])}</td>"
                       f"<td><strong>{html.escape(m['code'])}</strong></td>"
                       f"<td>{time.strftime('%H:%M:%S', time.localtime(m['sent_at']))}</td></tr>"
                       for m in reversed(idp.mailbox))
        return page("Dev mailbox", "<h1>Dev mailbox</h1><p class='note'>Emails the local identity provider "
                    "would have sent (newest first).</p><table><thead><tr><th>To</th><th>Subject</th><th>Code</th>"
                    f"<th>Sent</th></tr></thead><tbody>{rows}</tbody></table>")

    async def stylesheet(request: Request) -> Response:
        return Response(CSS, media_type="text/css", headers={"cache-control": "max-age=300"})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "issuer": idp.issuer})

    app = Starlette(routes=[
        Route("/oauth2/authorize", authorize, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/signup", signup, methods=["GET", "POST"]),
        Route("/confirm", confirm, methods=["POST"]),
        Route("/confirm/resend", resend, methods=["POST"]),
        Route("/oauth2/token", token, methods=["POST", "OPTIONS"]),
        Route("/oauth2/revoke", revoke, methods=["POST", "OPTIONS"]),
        Route("/oauth2/userInfo", userinfo, methods=["GET", "OPTIONS"]),
        Route("/logout", logout, methods=["GET"]),
        Route("/{pool}/.well-known/{doc:str}", well_known, methods=["GET"]),
        Route("/__dev/mailbox.json", mailbox_json, methods=["GET"]),
        Route("/__dev/mailbox", mailbox_page, methods=["GET"]),
        Route("/static/idp.css", stylesheet, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])
    app.state.idp = idp
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Local OIDC identity provider (Cognito-like) for the console")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9229)
    parser.add_argument("--client-id", default="mlp-console-local")
    parser.add_argument("--redirect-uri", action="append", required=True, help="registered callback URL (repeat)")
    parser.add_argument("--logout-uri", action="append", default=[], help="registered sign-out URL (repeat)")
    parser.add_argument("--pool-id", default="local_dev")
    parser.add_argument("--state-file", type=Path, help="keep users and the signing key here across restarts")
    args = parser.parse_args(argv)
    client = Client(args.client_id, frozenset(args.redirect_uri), frozenset(args.logout_uri))
    idp = LocalIdP(f"http://{args.host}:{args.port}", [client], args.pool_id, args.state_file)
    uvicorn.run(create_app(idp), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
