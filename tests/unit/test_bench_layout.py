"""The benchmarks run our functions (and the Python peers) in the environment ``Services.gateway_env``
builds: without the dev venv's setuptools import hook, which the layer and Lambda's python3.12 do not
have (BENCHMARKS.md, issue 15, spawn7)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.stack import Services

_PROBE = "import json, sys; print(json.dumps([getattr(f, '__name__', type(f).__name__) for f in sys.meta_path]))"


def _services() -> Services:
    return Services(database_url="postgresql://x/y", upstream="http://127.0.0.1:1", upstash_url="http://127.0.0.1:2",
                    upstash_token="t", user_id="u", api_key="sk-test", procs=[])


def test_a_bench_process_has_no_setuptools_import_hook() -> None:
    env = _services().gateway_env()
    finders = json.loads(subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                                        check=True, timeout=60).stdout)
    assert finders == ["BuiltinImporter", "FrozenImporter", "PathFinder"], finders
    hooked = json.loads(subprocess.run([sys.executable, "-c", _PROBE],
                                       env={**env, "SETUPTOOLS_USE_DISTUTILS": "local"},  # setuptools' default
                                       capture_output=True, text=True, check=True, timeout=60).stdout)
    assert hooked[0] == "DistutilsMetaFinder", hooked  # the dev venv does have it: what the switch leaves out
