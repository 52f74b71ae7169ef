"""Local stand-in for the Upstash Redis REST API, backed by a real Redis server.

The product talks to Redis only through ``upstash-redis`` / ``upstash-ratelimit`` (HTTP + JSON).
This bridge speaks the same REST protocol so those clients run unchanged against a local or CI
Redis::

    python -m infra.local.upstash_bridge --port 8079 --redis-url redis://127.0.0.1:6379/0 --token dev
    UPSTASH_REDIS_REST_URL=http://127.0.0.1:8079 UPSTASH_REDIS_REST_TOKEN=dev ...

Protocol (the subset of https://upstash.com/docs/redis/features/restapi the clients use):

* ``POST /`` with a JSON array (``["SET", "k", "v", "EX", 10]``) -> ``{"result": ...}``.
  Numbers become their decimal text; other non-string JSON values their JSON text.
* ``GET|POST /set/k/v?EX=10`` path style (segments URL-decoded; a POST body is the last argument).
* ``POST /pipeline`` (array of commands, not atomic) and ``POST /multi-exec`` (MULTI/EXEC) ->
  ``[{"result": ...} | {"error": "..."}, ...]``; an aborted transaction -> 400 ``{"error": ...}``.
* ``Authorization: Bearer <token>`` (or ``?_token=``), else 401 ``{"error": "Unauthorized"}``.
* ``Upstash-Encoding: base64`` -> every string in the result (recursively) is base64, except the
  status ``OK``, as Upstash does; integers stay integers, nil -> null. Without it strings are UTF-8.
* Replies are raw RESP2 replies (no redis-py response callbacks): ``HGETALL`` is a flat array,
  ``ZRANGE .. WITHSCORES`` a flat array of strings, ``SCAN`` ``[cursor, [keys]]`` and so on.
* Redis errors -> 400 ``{"error": "<full message incl. prefix: ERR/WRONGTYPE/NOSCRIPT...>"}``.
* Every response carries an ``Upstash-Sync-Token`` header (one Redis, so read-your-writes holds
  trivially; the clients just echo it back).

Lua: Upstash scripts may start with ``#!lua flags=allow-key-locking``, a flag stock Redis rejects.
The bridge drops Upstash-only flags (and the whole shebang line if no flag is left) for EVAL,
EVAL_RO and SCRIPT LOAD. Clients compute SHA1 over the *original* text, so the bridge keeps
``original sha -> real sha`` in memory and in the Redis hash ``__upstash_bridge:shas`` (shared by
all bridge processes on that Redis) and translates EVALSHA, EVALSHA_RO, SCRIPT EXISTS; SCRIPT LOAD
returns the original sha, exactly like Upstash.

Not supported (400 ``ERR Command is not available``): commands that would leave a pooled
connection in a special state (SUBSCRIBE & co, MONITOR, SELECT, MULTI/EXEC/WATCH as single
commands, HELLO, RESET, QUIT, AUTH, CLIENT REPLY/TRACKING, SHUTDOWN, replication commands).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import os
from base64 import b64encode
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # private module, but pinned with redis-py; fall back to redis-py's own error mapping
    from redis._parsers.resp2 import _AsyncRESP2Parser
except ImportError:  # pragma: no cover
    _AsyncRESP2Parser = None  # type: ignore[assignment,misc]

__all__ = [
    "DEFAULT_REDIS_URL",
    "DEFAULT_TOKEN",
    "SHA_MAP_KEY",
    "UpstashBridge",
    "create_app",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TOKEN = "local-upstash-token"
DEFAULT_PORT = 8079
SHA_MAP_KEY = "__upstash_bridge:shas"
UPSTASH_ONLY_SCRIPT_FLAGS = frozenset({"allow-key-locking"})

_BLOCKED = frozenset({
    "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
    "MONITOR", "SYNC", "PSYNC", "REPLCONF", "SELECT", "MULTI", "EXEC", "DISCARD", "WATCH",
    "UNWATCH", "HELLO", "RESET", "QUIT", "AUTH", "SHUTDOWN", "REPLICAOF", "SLAVEOF", "FAILOVER",
})
_BLOCKED_CLIENT_SUBCOMMANDS = frozenset({"REPLY", "TRACKING", "CACHING", "SETNAME", "NO-EVICT"})
_EVAL = frozenset({"EVAL", "EVAL_RO"})
_EVALSHA = frozenset({"EVALSHA", "EVALSHA_RO"})
_MAX_CACHE = 4096

_JSON_HEADERS = (b"content-type", b"application/json")
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


class _RedisError(ResponseError):
    """A Redis error reply with its full text (redis-py normally strips the ``ERR ``-style prefix)."""


if _AsyncRESP2Parser is not None:
    class _FullErrorParser(_AsyncRESP2Parser):
        @classmethod
        def parse_error(cls, response: str) -> Any:
            err = super().parse_error(response)
            if isinstance(err, RedisConnectionError):  # LOADING, MASTERDOWN, max clients...
                return err
            return _RedisError(response)

    _PARSER_KW: dict[str, Any] = {"parser_class": _FullErrorParser}
else:  # pragma: no cover
    _PARSER_KW = {}


def _error_text(err: BaseException) -> str:
    if isinstance(err, _RedisError):
        return str(err)
    code = getattr(err, "status_code", None)  # redis-py's mapped classes lost their prefix
    return f"{code} {err}" if code else str(err)


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Rejected(Exception):
    """A command the bridge refuses; reported like a Redis error for that command."""


def _arg(value: Any) -> str | int | bytes:
    t = type(value)
    if t is str or t is int or t is bytes:
        return value
    if t is float:
        if value.is_integer() and abs(value) < 2**63:
            return int(value)
        return repr(value)
    if t is bool or value is None or t is list or t is dict:
        return _DUMPS(value)
    raise _BadRequest(f"ERR unsupported argument type {t.__name__}")  # pragma: no cover


def _command(raw: Any) -> list[Any]:
    if type(raw) is not list or not raw:
        raise _BadRequest("ERR a command must be a non-empty JSON array, e.g. [\"GET\", \"key\"]")
    for a in raw:
        t = type(a)
        if t is not str and t is not int:
            return [_arg(a) for a in raw]
    return raw


def _strip_upstash_shebang(script: str) -> str | None:
    """Rewrite a ``#!lua flags=...`` line Redis would reject; None when nothing to change."""
    nl = script.find("\n")
    first, rest = (script, "") if nl < 0 else (script[:nl], script[nl:])
    words = first[2:].split()
    if not words or words[0] != "lua":
        return None
    changed = False
    kept: list[str] = []
    for word in words[1:]:
        if word.startswith("flags="):
            flags = [f for f in word[6:].split(",") if f]
            good = [f for f in flags if f not in UPSTASH_ONLY_SCRIPT_FLAGS]
            if len(good) != len(flags):
                changed = True
            if good:
                kept.append("flags=" + ",".join(good))
        else:
            kept.append(word)
    if not changed:
        return None
    # No flag left: drop the shebang but keep the newline so Lua line numbers stay the same.
    return ("#!lua " + " ".join(kept) if kept else "") + rest


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _b64(value: Any) -> Any:
    t = type(value)
    if t is bytes:
        return "OK" if value == b"OK" else b64encode(value).decode("ascii")
    if t is list:
        return [_b64(v) for v in value]
    if isinstance(value, ResponseError):  # error nested in an array (e.g. from a Lua table)
        return b64encode(_error_text(value).encode()).decode("ascii")
    return value  # int / None


def _utf8(value: Any) -> Any:
    t = type(value)
    if t is bytes:
        return value.decode("utf-8", "replace")
    if t is list:
        return [_utf8(v) for v in value]
    if isinstance(value, ResponseError):
        return _error_text(value)
    return value


_Post = Callable[[Any], Any] | None


class UpstashBridge:
    """Raw ASGI app implementing the Upstash REST protocol on top of one redis-py connection pool."""

    def __init__(self, redis_url: str = DEFAULT_REDIS_URL, token: str = DEFAULT_TOKEN, *,
                 sha_map_key: str = SHA_MAP_KEY, max_connections: int | None = None,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        if not token:
            raise ValueError("token must not be empty")
        self.redis_url = redis_url
        self.sha_map_key = sha_map_key
        self._token = token.encode()
        self._max_connections = max_connections
        self._max_body = max_body_bytes
        self._pool: ConnectionPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        # original script text -> (text sent to Redis, original sha, real sha)
        self._scripts: dict[str, tuple[str, str, str]] = {}
        self._shas: dict[str, str] = {}  # original sha -> real sha (shebang-rewritten scripts only)
        self._sync_tokens = itertools.count(1)
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "commands", "errors", "unauthorized", "script_rewrites",
             "sha_translations", "sha_map_lookups", "noscript"), 0)

    # ------------------------------------------------------------------ ASGI plumbing
    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":  # pragma: no cover
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._get_pool()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _get_pool(self) -> ConnectionPool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            kwargs: dict[str, Any] = {"protocol": 2, **_PARSER_KW}
            if self._max_connections:
                kwargs["max_connections"] = self._max_connections
            self._pool = ConnectionPool.from_url(self.redis_url, **kwargs)
            self._pool_loop = loop
        return self._pool

    async def aclose(self) -> None:
        pool, self._pool, self._pool_loop = self._pool, None, None
        if pool is not None:
            await pool.aclose()

    async def _respond(self, send: Callable[..., Any], status: int, payload: Any) -> None:
        body = _DUMPS(payload).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                _JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                (b"upstash-sync-token", str(next(self._sync_tokens)).encode()),
            ],
        })
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, auth: bytes | None, query: bytes) -> bool:
        if auth is not None:
            scheme, _, credential = auth.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token)
        if query:
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if key == "_token":
                    return hmac.compare_digest(value.encode("latin-1"), self._token)
        return False

    async def _read_body(self, receive: Callable[..., Any]) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _BadRequest("ERR request body too large", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _http(self, scope: dict[str, Any], receive: Callable[..., Any],
                    send: Callable[..., Any]) -> None:
        stats = self.stats
        stats["requests"] += 1
        auth = None
        b64 = False
        for key, value in scope["headers"]:
            if key == b"authorization":
                auth = value
            elif key == b"upstash-encoding":
                b64 = value.lower() == b"base64"
        if not self._authorized(auth, scope.get("query_string", b"")):
            stats["unauthorized"] += 1
            await self._respond(send, 401, {"error": "Unauthorized"})
            return
        encode = _b64 if b64 else _utf8
        try:
            body = await self._read_body(receive)
            method = scope["method"]
            path = scope["path"]
            if path.startswith("//"):  # base URL configured with a trailing slash
                path = "/" + path.lstrip("/")
            if path == "/" and method == "POST":
                status, payload = await self._single(self._parse_json(body), encode)
            elif path in ("/pipeline", "/multi-exec"):
                if method != "POST":
                    raise _BadRequest(f"ERR {path} needs POST", 405)
                commands = self._parse_json(body)
                if type(commands) is not list:
                    raise _BadRequest("ERR the body must be a JSON array of commands")
                if path == "/pipeline":
                    status, payload = await self._pipeline(commands, encode)
                else:
                    status, payload = await self._multi_exec(commands, encode)
            elif method in ("GET", "POST", "PUT"):
                status, payload = await self._single(self._path_command(scope, body), encode)
            else:
                raise _BadRequest(f"ERR method {method} not allowed", 405)
        except _BadRequest as exc:
            stats["errors"] += 1
            status, payload = exc.status, {"error": exc.message}
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            stats["errors"] += 1
            log.warning("upstash bridge: Redis at %s unavailable: %s", self.redis_url, exc)
            status, payload = 503, {"error": f"ERR upstash bridge cannot reach Redis: {exc}"}
        except Exception as exc:
            stats["errors"] += 1
            log.exception("upstash bridge: unexpected error")
            status, payload = 500, {"error": f"ERR upstash bridge internal error: {exc!r}"}
        await self._respond(send, status, payload)

    @staticmethod
    def _parse_json(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _BadRequest(f"ERR invalid JSON body: {exc}") from None

    @staticmethod
    def _path_command(scope: dict[str, Any], body: bytes) -> list[Any]:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw_path.split(b"?", 1)[0]
        args: list[Any] = [unquote_to_bytes(seg).decode("utf-8", "surrogateescape")
                           for seg in raw_path.strip(b"/").split(b"/") if seg]
        if not args:
            raise _BadRequest("ERR no command; POST a JSON array to / or use /<command>/<arg>...")
        args = [a.encode("utf-8", "surrogateescape") if i else a for i, a in enumerate(args)]
        query = scope.get("query_string", b"")
        if query:
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if key != "_token":
                    args.append(key)
                    if value:
                        args.append(value)
        if body and scope["method"] != "GET":
            args.append(body)
        return args

    # ------------------------------------------------------------------ Redis round trips
    async def _roundtrip(self, commands: list[list[Any]]) -> list[Any]:
        """Send commands on one pooled connection; error replies are returned as exceptions."""
        pool = self._get_pool()
        conn = await pool.get_connection()
        try:
            if len(commands) == 1:
                packed = conn.pack_command(*commands[0])
            else:
                packed = conn.pack_commands(commands)
            await conn.send_packed_command(packed, check_health=False)
            replies = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response(disable_decoding=True))
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await conn.disconnect()  # unknown protocol state: never reuse this socket
            raise
        finally:
            await pool.release(conn)
        return replies

    # ------------------------------------------------------------------ scripts
    async def _rewrite_script(self, script: str) -> str:
        cached = self._scripts.get(script)
        if cached is None:
            new = _strip_upstash_shebang(script)
            if new is None:
                cached = (script, "", "")
            else:
                self.stats["script_rewrites"] += 1
                cached = (new, _sha1(script), _sha1(new))
                await self._remember_sha(cached[1], cached[2])
            if len(self._scripts) >= _MAX_CACHE:
                self._scripts.clear()
            self._scripts[script] = cached
        return cached[0]

    async def _remember_sha(self, original: str, real: str) -> None:
        if self._shas.get(original) == real:
            return
        reply = (await self._roundtrip([["HSET", self.sha_map_key, original, real]]))[0]
        if isinstance(reply, ResponseError):
            raise reply
        if len(self._shas) >= _MAX_CACHE:
            self._shas.clear()
        self._shas[original] = real

    async def _load_sha_map(self, shas: set[str]) -> None:
        """Fetch unknown original->real sha entries from the shared Redis hash into memory."""
        wanted = [s for s in shas if s not in self._shas]
        if not wanted:
            return
        self.stats["sha_map_lookups"] += 1
        reply = (await self._roundtrip([["HMGET", self.sha_map_key, *wanted]]))[0]
        if isinstance(reply, ResponseError):
            raise reply
        for original, real in zip(wanted, reply, strict=True):
            if real is not None:
                self._shas[original] = real.decode()

    def _real_sha(self, sha: Any) -> Any:
        real = self._shas.get(sha.lower()) if type(sha) is str else None
        if real is None:
            return sha
        self.stats["sha_translations"] += 1
        return real

    async def _prepare(self, raw: Any, *, resolve: set[str] | None) -> tuple[list[Any], _Post]:
        """Validate one command and adapt it for stock Redis. Returns (args, result post-processor).

        ``resolve`` collects EVALSHA shas unknown in memory (batch mode); in single-command mode it
        is None and an unknown EVALSHA sha is looked up only after a NOSCRIPT reply.
        """
        args = _command(raw)
        name = args[0].upper() if type(args[0]) is str else args[0]
        if name in _BLOCKED:
            raise _Rejected(name)
        post: _Post = None
        n = len(args)
        if name in _EVAL:
            if n > 1 and type(args[1]) is str and args[1].startswith("#!"):
                args = [args[0], await self._rewrite_script(args[1]), *args[2:]]
        elif name in _EVALSHA:
            if n > 1 and type(args[1]) is str:
                if resolve is not None and args[1].lower() not in self._shas:
                    resolve.add(args[1].lower())
                args = [args[0], self._real_sha(args[1]), *args[2:]]
        elif name == "SCRIPT" and n > 1 and type(args[1]) is str:
            sub = args[1].upper()
            if sub == "LOAD" and n == 3 and type(args[2]) is str and args[2].startswith("#!"):
                real = await self._rewrite_script(args[2])
                if real != args[2]:
                    original_sha = _sha1(args[2]).encode()
                    args = [args[0], args[1], real]

                    def post(reply: Any, _sha: bytes = original_sha) -> Any:
                        return reply if isinstance(reply, ResponseError) else _sha
            elif sub == "EXISTS":
                await self._load_sha_map({s.lower() for s in args[2:] if type(s) is str})
                args = [args[0], args[1], *(self._real_sha(s) for s in args[2:])]
        elif name == "CLIENT" and n > 1 and type(args[1]) is str \
                and args[1].upper() in _BLOCKED_CLIENT_SUBCOMMANDS:
            raise _Rejected(f"{name} {args[1].upper()}")
        return args, post

    async def _resolve_and_translate(self, prepared: list[Any], resolve: set[str]) -> None:
        await self._load_sha_map(resolve)
        for item in prepared:
            if isinstance(item, tuple):
                args = item[0]
                if type(args[0]) is str and args[0].upper() in _EVALSHA:
                    args[1] = self._real_sha(args[1])

    @staticmethod
    def _rejected_text(name: Any) -> str:
        return (f"ERR Command is not available: '{str(name).lower()}'. "
                "The local Upstash bridge does not support it (as on Upstash REST).")

    # ------------------------------------------------------------------ endpoints
    async def _single(self, raw: Any, encode: Callable[[Any], Any]) -> tuple[int, Any]:
        self.stats["commands"] += 1
        try:
            args, post = await self._prepare(raw, resolve=None)
        except _Rejected as exc:
            self.stats["errors"] += 1
            return 400, {"error": self._rejected_text(exc)}
        reply = (await self._roundtrip([args]))[0]
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT") \
                and type(args[0]) is str and args[0].upper() in _EVALSHA and type(args[1]) is str:
            # Maybe a script rewritten by another bridge process: consult the shared sha map.
            self.stats["noscript"] += 1
            sha = args[1].lower()
            await self._load_sha_map({sha})
            real = self._shas.get(sha)
            if real is not None and real != sha:
                args[1] = real
                self.stats["sha_translations"] += 1
                reply = (await self._roundtrip([args]))[0]
        if post is not None:
            reply = post(reply)
        if isinstance(reply, ResponseError):
            self.stats["errors"] += 1
            return 400, {"error": _error_text(reply)}
        return 200, {"result": encode(reply)}

    async def _prepare_batch(self, commands: list[Any]) -> list[Any]:
        """Each item is (args, post) or an error string for a command rejected up front."""
        self.stats["commands"] += len(commands)
        resolve: set[str] = set()
        prepared: list[Any] = []
        for raw in commands:
            try:
                prepared.append(await self._prepare(raw, resolve=resolve))
            except _Rejected as exc:
                prepared.append(self._rejected_text(exc))
            except _BadRequest as exc:
                prepared.append(exc.message)
        if resolve:
            await self._resolve_and_translate(prepared, resolve)
        return prepared

    def _item(self, reply: Any, post: _Post, encode: Callable[[Any], Any]) -> dict[str, Any]:
        if post is not None:
            reply = post(reply)
        if isinstance(reply, ResponseError):
            self.stats["errors"] += 1
            if str(reply).startswith("NOSCRIPT"):
                self.stats["noscript"] += 1
            return {"error": _error_text(reply)}
        return {"result": encode(reply)}

    async def _pipeline(self, commands: list[Any], encode: Callable[[Any], Any]) -> tuple[int, Any]:
        if not commands:
            return 200, []
        prepared = await self._prepare_batch(commands)
        to_send = [item[0] for item in prepared if isinstance(item, tuple)]
        replies = iter(await self._roundtrip(to_send) if to_send else [])
        out = []
        for item in prepared:
            if isinstance(item, tuple):
                out.append(self._item(next(replies), item[1], encode))
            else:
                self.stats["errors"] += 1
                out.append({"error": item})
        return 200, out

    async def _multi_exec(self, commands: list[Any], encode: Callable[[Any], Any]) -> tuple[int, Any]:
        if not commands:
            return 200, []
        prepared = await self._prepare_batch(commands)
        for item in prepared:
            if not isinstance(item, tuple):  # refused before queueing: abort like Redis would
                self.stats["errors"] += 1
                return 400, {"error": "EXECABORT Transaction discarded because of previous errors: "
                                      + item}
        replies = await self._roundtrip([["MULTI"], *(item[0] for item in prepared), ["EXEC"]])
        queue_errors = [r for r in replies[1:-1] if isinstance(r, ResponseError)]
        result = replies[-1]
        if isinstance(result, ResponseError) or isinstance(replies[0], ResponseError):
            self.stats["errors"] += 1
            message = _error_text(result if isinstance(result, ResponseError) else replies[0])
            if queue_errors:
                message = f"{message.rstrip('.')}: {_error_text(queue_errors[0])}"
            return 400, {"error": message}
        if result is None:  # pragma: no cover - only possible with WATCH, which is refused
            return 400, {"error": "EXECABORT Transaction aborted"}
        return 200, [self._item(reply, item[1], encode)
                     for reply, item in zip(result, prepared, strict=True)]


def create_app(redis_url: str = DEFAULT_REDIS_URL, token: str = DEFAULT_TOKEN,
               **kwargs: Any) -> UpstashBridge:
    """Build the bridge ASGI app (``kwargs``: sha_map_key, max_connections, max_body_bytes)."""
    return UpstashBridge(redis_url, token, **kwargs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.upstash_bridge",
        description="Upstash Redis REST API on top of a local Redis (for upstash-redis/upstash-ratelimit).")
    parser.add_argument("--host", default=os.environ.get("UPSTASH_BRIDGE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("UPSTASH_BRIDGE_PORT", DEFAULT_PORT)))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--token", default=os.environ.get("UPSTASH_REDIS_REST_TOKEN", DEFAULT_TOKEN))
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    logging.basicConfig(level=args.log_level.upper())
    app = create_app(args.redis_url, args.token)
    print(f"upstash bridge: http://{args.host}:{args.port} -> {args.redis_url}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                lifespan="on")


if __name__ == "__main__":
    main()
