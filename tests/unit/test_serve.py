"""functions/query/serve.py (what run.sh execs for QueryStreamFunction) serves ``stream_app`` with the
uvicorn configuration ``python -m uvicorn app:stream_app --host 0.0.0.0 --port $PORT --no-access-log
--loop uvloop --http httptools`` built, without importing uvicorn's command-line module (click, the
supervisors), and leaves ``uvicorn.main`` importable as the real module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
                  'app' in vars(app), 'handler' in vars(app), http]))
"""


def test_serve_configures_uvicorn_as_its_command_line_did_without_importing_it() -> None:
    loaded, differ, app_dir, kind, has_main, built, handled, http = json.loads(in_fresh_function("query", _COMPARE))
    assert loaded == []  # neither uvicorn's CLI nor its supervisors were imported by serve
    assert differ == []  # every other Config attribute as `python -m uvicorn app:stream_app ...` set it
    assert http == ["httptools", True, True]  # --http httptools: serve's protocol is httptools' own, subclassed
    assert app_dir == ""  # the CLI's sys.path[0] was the working directory, functions/query: serve.py's own
    assert kind == "module" and has_main  # `import uvicorn.main` afterwards: the real module
    assert not built and not handled  # run.sh's process: QueryFunction's buffered app not built


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
    execs `python serve.py` there, the layer (and Lambda's runtime directory) on PYTHONPATH: the function
    directory is not listed again (Python puts serve.py's directory first: test_run_sh_path.py)."""
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
        assert out.strip() == f"{query}|/opt/python{runtime}:/extra|serve|serve.py", (argv, out)
