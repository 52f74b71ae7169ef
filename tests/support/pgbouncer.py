"""A real PgBouncer (Debian's ``pgbouncer`` package; .ci/services.sh installs it) in transaction
mode in front of the test Postgres, as Neon's ``-pooler`` endpoint and Supabase's port 6543 are:
each transaction may run on a different server connection, startup ``options`` are refused and
server-side prepared statements break.

It runs unprivileged (``-u nobody`` when the tests run as root) on a free loopback port with a
generated configuration, logging to a file next to it; ``stop()`` ends exactly that process.

``TEST_DB_VIA=pgbouncer`` runs the suite's gateway connections through it (``make
test-pgbouncer``): tests/integration/conftest.py and tests/e2e/conftest.py then give the gateway
``DATABASE_URL`` = the pooled URL and ``DATABASE_DIRECT_URL`` = the direct one (migrations and
the tests' own bookkeeping connections use the direct one).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from infra.local.servers import free_port

UPSTREAM_HOST = "127.0.0.1"
UPSTREAM_PORT = 5432
BINARY_CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer")


def via_pgbouncer() -> bool:
    return os.environ.get("TEST_DB_VIA", "").lower() == "pgbouncer"


def binary() -> str:
    for candidate in BINARY_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError("pgbouncer is not installed: `apt-get install pgbouncer` (.ci/services.sh does it)")


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pooled(self, direct_url: str) -> str:
        """The same database as ``direct_url``, through this PgBouncer."""
        return self.url(direct_url.rsplit("/", 1)[-1])

    @property
    def log(self) -> str:
        try:
            return (self.directory / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start(pool_size: int = 5) -> PgBouncer:
    directory = Path(tempfile.mkdtemp(prefix="mlp-pgbouncer-"))
    directory.chmod(0o755)
    port = free_port()
    log = directory / "pgbouncer.log"
    log.touch()
    log.chmod(0o666)  # written after the switch to the unprivileged user
    config = directory / "pgbouncer.ini"
    config.write_text(f"""[databases]
* = host={UPSTREAM_HOST} port={UPSTREAM_PORT} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
server_lifetime = 3600
logfile = {log}
pidfile =
""", encoding="utf-8")
    config.chmod(0o644)
    argv = [binary()]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # PgBouncer refuses to run as root
    process = subprocess.Popen([*argv, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                               start_new_session=True)
    bouncer = PgBouncer(port=port, process=process, directory=directory)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited ({process.returncode}):\n{bouncer.log[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return bouncer
        except OSError:
            if time.monotonic() > deadline:
                bouncer.stop()
                raise RuntimeError("pgbouncer did not start listening") from None
            time.sleep(0.05)
