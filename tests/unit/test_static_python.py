"""`make install` links the dev venv's interpreter with libpython statically when the base CPython is a
shared build (.ci/static_python.py): the same interpreter and standard library, without a libpython
shared object whose thread-local state costs a function call per access (BENCHMARKS.md, issue 15, spawn7)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "static_python.py"
_LIBPL = Path(str(sysconfig.get_config_var("LIBPL") or ""))
_LINKABLE = bool(sysconfig.get_config_var("Py_ENABLE_SHARED")) and (_LIBPL / "python.o").is_file() and (
    _LIBPL / str(sysconfig.get_config_var("LIBRARY") or "-")).is_file()
_MAPS = "print(any('libpython' in line for line in open('/proc/self/maps')))"
needs_shared_base = pytest.mark.skipif(not _LINKABLE, reason="the base CPython is not a shared build with its archive")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _maps_libpython(python: Path) -> bool:
    out = subprocess.run([str(python), "-c", _MAPS], capture_output=True, text=True, check=True, env=_env(),
                         timeout=60)
    return out.stdout.strip() == "True"


@needs_shared_base
def test_the_dev_venv_runs_without_the_libpython_shared_object() -> None:
    assert sys.prefix != sys.base_prefix  # the dev venv (make install)
    assert not _maps_libpython(Path(sys.executable))


@needs_shared_base
def test_a_venv_is_linked_and_unlinked(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=_env(), timeout=120)
    python = venv / "bin" / "python"
    exe = venv / "bin" / f"python{sysconfig.get_python_version()}"
    run = [str(python), str(SCRIPT), str(venv)]
    subprocess.run([*run, "--shared"], check=True, env=_env(), timeout=120, capture_output=True)
    assert exe.is_symlink() and _maps_libpython(python)  # the base interpreter: libpython3.12.so
    out = subprocess.run(run, check=True, env=_env(), timeout=300, capture_output=True, text=True).stdout
    assert "linked statically" in out and not exe.is_symlink(), out
    assert not _maps_libpython(python)
    seen = subprocess.run([str(python), "-c", "import sys, ssl, decimal; print(sys.version); print(sys.prefix)"],
                          capture_output=True, text=True, check=True, env=_env(), timeout=60).stdout.splitlines()
    assert seen == [sys.version, str(venv)]
    subprocess.run([*run, "--shared"], check=True, env=_env(), timeout=120, capture_output=True)
    assert exe.is_symlink() and _maps_libpython(python)
