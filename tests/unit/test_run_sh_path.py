"""functions/query/run.sh leaves the function directory off PYTHONPATH: the real interpreter running
`python -m serve` puts the working directory (the function's) first on ``sys.path`` by itself, so
the function's modules import from it, and it is searched once per top-level import, not twice
(BENCHMARKS.md, issue 15, spawn7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, os, sys
import app  # the function module beside serve.py
here = os.path.dirname(os.path.abspath(__file__))
print(json.dumps({"count": sys.path.count(here), "first": sys.path[0] == here, "app": app.__file__,
                  "pythonpath": os.environ["PYTHONPATH"]}))
"""


def test_the_function_directory_is_on_sys_path_once(tmp_path: Path) -> None:
    function = tmp_path / "function"
    function.mkdir()
    shutil.copy2(ROOT / "functions" / "query" / "run.sh", function / "run.sh")
    (function / "serve.py").write_text(_PROBE, encoding="utf-8")  # run.sh execs `python -m serve`
    (function / "app.py").write_text("", encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)  # the real interpreter, as `python` on PATH
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LAMBDA_"))}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    for extra in ({}, {"LAMBDA_TASK_ROOT": str(function), "LAMBDA_RUNTIME_DIR": str(tmp_path)},
                  {"PYTHONPATH": str(function)}):  # listed by the caller: then it is theirs, and kept
        out = subprocess.run(["bash", str(function / "run.sh")], cwd=tmp_path, env={**env, **extra},
                             capture_output=True, text=True, check=True, timeout=60).stdout
        seen = json.loads(out)
        assert seen["first"] and seen["app"] == str(function / "app.py"), seen
        assert seen["count"] == (2 if "PYTHONPATH" in extra else 1), seen
        assert str(function) not in seen["pythonpath"].split(":") or "PYTHONPATH" in extra, seen
