"""gateway/coldstart.py, which every function's app.py imports first: each function's cold start
(a fresh interpreter importing ``functions/<name>/app.py``) runs it before anything else, without
httpx's command-line client, with the upstream TLS context's CA store loaded beside the import
(every connection verifies with the system store), ``ssl`` left as it was, and no aiohttp."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.apps import in_fresh_function

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/app.py"))


def test_every_function_is_listed() -> None:
    assert {"query", "messages", "responses", "embeddings", "sweeper", "webhooks"} <= set(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_imports_coldstart_first_and_keeps_its_trims(function: str) -> None:
    code = ("import sys, ssl, json\n"
            "names = []\n"
            "sys.addaudithook(lambda event, args: event == 'import' and names.append(args[0]))\n"
            "import app\n"
            "from gateway import coldstart\n"
            "from gateway.adapters.http_client import shared_ssl_context\n"
            "first = names.index('gateway.coldstart')\n"
            "before = [n for n in names[:first] if n.split('.')[0] in\n"
            "          ('gateway', 'aiohttp', 'mangum', 'pydantic', 'psycopg', 'httpx', 'starlette', 'fastapi')]\n"
            "v = shared_ssl_context()\n"
            "print(json.dumps([before, sorted(m for m in ('httpx._main', 'click', 'rich', 'pygments')\n"
            "                                 if sys.modules.get(m)),\n"
            "    v is coldstart._verified, v.verify_mode == ssl.CERT_REQUIRED, v.check_hostname,\n"
            "    v.cert_store_stats()['x509_ca'], 'set_default_verify_paths' in vars(ssl.SSLContext),\n"
            "    'aiohttp' in sys.modules]))")
    before, cli, shared, required, hostname, ca, patched, aiohttp = json.loads(in_fresh_function(function, code))
    assert before == ["gateway"]  # the package, then gateway.coldstart: before any other import begins
    assert cli == []
    assert shared and required and hostname and ca > 0
    assert not patched
    assert not aiohttp  # no function imports aiohttp at cold start (the catalog's client imports it when built)


def test_the_verified_context_is_aiohttps() -> None:
    """The context coldstart builds is what aiohttp's ``_make_ssl_context(True)`` built: the same
    protocol, options, verification, flags and CA store."""
    code = ("import json, ssl\n"
            "from gateway import coldstart\n"
            "import aiohttp.connector as c\n"
            "ours, theirs = coldstart.verified_ssl_context(), c._SSL_CONTEXT_VERIFIED\n"
            "print(json.dumps([[x.protocol, int(x.options), x.verify_mode, int(x.verify_flags), x.check_hostname,\n"
            "                   x.minimum_version, x.maximum_version, x.cert_store_stats(), len(x.get_ca_certs())]\n"
            "                  for x in (ours, theirs)]))")
    ours, theirs = json.loads(in_fresh_function("query", code))
    assert ours == theirs


def _import_with_gc_watch(before: str) -> str:
    """Code that imports the function's app after ``before``, counting the garbage collections the
    import runs, and prints them, whether the collector then runs, and how many objects are frozen."""
    return ("import compileall, gc, json, os, sys\n" + before + "\n"
            # compiled first, as the layer ships it (compiling a module is garbage of its own)
            "compileall.compile_dir(os.path.join('..', '..', 'layers', 'common', 'gateway'), quiet=1)\n"
            "compileall.compile_file('app.py', quiet=1)\n"
            "runs = []\n"
            "gc.callbacks.append(lambda phase, info: phase == 'start' and runs.append(info['generation']))\n"
            "frozen = gc.get_freeze_count()\n"
            "import app\n"
            "print(json.dumps([len(runs), gc.isenabled(), gc.get_freeze_count() - frozen, len(gc.get_objects())]))")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_in_lambda_the_collector_waits_for_the_import_and_its_objects_are_frozen(function: str) -> None:
    """A function's import in Lambda runs no garbage collection; what it built is in the permanent
    generation afterwards (never scanned again), and the collector runs again."""
    code = _import_with_gc_watch(f"os.environ['AWS_LAMBDA_FUNCTION_NAME'] = '{function}'")
    collections, enabled, frozen, tracked = json.loads(in_fresh_function(function, code))
    assert collections == 0
    assert enabled
    assert frozen > 20_000 and tracked < frozen / 10


def test_outside_lambda_the_collector_is_left_alone() -> None:
    code = _import_with_gc_watch("os.environ.pop('AWS_LAMBDA_FUNCTION_NAME', None)\n"
                                 "os.environ.pop('GATEWAY_COLD_START', None)")
    collections, enabled, frozen, _ = json.loads(in_fresh_function("query", code))
    assert collections > 0 and enabled and frozen == 0


def test_run_sh_starts_the_streaming_function_as_lambda_does() -> None:
    """functions/query/run.sh (uvicorn: QueryStreamFunction, and the peer benchmark) says it serves
    the function, and such a process imports it as in Lambda, outside Lambda too: no collection
    during the import, its objects frozen, no scan for pydantic plugins."""
    script = (ROOT / "functions" / "query" / "run.sh").read_text()
    assert re.search(r"^export GATEWAY_COLD_START=serve$", script, re.MULTILINE)
    assert script.index("GATEWAY_COLD_START") < script.index("exec python")
    serving = "os.environ.pop('AWS_LAMBDA_FUNCTION_NAME', None)\nos.environ['GATEWAY_COLD_START'] = 'serve'"
    collections, enabled, frozen, tracked = json.loads(in_fresh_function("query", _import_with_gc_watch(serving)))
    assert collections == 0 and enabled and frozen > 20_000 and tracked < frozen / 10
    before = serving.replace("\n", "; ") + "; os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)"
    assert json.loads(in_fresh_function("query", _PLUGIN_SCAN.format(before=before))) == ["__all__", None]


def test_a_collector_paused_by_someone_else_stays_paused() -> None:
    code = _import_with_gc_watch("os.environ['AWS_LAMBDA_FUNCTION_NAME'] = 'query'\ngc.disable()")
    collections, enabled, frozen, _ = json.loads(in_fresh_function("query", code))
    assert collections == 0 and not enabled and frozen == 0


_PLUGIN_SCAN = ("import json, os, sys\n{before}\n"
                "import app, pydantic.plugin._loader as loader\n"
                "print(json.dumps([os.environ.get('PYDANTIC_DISABLE_PLUGINS'), loader._plugins]))")


@pytest.mark.parametrize("function", FUNCTIONS)
def test_in_lambda_pydantic_does_not_scan_for_plugins(function: str) -> None:
    """The import builds pydantic models (settings, schemas) without pydantic reading every installed
    distribution's entry points for plugins: ``_plugins`` is never filled."""
    before = f"os.environ['AWS_LAMBDA_FUNCTION_NAME'] = '{function}'; os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)"
    disabled, plugins = json.loads(in_fresh_function(function, _PLUGIN_SCAN.format(before=before)))
    assert disabled == "__all__" and plugins is None


def test_outside_lambda_or_when_set_pydantic_plugins_are_left_as_configured() -> None:
    before = ("os.environ.pop('AWS_LAMBDA_FUNCTION_NAME', None); os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None); "
              "os.environ.pop('GATEWAY_COLD_START', None)")
    assert json.loads(in_fresh_function("query", _PLUGIN_SCAN.format(before=before))) == [None, {}]  # scanned
    before = "os.environ['AWS_LAMBDA_FUNCTION_NAME'] = 'query'; os.environ['PYDANTIC_DISABLE_PLUGINS'] = ''"
    assert json.loads(in_fresh_function("query", _PLUGIN_SCAN.format(before=before))) == ["", {}]


def test_no_pydantic_plugin_is_installed() -> None:
    """What the skipped scan would find: nothing (the dev environment holds every layer package). A
    pydantic plugin added to the dependencies would be disabled in Lambda: remove the skip first."""
    from importlib.metadata import entry_points

    assert list(entry_points(group="pydantic")) == []


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_ca_store_is_loaded_beside_the_import_and_complete_when_it_ends(function: str) -> None:
    """The upstream TLS context gets its CA store from a thread started by coldstart (OpenSSL reads
    it without the GIL while the rest imports); the import waits for it (done())."""
    code = ("import json, threading\n"
            "import app\n"
            "from gateway import coldstart\n"
            "loader = coldstart._store_loader\n"
            "print(json.dumps([loader.ident is not None, loader.ident != threading.main_thread().ident,\n"
            "                  loader.is_alive(), coldstart._verified.cert_store_stats()['x509_ca'] > 0,\n"
            "                  coldstart._to_load]))")
    assert json.loads(in_fresh_function(function, code)) == [True, True, False, True, []]


def test_a_process_ending_while_the_ca_store_loads_exits_with_its_own_status() -> None:
    """A start that fails at once (serve.py's port taken, an early import error) ends while the
    store's thread is still inside OpenSSL: the exit waits for it instead of crashing (SIGSEGV)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "GATEWAY_COLD_START": "serve", "PYTHONPATH": str(ROOT / "layers" / "common")}
    code = "import sys\nfrom gateway import coldstart\nsys.exit(3)"
    statuses = [subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60).returncode for _ in range(10)]
    assert statuses == [3] * 10  # before: -11 in 14 of 20 runs here
