"""The services a benchmark run needs, each in its own process, and how to start our gateway.

``start_services()`` gives one throw-away Postgres database (migrated, with a dev user on an
unlimited tier, credit and an API key), the Upstash REST bridge on the real Redis wrapped by a
command counter (bench/upstash_counter.py) and ONE fake provider server that every gateway in a
run talks to. ``gateway_env()`` is the environment our functions need to use them.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import cpu_seconds
from infra.local.servers import free_port
from tests.support import services

ROOT = Path(__file__).resolve().parents[1]
UNLIMITED_TIERS = json.dumps({"enterprise": {"rpm": 10_000_000}})
BENCH_CREDIT = 100_000  # USD, so no run is ever refused for credit


def grant_bench_credit(database_url: str, user_id: str) -> None:
    """Put the user on an unlimited tier (see UNLIMITED_TIERS) and give it credit through the ledger."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET tier = 'enterprise' WHERE id = %s", (user_id,))
        conn.execute("INSERT INTO ledger_entries (user_id, amount, kind, reference) VALUES (%s, %s, 'grant', %s)",
                     (user_id, BENCH_CREDIT, f"bench-credit:{user_id}"))  # references are unique: one per user
        conn.execute("UPDATE balances SET balance = balance + %s WHERE user_id = %s", (BENCH_CREDIT, user_id))


# --------------------------------------------------------------------------- processes
@dataclass
class Proc:
    """A child process in its own session (stopped with its children), output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.perf_counter)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=5)
        self.log.unlink(missing_ok=True)


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Proc:
    fd, path = tempfile.mkstemp(prefix=f"mlp-bench-{name}-", suffix=".log")
    popen = subprocess.Popen(argv, cwd=cwd, env=env if env is not None else dict(os.environ),
                             stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True)
    os.close(fd)
    return Proc(name, popen, Path(path))


def import_bundle_env(tree: Path = ROOT) -> dict[str, str]:
    """The query function's import bundle, as the layer build writes it (``gateway.import_bundle``,
    template.yaml's ``GATEWAY_IMPORT_BUNDLE``): the modules of ``tree``'s
    ``layers/common/coldstart-modules.txt`` compiled from ``tree``'s gateway and this environment's
    packages, with the texts of its ``coldstart-compiles.json``, into ``.local/import-bundles/`` (once
    per tree and process), and the environment that names it. Empty for a tree without one (an older
    ref of ``bench.ab``)."""
    path = _import_bundle(tree.resolve())
    return {"GATEWAY_IMPORT_BUNDLE": path} if path else {}


@functools.cache
def _import_bundle(tree: Path) -> str | None:
    import hashlib
    import site

    common = tree / "layers" / "common"
    listing = common / "coldstart-modules.txt"
    if not listing.exists() or not (common / "gateway" / "import_bundle.py").exists():
        return None
    out = ROOT / ".local" / "import-bundles" / f"{hashlib.sha256(str(tree).encode()).hexdigest()[:12]}.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiles = common / "coldstart-compiles.json"  # the texts the cold start compiles (a tree before them: none)
    subprocess.run([sys.executable, "-m", "gateway.import_bundle", str(out), str(listing), str(common),
                    *site.getsitepackages(), *(["--compiles", str(compiles)] if compiles.exists() else [])],
                   cwd=common, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(common)})
    return str(out)


def http_status(url: str, *, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                timeout: float = 2.0) -> int | None:
    """Status of one GET (or JSON POST when ``body`` is given); None if nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return None


def wait_until(proc: Proc, url: str, *, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
               timeout: float = 60.0, ok: tuple[int, ...] = (200,)) -> float:
    """Poll ``url`` until it answers with an ``ok`` status; seconds since the process was spawned."""
    deadline = time.monotonic() + timeout
    refusals = 0
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        status = http_status(url, body=body, headers=headers)
        if status in ok:
            return time.perf_counter() - proc.started
        refusals = refusals + 1 if status is not None else 0
        if refusals >= 100:  # it is up, but keeps refusing the request: not worth waiting for
            raise RuntimeError(f"{proc.name} answers {url} with HTTP {status}:\n{proc.tail()}")
        time.sleep(0.01)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f} s:\n{proc.tail()}")


# --------------------------------------------------------------------------- the services
@dataclass
class Services:
    database_url: str
    upstream: str            # fake providers server; OpenAI lives under /openai/v1
    upstash_url: str
    upstash_token: str
    user_id: str
    api_key: str
    procs: list[Proc]
    # our keys in the shared Redis (rate limits, the rendered catalogue): never another run's
    redis_prefix: str = field(default_factory=lambda: "mlpbench-" + secrets.token_hex(4))

    @property
    def openai_base(self) -> str:
        return f"{self.upstream}/openai/v1"

    def release_left_holds(self) -> int:
        """Give back the carried holds a stopped gateway process left (docs/money.md "Carried
        holds"): as the sweeper would once they are past their time (``CARRY_HOLD_S``), but now.
        Every process of a run serves the same user, and each one stopped leaves up to
        ``CARRY_PER_KEY`` idle holds for 30 s, counted among the user's requests in flight: a run
        that starts the next process at once would otherwise meet the in-flight cap (429) at c=16,
        which a user whose containers are not killed every few seconds does not. Through the money
        function itself (``mlp_release_standing``), so the books stay balanced."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            keys = conn.execute(
                "UPDATE reservations SET standing_until = now() - interval '1 second' "
                "WHERE user_id = %s AND standing_until IS NOT NULL RETURNING api_key_id",
                (self.user_id,)).fetchall()
            released = 0
            for (key_id,) in set(keys):
                row = conn.execute("SELECT mlp_release_standing(%s, %s, NULL, date_trunc('month', "
                                   "now() AT TIME ZONE 'UTC')::date)", (self.user_id, key_id)).fetchone()
                released += row[0] if row else 0
            return released

    def gateway_env(self, **extra: str) -> dict[str, str]:
        """Environment for our functions: the local stage, these services, logs at ERROR."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("UPSTASH_", "OPENAI_", "OPENROUTER_", "ANTHROPIC_", "GEMINI_", "COMPAT_",
                                    "RATELIMIT_", "POWERTOOLS_", "AWS_LAMBDA_", "DATABASE_URL", "TIERS_JSON"))}
        env.update({"STAGE": "local", "DATABASE_URL": self.database_url, "TIERS_JSON": UNLIMITED_TIERS,
                    "UPSTASH_REDIS_REST_URL": self.upstash_url, "UPSTASH_REDIS_REST_TOKEN": self.upstash_token,
                    "RATELIMIT_PREFIX": self.redis_prefix, "OPENAI_BASE_URL": self.openai_base,
                    "OPENAI_API_KEY": "sk-fake-openai", "POWERTOOLS_LOG_LEVEL": "ERROR",
                    "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
                    # as template.yaml's Globals: the service (EMF dimension, log key) is the stack name
                    "POWERTOOLS_SERVICE_NAME": "mlp-prod", "POWERTOOLS_METRICS_NAMESPACE": "MultiLLM",
                    # The dev venv has setuptools (make install, the packaging test), whose
                    # distutils-precedence.pth puts a finder in front of EVERY import of every process
                    # (~5.8 M instructions of the query function's spawn, 0.3 %); the layer and Lambda's
                    # python3.12 have no setuptools. Its documented switch leaves the finder out, as
                    # compile_sources gives the processes the bytecode the layer ships (BENCHMARKS.md, spawn7).
                    "SETUPTOOLS_USE_DISTUTILS": "stdlib"})
        env.update(extra)
        return env

    def upstash_commands(self) -> int:
        """Commands the bridge has executed so far (each command of a pipeline counts, as Upstash bills)."""
        req = urllib.request.Request(f"{self.upstash_url}/__bench/commands")
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(json.loads(r.read())["commands"])

    def db_activity(self) -> tuple[float, int]:
        """(ms spent executing statements, committed transactions) in the bench database so far.

        Postgres publishes a backend's counters when it goes idle (at most once a second) and when
        it disconnects: close the measured connections (or wait >10 s) before reading."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT active_time, xact_commit FROM pg_stat_database "
                               "WHERE datname = current_database()").fetchone()
        assert row is not None
        return float(row[0] or 0), int(row[1] or 0)

    def backend_cpu_seconds(self) -> dict[int, float]:
        """CPU seconds used so far by each Postgres backend serving the bench database (other than
        this query's own connection): the server side of our statements, from /proc."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            pids = [int(r[0]) for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        return {pid: cpu_seconds([pid]) for pid in pids}

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        services.drop_database(self.database_url)


def _seed(database_url: str) -> tuple[str, str]:
    """The dev user and key (infra/local/devserver.seed), with the bench credit."""
    code = "import asyncio, json; from infra.local.devserver import seed; print(json.dumps(asyncio.run(seed({}))))"
    return _bench_user(database_url, code, "seeding the bench database")


def add_user(database_url: str, email: str) -> tuple[str, str]:
    """Another bench user with its own key and the bench credit: a second gateway process measured
    beside the first (``bench.ab``'s other side) then neither shares that user's in-flight cap,
    balance row and rate limit, nor counts the other's carried holds."""
    code = ("import asyncio, json, sys\n"
            "from gateway import db\n"
            "from gateway.account import users\n"
            "async def main():\n"
            "    try:\n"
            "        user_id = await users.create_user(sys.argv[1])\n"
            "        return str(user_id), (await users.create_api_key(user_id, 'bench')).secret\n"
            "    finally:\n"
            "        await db.close_pool()\n"
            "print(json.dumps(asyncio.run(main())))")
    return _bench_user(database_url, code, "adding a bench user", email)


def _bench_user(database_url: str, code: str, what: str, *argv: str) -> tuple[str, str]:
    """Run ``code`` (which prints ``[user_id, api_key]``) in a child process, then grant that user the
    bench credit. A child: importing the gateway fixes its observability settings (tracer on/off),
    and the Lambda benchmark has to import it later, under a Lambda environment."""
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.strip()[-500:]}")
    user_id, api_key = json.loads(done.stdout.strip().splitlines()[-1])
    grant_bench_credit(database_url, user_id)
    return str(user_id), str(api_key)


def start_services(prefix: str = "mlp_bench") -> Services:
    services.ensure_services()
    database_url = services.create_database(prefix)
    procs: list[Proc] = []
    try:
        from gateway.migrate import migrate

        migrate(database_url)
        user_id, api_key = _seed(database_url)
        up_port, rest_port = free_port(), free_port()
        upstream = spawn("upstream", [sys.executable, "-m", "infra.local.fake_providers", "--port", str(up_port)])
        procs.append(upstream)
        token = "bench-" + secrets.token_hex(8)
        bridge = spawn("upstash", [sys.executable, "-m", "bench.upstash_counter", "--port", str(rest_port),
                                   "--redis-url", services.REDIS_URL, "--token", token])
        procs.append(bridge)
        wait_until(upstream, f"http://127.0.0.1:{up_port}/__fake/health")
        wait_until(bridge, f"http://127.0.0.1:{rest_port}/__bench/commands")
    except BaseException:
        for proc in procs:
            proc.stop()
        services.drop_database(database_url)
        raise
    return Services(database_url=database_url, upstream=f"http://127.0.0.1:{up_port}",
                    upstash_url=f"http://127.0.0.1:{rest_port}", upstash_token=token, user_id=user_id,
                    api_key=api_key, procs=procs)
