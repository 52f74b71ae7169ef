"""The dev install (`make install`: `pip install -e .`) puts the gateway package's directory on sys.path
with a plain .pth, as Lambda's /opt/python is: no import hook of setuptools' editable finder runs at
every interpreter start (it imported pathlib and failed six `nt` imports before any of our code:
BENCHMARKS.md, issue 15, spawn7), and `gateway` is this checkout's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import importlib.util, json, sys
import gateway
print(json.dumps({"finders": [getattr(f, "__name__", type(f).__name__) for f in sys.meta_path],
                  "modules": sorted(m for m in sys.modules if "editable" in m),
                  "gateway": gateway.__file__, "infra": importlib.util.find_spec("infra") is not None}))
"""


def test_a_fresh_interpreter_finds_gateway_without_an_import_hook(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    seen = json.loads(out)
    assert not [f for f in seen["finders"] if "Editable" in f], seen
    assert seen["modules"] == [], seen
    assert seen["gateway"] == str(ROOT / "layers" / "common" / "gateway" / "__init__.py"), seen
    assert not seen["infra"], seen  # dev tooling: importable from the checkout (cwd, pytest's pythonpath) only
