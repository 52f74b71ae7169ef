"""functions/query/serve.py (what run.sh execs for QueryStreamFunction) serves ``stream_app`` with the
uvicorn configuration ``python -m uvicorn app:stream_app --host 0.0.0.0 --port $PORT --no-access-log
--loop uvloop --http httptools`` built, without importing uvicorn's command-line module (click, the
supervisors), and leaves ``uvicorn.main`` importable as the real module."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.apps import in_fresh_function

ROOT = Path(__file__).resolve().parents[2]

_COMPARE = """
import json, os, sys
os.environ['PORT'] = '18123'
os.environ['GATEWAY_COLD_START'] = 'serve'
import serve
loaded = sorted(m for m in ('uvicorn.main', 'click', 'uvicorn.supervisors', 'multiprocessing') if m in sys.modules)
import app, uvicorn, uvicorn.main
captured = {}
uvicorn.main.run = lambda target, **kwargs: captured.update(kwargs, app=target)
uvicorn.main.main.main(['app:stream_app', '--host', '0.0.0.0', '--port', os.environ['PORT'], '--no-access-log',
                        '--loop', 'uvloop', '--http', 'httptools'], standalone_mode=False)
app_dir = captured.pop('app_dir')  # run() puts it on sys.path: '' (the working directory, serve.py's own)
cli = uvicorn.Config(**captured)
ours = serve.config()
assert cli.app == 'app:stream_app' and ours.app is app.stream_app
skip = {'app', 'log_config'}  # serve sets uvicorn's loggers itself (test below), the CLI through dictConfig
skip.add('http')  # serve's is httptools' protocol on HeldHead (tests/integration/test_serve_held_head.py)
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
http = [cli.http, issubclass(ours.http, HttpToolsProtocol), ours.http.__mro__[1] is HttpToolsProtocol]
differ = sorted(k for k in set(vars(cli)) | set(vars(ours)) if k not in skip and vars(cli).get(k) != vars(ours).get(k))
print(json.dumps([loaded, differ, app_dir, type(uvicorn.main).__name__, hasattr(uvicorn.main, 'main'),
                  'app' in vars(app), 'handler' in vars(app), http,
                  [serve.BACKLOG, cli.backlog, serve.HOST, cli.host, serve._listener]]))
"""


def test_serve_configures_uvicorn_as_its_command_line_did_without_importing_it() -> None:
    loaded, differ, app_dir, kind, has_main, built, handled, http, early = json.loads(
        in_fresh_function("query", _COMPARE))
    assert loaded == []  # neither uvicorn's CLI nor its supervisors were imported by serve
    assert differ == []  # every other Config attribute as `python -m uvicorn app:stream_app ...` set it
    assert http == ["httptools", True, True]  # --http httptools: serve's protocol is httptools' own, subclassed
    assert app_dir == ""  # the CLI's sys.path[0] was the working directory, functions/query: serve.py's own
    assert kind == "module" and has_main  # `import uvicorn.main` afterwards: the real module
    assert not built and not handled  # run.sh's process: QueryFunction's buffered app not built
    # the socket serve.py listens on before the imports (run as the script): the CLI's host and backlog;
    # imported as a module (here) it binds none
    assert early == [2048, 2048, "0.0.0.0", "0.0.0.0", None]


_LOGGING = """
import json, logging, os, sys
os.environ['PORT'] = '18123'
os.environ['GATEWAY_COLD_START'] = 'serve'
{setup}

def state(name):
    logger = logging.getLogger(name)
    return [logging.getLevelName(logger.level), logger.propagate, logger.disabled,
            [[h.name, type(h).__name__, h.stream is sys.stderr, h.stream is sys.stdout, h.level,
              type(h.formatter).__name__, h.formatter._fmt, h.formatter.use_colors] for h in logger.handlers]]

logging.getLogger('uvicorn.error').info('before')  # an existing child logger, as at uvicorn's import
print(json.dumps([{setup_loaded}] + [state(n) for n in ('uvicorn', 'uvicorn.error', 'uvicorn.access', 'uvicorn.asgi')]))
"""
_BY_SERVE = "import serve, app\nloaded = 'logging.config' in sys.modules\nserve.config()"
_BY_UVICORN = ("import uvicorn\nfrom uvicorn.config import Config, LOGGING_CONFIG\nloaded = True\n"
               "Config('app:stream_app', access_log=False)")


def test_serve_sets_uvicorns_loggers_as_its_default_log_config_does_without_logging_config() -> None:
    """``python -m uvicorn`` configures its loggers with ``logging.config.dictConfig(LOGGING_CONFIG)``;
    serve.py sets the same loggers, handlers and formatters itself, and never imports ``logging.config``."""
    ours = json.loads(in_fresh_function("query", _LOGGING.replace("{setup}", _BY_SERVE).replace(
        "{setup_loaded}", "loaded")))
    theirs = json.loads(in_fresh_function("query", _LOGGING.replace("{setup}", _BY_UVICORN).replace(
        "{setup_loaded}", "loaded")))
    assert ours[0] is False  # logging.config not imported by serve.py, its uvicorn or the app
    assert ours[1:] == theirs[1:]
    assert ours[1][3][0][:2] == ["default", "StreamHandler"]  # not vacuous: uvicorn's handler is there
    assert ours[3][3] == []  # --no-access-log: the access logger has no handler


def test_logging_config_imported_later_is_the_real_module() -> None:
    code = ("import os, json, sys\nos.environ['GATEWAY_COLD_START'] = 'serve'\nimport serve\n"
            "import logging\nlate = callable(logging.config.dictConfig)\nimport logging.config\n"
            "print(json.dumps([late, type(sys.modules['logging.config']).__name__, "
            "logging.config is sys.modules['logging.config']]))")
    # the attribute used before any import gives the real function; the import is the real module
    assert json.loads(in_fresh_function("query", code)) == [True, "module", True]


def test_the_buffered_app_is_built_on_first_access_in_run_sh_process() -> None:
    code = ("import os, json\nos.environ['GATEWAY_COLD_START'] = 'serve'\nimport sys, app\n"
            "before = 'mangum' in sys.modules\nhandler = app.handler\n"
            "print(json.dumps([before, 'mangum' in sys.modules, type(app.app).__name__, callable(handler),\n"
            "                  app.handler is handler and vars(app)['app'] is app.app]))")
    assert json.loads(in_fresh_function("query", code)) == [False, True, "LeanApp", True, True]


def test_query_function_builds_its_handler_during_the_import() -> None:
    code = ("import os, json, sys\nos.environ.pop('GATEWAY_COLD_START', None)\n"
            "os.environ['AWS_LAMBDA_FUNCTION_NAME'] = 'query'\nimport app\n"
            "print(json.dumps(['app' in vars(app), 'handler' in vars(app), 'mangum' in sys.modules]))")
    assert json.loads(in_fresh_function("query", code)) == [True, True, True]


_LISTENING = """
import asyncio, json, os, sys
os.environ.update(PORT='0', GATEWAY_COLD_START='serve')
{lambda_env}
import serve
before = 'anyio._backends._asyncio' in sys.modules

async def main():
    server = serve._Server(serve.config())
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    loader = server.loader
    if loader is not None:
        loader.join(10)
    loaded = 'anyio._backends._asyncio' in sys.modules
    server.should_exit = True
    await task
    return loader, loaded

loader, loaded = asyncio.run(main())
print(json.dumps([before, loader is not None and loader.name == 'anyio-backend' and loader.daemon, loaded]))
"""


def test_in_lambda_a_thread_imports_anyios_backend_once_the_server_listens() -> None:
    code = _LISTENING.format(lambda_env="os.environ['AWS_LAMBDA_FUNCTION_NAME'] = 'query-stream'")
    assert json.loads(in_fresh_function("query", code)) == [False, True, True]


def test_outside_lambda_no_thread_imports_it() -> None:
    code = _LISTENING.format(lambda_env="os.environ.pop('AWS_LAMBDA_FUNCTION_NAME', None)")
    assert json.loads(in_fresh_function("query", code)) == [False, False, False]


def test_run_sh_starts_python_in_the_function_directory_from_anywhere(tmp_path: Path) -> None:
    """run.sh finds its directory without `dirname` (Lambda's task root, else its own path): started
    by an absolute path, a relative one, from its own directory, or with LAMBDA_TASK_ROOT set, it
    execs `python -m serve` there, the layer (and Lambda's runtime directory) on PYTHONPATH: the function
    directory is not listed again (`-m` puts the working directory first: test_run_sh_path.py)."""
    query = ROOT / "functions" / "query"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$PWD|$PYTHONPATH|$GATEWAY_COLD_START|$*"\n')
    (fake / "python").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "PYTHONPATH": "/extra"}
    for cwd, argv, extra in ((tmp_path, [str(query / "run.sh")], {}),
                             (ROOT, ["functions/query/run.sh"], {}),
                             (query, ["./run.sh"], {}),
                             (query, ["run.sh"], {}),
                             (tmp_path, ["bash", str(query / "run.sh")], {}),
                             (tmp_path, [str(query / "run.sh")], {"LAMBDA_TASK_ROOT": str(query),
                                                                   "LAMBDA_RUNTIME_DIR": "/var/runtime"})):
        if argv == ["run.sh"]:
            argv = ["bash", "run.sh"]
        out = subprocess.run(argv, cwd=cwd, env={**env, **extra}, capture_output=True, text=True, check=True).stdout
        runtime = ":/var/runtime" if extra else ""
        assert out.strip() == f"{query}|/opt/python{runtime}:/extra|serve|-m serve", (argv, out)


# ----------------------------------------------------------------------------- listening early
# serve.py in a directory of its own beside a stand-in app.py (``stream_app`` answering 200 "ok"), whose
# import takes a while (or fails): what a client connecting during the imports meets.
_SLOW_APP = """
import os, sys, time
with open(os.environ["APP_IMPORTED_AT"] + ".db", "w") as f:  # serve.py asked for the first connection already
    f.write(repr(getattr(sys.modules.get("gateway.db"), "_early_opened", None)))
time.sleep(float(os.environ["APP_IMPORT_S"]))
if os.environ.get("APP_BROKEN"):
    raise RuntimeError("the app's import failed")
with open(os.environ["APP_IMPORTED_AT"], "w") as f:
    f.write(repr(time.monotonic()))


async def stream_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def _serve_beside(tmp_path: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    (tmp_path / "serve.py").write_text((ROOT / "functions" / "query" / "serve.py").read_text())
    (tmp_path / "app.py").write_text(_SLOW_APP)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LWA_", "READINESS_CHECK"))}
    environ.update({"PORT": str(port), "GATEWAY_COLD_START": "serve", "APP_IMPORT_S": "1.0",
                    "APP_IMPORTED_AT": str(tmp_path / "imported"), "PYTHONPATH": str(ROOT / "layers" / "common"),
                    **env})
    return subprocess.Popen([sys.executable, "-m", "serve"], cwd=tmp_path, env=environ,  # as run.sh starts it
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _connect_when_accepted(port: int, proc: subprocess.Popen[bytes], timeout: float = 20
                           ) -> tuple[socket.socket, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            time.sleep(0.005)
            continue
        return sock, time.monotonic()
    raise AssertionError(f"never accepted (exit status {proc.poll()})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_listens_before_the_app_imports_and_answers_once_it_has(tmp_path: Path) -> None:
    """The port listens from the top of serve.py: a client connecting during the imports is queued
    by the kernel and answered once uvicorn serves (no refused connection, no poll interval lost)."""
    port = _free_port()
    proc = _serve_beside(tmp_path, port)
    try:
        sock, accepted_at = _connect_when_accepted(port, proc)
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        imported_at = float((tmp_path / "imported").read_text())
    finally:
        proc.terminate()
        proc.wait(10)
    # the database's first connection was being opened before the app's import (gateway.db)
    assert (tmp_path / "imported.db").read_text() == "True"
    assert accepted_at < imported_at - 0.3  # connected during the app's import (it sleeps 1 s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok")


def test_behind_a_tcp_readiness_check_it_listens_only_once_the_app_is_imported(tmp_path: Path) -> None:
    """``AWS_LWA_READINESS_CHECK_PROTOCOL=tcp`` (template.yaml's QueryStreamFunction): the Web Adapter
    takes an accepted connection for readiness, so the socket listens only when uvicorn serves."""
    port = _free_port()
    proc = _serve_beside(tmp_path, port, AWS_LWA_READINESS_CHECK_PROTOCOL="tcp")
    try:
        sock, accepted_at = _connect_when_accepted(port, proc)
        sock.close()
        imported_at = float((tmp_path / "imported").read_text())
    finally:
        proc.terminate()
        proc.wait(10)
    assert accepted_at > imported_at


def test_a_failed_import_resets_the_early_connections_and_exits(tmp_path: Path) -> None:
    port = _free_port()
    proc = _serve_beside(tmp_path, port, APP_IMPORT_S="0.5", APP_BROKEN="1")
    try:
        sock, _ = _connect_when_accepted(port, proc)
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            started = time.monotonic()
            try:
                answer = sock.recv(65536)  # the socket's 10 s timeout would raise: not hung
            except ConnectionResetError:
                answer = b""
            waited = time.monotonic() - started
        status = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert answer == b"" and waited < 5
    assert status == 1  # Python's status for an uncaught error (not a crash at exit: see serve._exit_at_once)
    assert proc.stderr is not None and b"the app's import failed" in proc.stderr.read()


@pytest.mark.parametrize("readiness", ["http", "tcp"])
def test_a_port_taken_is_a_startup_failure_with_uvicorns_message(tmp_path: Path, readiness: str) -> None:
    """Found before the imports, behind a TCP readiness check too (the socket is bound early there,
    and listens when uvicorn serves)."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = _serve_beside(tmp_path, port, AWS_LWA_READINESS_CHECK_PROTOCOL=readiness)
        status = proc.wait(20)
        took = time.monotonic() - started
    assert status == 3  # uvicorn's STARTUP_FAILURE
    assert took < 0.9  # before the app's import (1 s)
    assert proc.stderr is not None
    assert f"error while attempting to bind on address ('0.0.0.0', {port}): address already in use" in (
        proc.stderr.read().decode())
