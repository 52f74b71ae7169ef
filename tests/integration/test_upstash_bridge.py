"""The local Upstash REST bridge against a real Redis, driven by the real upstash-redis and
upstash-ratelimit clients (no mocks).

Needs the real Redis (tests/support/services.py: ``TEST_REDIS_URL``, default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import uuid
from urllib.parse import quote

import httpx
import pytest
import redis
from upstash_ratelimit import FixedWindow, Ratelimit, SlidingWindow, TokenBucket
from upstash_ratelimit.asyncio import Ratelimit as AsyncRatelimit
from upstash_redis import Redis
from upstash_redis.asyncio import Redis as AsyncRedis
from upstash_redis.errors import UpstashError

from infra.local.servers import free_port, start_in_thread
from infra.local.upstash_bridge import (
    UpstashBridge,
    _strip_upstash_shebang,
    create_app,
)
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.integration

ENCODINGS = [pytest.param("base64", id="base64"), pytest.param(None, id="plain")]
SHEBANG_SCRIPT = """#!lua flags=allow-key-locking
local v = redis.call("INCRBY", KEYS[1], ARGV[1])
return {v, KEYS[1], "ünïcode", {1, "x"}}
"""


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def raw() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # Redis is part of the test stack: unreachable is a failure, not a skip
    yield client
    client.close()


@pytest.fixture(scope="module")
def sha_map_key(raw: redis.Redis) -> str:
    key = f"__upstash_bridge:shas:test:{uuid.uuid4().hex}"
    yield key
    raw.delete(key)


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def bridge_app(raw: redis.Redis, token: str, sha_map_key: str) -> UpstashBridge:
    return create_app(REDIS_URL, token, sha_map_key=sha_map_key)


@pytest.fixture(scope="module")
def url(bridge_app: UpstashBridge) -> str:
    server = start_in_thread(bridge_app)
    yield server.url
    server.stop()


@pytest.fixture
def prefix(raw: redis.Redis) -> str:
    p = f"test:ubridge:{uuid.uuid4().hex[:12]}:"
    yield p
    keys = list(raw.scan_iter(match=p + "*", count=1000))
    if keys:
        raw.delete(*keys)


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_HTTP = httpx.Client(timeout=30)  # one client: creating one per request costs ~30 ms


@pytest.fixture(scope="module", autouse=True)
def _close_http_client() -> None:
    yield
    _HTTP.close()


def _post(url: str, path: str, body: object, headers: dict[str, str]) -> httpx.Response:
    return _HTTP.post(url + path, json=body, headers=headers)


# ---------------------------------------------------------------------------------------- client: basics
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sync_client_basic_commands(url: str, token: str, prefix: str, encoding: str | None) -> None:
    k = prefix + "k"
    with Redis(url, token, rest_encoding=encoding) as r:
        assert r.set(k, "value", ex=100) is True
        assert r.get(k) == "value"
        assert 90 < r.ttl(k) <= 100
        assert r.get(prefix + "missing") is None

        assert r.incr(prefix + "n") == 1
        assert r.incrby(prefix + "n", 41) == 42
        assert r.get(prefix + "n") == "42"
        assert r.expire(prefix + "n", 50) is True
        assert 40 < r.ttl(prefix + "n") <= 50
        assert r.ttl(prefix + "missing") == -2

        assert r.hset(prefix + "h", values={"a": "1", "b": "ü€😀"}) == 2
        assert r.hgetall(prefix + "h") == {"a": "1", "b": "ü€😀"}
        assert r.hget(prefix + "h", "b") == "ü€😀"

        assert r.zadd(prefix + "z", {"m1": 1.5, "m2": 3, "m0": -2}) == 3
        assert r.zrange(prefix + "z", 0, -1) == ["m0", "m1", "m2"]
        assert r.zrange(prefix + "z", 0, -1, withscores=True) == [("m0", -2.0), ("m1", 1.5), ("m2", 3.0)]
        assert r.zscore(prefix + "z", "m1") == 1.5

        assert r.exists(k, prefix + "n", prefix + "missing") == 2
        assert r.mget(k, prefix + "missing", prefix + "n") == ["value", None, "42"]

        # Unicode, control characters, values that look like base64 or like the "OK" status.
        values = ["héllo wörld ✓ 😀", "\x00\x01\x7f\u00ff tab\tnl\n", "T0s=", "OK", "", "  "]
        for i, value in enumerate(values):
            assert r.set(f"{prefix}v{i}", value) is True
            assert r.get(f"{prefix}v{i}") == value

        assert r.delete(k, prefix + "n", prefix + "h", prefix + "z", prefix + "missing") == 4
        assert r.exists(k) == 0


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_async_client_basic_commands(url: str, token: str, prefix: str, encoding: str | None) -> None:
    async with AsyncRedis(url, token, rest_encoding=encoding) as r:
        assert await r.set(prefix + "k", "wert ✓", nx=True) is True
        assert await r.set(prefix + "k", "other", nx=True) is False  # nil reply
        assert await r.get(prefix + "k") == "wert ✓"
        assert await r.incr(prefix + "n") == 1
        assert await r.expire(prefix + "n", 30) is True
        assert 20 < await r.ttl(prefix + "n") <= 30
        assert await r.hset(prefix + "h", "f", "v") == 1
        assert await r.hgetall(prefix + "h") == {"f": "v"}
        assert await r.zadd(prefix + "z", {"a": 1, "b": 2}) == 2
        assert await r.zrange(prefix + "z", 0, -1, withscores=True) == [("a", 1.0), ("b", 2.0)]
        assert await r.mget(prefix + "k", prefix + "n") == ["wert ✓", "1"]
        assert await r.exists(prefix + "k", prefix + "h") == 2
        cursor, keys = await r.scan(0, match=prefix + "*", count=1000)
        assert cursor == 0 or isinstance(cursor, int)
        assert set(keys) <= {prefix + s for s in ("k", "n", "h", "z")}
        assert await r.delete(prefix + "k", prefix + "n", prefix + "h", prefix + "z") == 4


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sync_pipeline_and_multi_exec(url: str, token: str, prefix: str, encoding: str | None) -> None:
    with Redis(url, token, rest_encoding=encoding) as r:
        p = r.pipeline()
        p.set(prefix + "a", "1")
        p.incr(prefix + "a")
        p.get(prefix + "a")
        p.hset(prefix + "h", values={"x": "ü"})
        p.hgetall(prefix + "h")
        assert p.exec() == [True, 2, "2", 1, {"x": "ü"}]

        m = r.multi()
        m.incrby(prefix + "a", 10)
        m.get(prefix + "a")
        m.exists(prefix + "a", prefix + "nope")
        assert m.exec() == [12, "12", 1]


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_async_pipeline_and_multi_exec(url: str, token: str, prefix: str, encoding: str | None) -> None:
    async with AsyncRedis(url, token, rest_encoding=encoding) as r:
        p = r.pipeline()
        p.set(prefix + "a", "x")
        p.get(prefix + "a")
        p.zadd(prefix + "z", {"m": 2.5})
        p.zrange(prefix + "z", 0, -1, withscores=True)
        assert await p.exec() == [True, "x", 1, [("m", 2.5)]]

        m = r.multi()
        m.set(prefix + "b", "1")
        m.incr(prefix + "b")
        assert await m.exec() == [True, 2]


# ---------------------------------------------------------------------------------------- errors & auth
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_redis_errors_keep_their_prefix(url: str, token: str, prefix: str,
                                              encoding: str | None) -> None:
    async with AsyncRedis(url, token, rest_encoding=encoding) as r:
        await r.set(prefix + "s", "not a number")
        with pytest.raises(UpstashError, match=r"^ERR value is not an integer or out of range"):
            await r.incr(prefix + "s")
        with pytest.raises(UpstashError, match=r"^WRONGTYPE Operation against a key"):
            await r.hgetall(prefix + "s")
        with pytest.raises(UpstashError, match=r"^ERR unknown command 'NOPE'"):
            await r.execute(["NOPE", "x"])
        with pytest.raises(UpstashError, match=r"^NOSCRIPT"):
            await r.evalsha("0" * 40)
        with pytest.raises(UpstashError, match=r"^ERR Command is not available: 'subscribe'"):
            await r.execute(["SUBSCRIBE", "chan"])
    with Redis(url, token, rest_encoding=encoding) as r:
        with pytest.raises(UpstashError, match=r"^ERR value is not an integer"):
            r.incr(prefix + "s")


def test_wrong_or_missing_token_is_rejected(url: str, token: str, prefix: str, raw: redis.Redis) -> None:
    with Redis(url, token + "x") as r, pytest.raises(UpstashError, match="Unauthorized"):
        r.set(prefix + "k", "v")
    assert raw.exists(prefix + "k") == 0

    resp = _HTTP.post(url, json=["GET", "x"])
    assert resp.status_code == 401
    assert resp.json() == {"error": "Unauthorized"}
    resp = _HTTP.post(url, json=["GET", "x"], headers={"Authorization": "Basic " + token})
    assert resp.status_code == 401
    resp = _HTTP.post(url + "/pipeline", json=[["GET", "x"]], headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401
    # Upstash also accepts the token as a query parameter.
    resp = _HTTP.post(url, params={"_token": token}, json=["SET", prefix + "q", "1"])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"result": "OK"}


async def test_wrong_token_async_client(url: str, token: str) -> None:
    async with AsyncRedis(url, "wrong-" + token) as r:
        with pytest.raises(UpstashError, match="Unauthorized"):
            await r.get("anything")


def test_malformed_bodies(url: str, auth: dict[str, str]) -> None:
    for content in (b"not json", b'{"a": 1}', b"[]", b'"GET"', b""):
        resp = _HTTP.post(url, content=content, headers=auth)
        assert resp.status_code == 400, content
        assert resp.json()["error"].startswith("ERR "), content
    resp = _HTTP.post(url + "/pipeline", content=b"[1, 2", headers=auth)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("ERR invalid JSON")
    resp = _HTTP.post(url + "/pipeline", json={"GET": "x"}, headers=auth)
    assert resp.status_code == 400
    resp = _HTTP.get(url + "/pipeline", headers=auth)
    assert resp.status_code == 405


def test_redis_unreachable_gives_json_error(token: str) -> None:
    app = create_app(f"redis://127.0.0.1:{free_port()}/0", token)
    server = start_in_thread(app)
    try:
        resp = _HTTP.post(server.url, json=["GET", "x"], headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 503
        assert resp.json()["error"].startswith("ERR upstash bridge cannot reach Redis")
        with Redis(server.url, token) as r, pytest.raises(UpstashError, match="cannot reach Redis"):
            r.get("x")
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- raw protocol
def test_raw_replies_have_resp2_shapes(url: str, auth: dict[str, str], prefix: str) -> None:
    def cmd(*args: object) -> object:
        resp = _post(url, "/", list(args), auth)
        assert resp.status_code == 200, resp.text
        assert resp.headers.get("upstash-sync-token")
        return resp.json()["result"]

    assert cmd("SET", prefix + "n", 10, "EX", 100) == "OK"  # numbers are sent as Redis arguments
    assert cmd("INCRBYFLOAT", prefix + "n", 0.5) == "10.5"
    assert cmd("EXPIRE", prefix + "n", 100.0) == 1
    assert cmd("GET", prefix + "missing") is None
    assert cmd("HSET", prefix + "h", "a", "1", "b", "2") == 2
    assert sorted(zip(*[iter(cmd("HGETALL", prefix + "h"))] * 2)) == [("a", "1"), ("b", "2")]
    assert cmd("ZADD", prefix + "z", 1.5, "x", 2, "y") == 2
    assert cmd("ZRANGE", prefix + "z", 0, -1, "WITHSCORES") == ["x", "1.5", "y", "2"]
    cursor, keys = cmd("SCAN", 0, "MATCH", prefix + "*", "COUNT", 1000)
    assert isinstance(cursor, str)
    assert isinstance(keys, list)
    assert cmd("EXISTS", prefix + "n", prefix + "h", prefix + "missing") == 2
    assert "redis_version:" in cmd("INFO", "server")
    assert cmd("PING") == "PONG"
    assert cmd("TYPE", prefix + "z") == "zset"
    assert cmd("EVAL", "return {1, 'two', {3, false}}", 0) == [1, "two", [3, None]]


def test_base64_encoding_is_recursive_and_binary_exact(url: str, auth: dict[str, str], prefix: str,
                                                       raw: redis.Redis) -> None:
    b64 = {**auth, "Upstash-Encoding": "base64"}
    raw.set(prefix + "bin", b"\xff\xfe\x00binary\x80")
    raw.hset(prefix + "h", mapping={"f": "ü"})

    def cmd(*args: object, headers: dict[str, str] = b64) -> object:
        resp = _post(url, "/", list(args), headers)
        assert resp.status_code == 200, resp.text
        return resp.json()["result"]

    assert base64.b64decode(cmd("GET", prefix + "bin")) == b"\xff\xfe\x00binary\x80"
    assert cmd("GET", prefix + "bin", headers=auth) == "\ufffd\ufffd\x00binary\ufffd"
    assert [base64.b64decode(x).decode() for x in cmd("HGETALL", prefix + "h")] == ["f", "ü"]
    assert cmd("SET", prefix + "s", "v") == "OK"  # the status reply stays plain, like Upstash
    assert cmd("GET", prefix + "s") == base64.b64encode(b"v").decode()
    assert cmd("INCR", prefix + "i") == 1
    assert cmd("GET", prefix + "missing") is None
    assert cmd("EVAL", "return {1, ARGV[1], {2, 'x'}}", 0, "é") == [
        1, base64.b64encode("é".encode()).decode(), [2, base64.b64encode(b"x").decode()]]

    commands = [["GET", prefix + "s"], ["INCR", prefix + "s"], ["TTL", prefix + "s"]]
    resp = _post(url, "/pipeline", commands, b64)
    assert resp.status_code == 200
    assert resp.json() == [{"result": "dg=="}, {"error": "ERR value is not an integer or out of range"},
                           {"result": -1}]


def test_pipeline_is_not_atomic_and_reports_errors_per_command(url: str, auth: dict[str, str], prefix: str,
                                                               raw: redis.Redis) -> None:
    resp = _post(url, "/pipeline", [
        ["SET", prefix + "a", "x"],
        ["INCR", prefix + "a"],
        ["NOSUCHCMD"],
        ["SUBSCRIBE", "c"],
        "not a command",
        ["SET", prefix + "b", "y"],
    ], auth)
    assert resp.status_code == 200
    out = resp.json()
    assert out[0] == {"result": "OK"}
    assert out[1]["error"].startswith("ERR value is not an integer")
    assert out[2]["error"].startswith("ERR unknown command 'NOSUCHCMD'")
    assert out[3]["error"].startswith("ERR Command is not available")
    assert out[4]["error"].startswith("ERR ")
    assert out[5] == {"result": "OK"}
    assert raw.get(prefix + "b") == b"y"
    assert _post(url, "/pipeline", [], auth).json() == []


def test_multi_exec_runtime_errors_and_abort(url: str, auth: dict[str, str], prefix: str,
                                             raw: redis.Redis) -> None:
    resp = _post(url, "/multi-exec", [["SET", prefix + "a", "x"], ["INCR", prefix + "a"],
                                      ["SET", prefix + "b", "2"]], auth)
    assert resp.status_code == 200
    out = resp.json()
    assert out[0] == {"result": "OK"}
    assert out[1]["error"].startswith("ERR value is not an integer")
    assert out[2] == {"result": "OK"}

    # A queue-time error discards the whole transaction.
    resp = _post(url, "/multi-exec", [["SET", prefix + "c", "1"], ["NOSUCHCMD", "x"]], auth)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("EXECABORT Transaction discarded")
    assert "NOSUCHCMD" in resp.json()["error"]
    assert raw.exists(prefix + "c") == 0
    resp = _post(url, "/multi-exec", [["SET", prefix + "c", "1"], ["WATCH", prefix + "c"]], auth)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith("EXECABORT")
    assert raw.exists(prefix + "c") == 0
    # The pooled connection is not left inside MULTI.
    assert _post(url, "/", ["GET", prefix + "b"], auth).json() == {"result": "2"}


def test_path_style_commands(url: str, auth: dict[str, str], prefix: str, raw: redis.Redis) -> None:
    key = prefix + "p/q ü"  # URL-encoded '/' stays inside the segment
    resp = _HTTP.get(f"{url}/set/{quote(key, safe='')}/hello%20world?EX=100", headers=auth)
    assert resp.json() == {"result": "OK"}, resp.text
    assert raw.get(key) == b"hello world"
    assert 90 < raw.ttl(key) <= 100
    resp = _HTTP.post(url + "/set/" + prefix + "body", content="from the body ✓".encode(), headers=auth)
    assert resp.json() == {"result": "OK"}
    assert raw.get(prefix + "body") == "from the body ✓".encode()
    assert _HTTP.get(url + "/get/" + prefix + "body", headers=auth).json() == {"result": "from the body ✓"}
    assert _HTTP.get(url + "/incr/" + prefix + "n", headers=auth).json() == {"result": 1}
    assert _HTTP.get(url + "/", headers=auth).status_code == 400


# ---------------------------------------------------------------------------------------- Lua & shas
def test_shebang_rewrite_rules() -> None:
    assert _strip_upstash_shebang("#!lua flags=allow-key-locking\nreturn 1") == "\nreturn 1"
    assert _strip_upstash_shebang("#!lua flags=no-writes,allow-key-locking\nreturn 1") == \
        "#!lua flags=no-writes\nreturn 1"
    assert _strip_upstash_shebang("#!lua flags=no-writes\nreturn 1") is None
    assert _strip_upstash_shebang("#!lua\nreturn 1") is None
    assert _strip_upstash_shebang("#!python flags=allow-key-locking\n") is None


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_shebang_scripts_eval_evalsha_script_load(url: str, token: str, prefix: str, raw: redis.Redis,
                                                  bridge_app: UpstashBridge, sha_map_key: str,
                                                  encoding: str | None) -> None:
    script = SHEBANG_SCRIPT  # fixed text: nothing new piles up in the Redis script cache per run
    original_sha = _sha1(script)
    real_sha = _sha1(_strip_upstash_shebang(script) or "")
    # Stock Redis rejects the Upstash-only flag; that is why the bridge exists.
    with pytest.raises(redis.ResponseError, match="shebang"):
        raw.eval(script, 1, prefix + "x", 1)

    with Redis(url, token, rest_encoding=encoding) as r:
        assert r.eval(script, keys=[prefix + "c"], args=[5]) == [5, prefix + "c", "ünïcode", [1, "x"]]
        assert raw.hget(sha_map_key, original_sha) == real_sha.encode()
        assert raw.script_exists(real_sha) == [True]
        # EVALSHA with the sha the client computed over the original text hits the cached script.
        assert r.evalsha(original_sha, keys=[prefix + "c"], args=[1])[0] == 6
        assert r.script_exists(original_sha, "0" * 40) == [True, False]
        # SCRIPT LOAD returns the original sha, as Upstash does.
        assert r.script_load(script) == original_sha
        p = r.pipeline()
        p.evalsha(original_sha, keys=[prefix + "c"], args=[1])
        p.script_load(script)
        assert p.exec()[1] == original_sha
        assert r.get(prefix + "c") == "7"


def test_flags_other_than_upstash_ones_are_kept(url: str, token: str, prefix: str) -> None:
    with Redis(url, token) as r:
        r.set(prefix + "k", "v")
        read = "#!lua flags=no-writes,allow-key-locking\nreturn redis.call('GET', KEYS[1])"
        assert r.eval_ro(read, keys=[prefix + "k"]) == "v"
        write = "#!lua flags=no-writes,allow-key-locking\nreturn redis.call('SET', KEYS[1], 'x')"
        with pytest.raises(UpstashError, match="Write commands are not allowed from read-only scripts"):
            r.eval(write, keys=[prefix + "k"])
        assert r.get(prefix + "k") == "v"
        assert r.evalsha_ro(_sha1(read), keys=[prefix + "k"]) == "v"


def test_evalsha_resolved_by_another_bridge_process(url: str, token: str, prefix: str, sha_map_key: str,
                                                    raw: redis.Redis) -> None:
    script = SHEBANG_SCRIPT
    with Redis(url, token) as r:
        assert r.eval(script, keys=[prefix + "c"], args=[1])[0] == 1
    # A second bridge (empty in-memory caches) finds the mapping in the shared Redis hash.
    other = create_app(REDIS_URL, token, sha_map_key=sha_map_key)
    server = start_in_thread(other)
    try:
        with Redis(server.url, token) as r2:
            assert r2.evalsha(_sha1(script), keys=[prefix + "c"], args=[1])[0] == 2
            assert other.stats["sha_map_lookups"] == 1
            assert r2.evalsha(_sha1(script), keys=[prefix + "c"], args=[1])[0] == 3
            assert other.stats["sha_map_lookups"] == 1  # cached in memory now
            assert other.stats["sha_translations"] >= 2
            p = r2.pipeline()
            p.evalsha(_sha1(script), keys=[prefix + "c"], args=[1])
            p.get(prefix + "c")
            assert p.exec()[1] == "4"
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- ratelimit
def _limiter_script_state(raw: redis.Redis, script: str, sha_map_key: str) -> tuple[bool, bytes | None]:
    real_sha = _sha1(_strip_upstash_shebang(script) or "")
    return raw.script_exists(real_sha)[0], raw.hget(sha_map_key, _sha1(script))


def test_sliding_window_sync(url: str, token: str, prefix: str, raw: redis.Redis,
                             bridge_app: UpstashBridge, sha_map_key: str) -> None:
    with Redis(url, token) as r:
        limiter = Ratelimit(r, SlidingWindow(max_requests=5, window=60), prefix=prefix + "rl")
        noscript_before = bridge_app.stats["noscript"]
        results = [limiter.limit("user-1") for _ in range(7)]
        assert [x.allowed for x in results] == [True] * 5 + [False] * 2
        assert [x.remaining for x in results] == [4, 3, 2, 1, 0, 0, 0]
        assert all(x.limit == 5 for x in results)
        assert limiter.get_remaining("user-1") == 0
        assert limiter.limit("user-2").allowed  # identifiers are independent
        # The shebang-stripped script is cached in Redis and mapped from the client's sha.
        exists, mapped = _limiter_script_state(raw, SlidingWindow.SCRIPT, sha_map_key)
        assert exists
        assert mapped == _sha1(_strip_upstash_shebang(SlidingWindow.SCRIPT) or "").encode()
        assert bridge_app.stats["noscript"] == noscript_before
        # The limiter's script is reachable by the sha of its original text (EVALSHA path).
        assert r.script_exists(_sha1(SlidingWindow.SCRIPT)) == [True]
        now_key_remaining = r.evalsha(_sha1(SlidingWindow.SCRIPT),
                                      keys=[prefix + "rl:user-3:0", prefix + "rl:user-3:-1"],
                                      args=[5, 1000, 60000, 1])
        assert now_key_remaining == 4


async def test_sliding_window_async(url: str, token: str, prefix: str, bridge_app: UpstashBridge) -> None:
    async with AsyncRedis(url, token) as r:
        limiter = AsyncRatelimit(r, SlidingWindow(max_requests=3, window=30), prefix=prefix + "rl")
        rewrites_before = bridge_app.stats["script_rewrites"]
        noscript_before = bridge_app.stats["noscript"]
        results = [await limiter.limit("ip-1") for _ in range(5)]
        assert [(x.allowed, x.remaining) for x in results] == [
            (True, 2), (True, 1), (True, 0), (False, 0), (False, 0)]
        assert await limiter.get_remaining("ip-1") == 0
        # The script was rewritten at most once in this bridge (cached), never hit NOSCRIPT.
        assert bridge_app.stats["script_rewrites"] - rewrites_before <= 1
        assert bridge_app.stats["noscript"] == noscript_before


def test_fixed_window_and_token_bucket(url: str, token: str, prefix: str) -> None:
    with Redis(url, token) as r:
        fixed = Ratelimit(r, FixedWindow(max_requests=2, window=60), prefix=prefix + "fw")
        assert [fixed.limit("a").allowed for _ in range(3)] == [True, True, False]
        bucket = Ratelimit(r, TokenBucket(max_tokens=3, refill_rate=1, interval=60), prefix=prefix + "tb")
        out = [bucket.limit("a") for _ in range(4)]
        assert [(x.allowed, x.remaining) for x in out] == [(True, 2), (True, 1), (True, 0), (False, 0)]
        assert bucket.get_remaining("a") == 0


async def test_token_bucket_async(url: str, token: str, prefix: str) -> None:
    async with AsyncRedis(url, token, rest_encoding=None) as r:
        limiter = TokenBucket(max_tokens=2, refill_rate=1, interval=60)
        bucket = AsyncRatelimit(r, limiter, prefix=prefix + "tb")
        out = [await bucket.limit("b") for _ in range(3)]
        assert [x.allowed for x in out] == [True, True, False]


async def test_concurrent_requests_share_the_pool(url: str, token: str, prefix: str) -> None:
    async with AsyncRedis(url, token) as r:
        results = await asyncio.gather(*(r.incr(prefix + "ctr") for _ in range(100)))
        assert sorted(results) == list(range(1, 101))
        pipes = []
        for i in range(20):
            p = r.multi()
            p.incr(prefix + "ctr2")
            p.set(f"{prefix}m{i}", i)
            pipes.append(p.exec())
        out = await asyncio.gather(*pipes)
        assert sorted(o[0] for o in out) == list(range(1, 21))
        assert await r.get(prefix + "ctr") == "100"
