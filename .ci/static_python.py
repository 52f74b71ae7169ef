"""`make install`: the dev venv's interpreter linked with libpython statically.

    .venv/bin/python .ci/static_python.py .venv          (make install: link it, or keep it)
    .venv/bin/python .ci/static_python.py .venv --shared  (back to the base interpreter's symlink)

A base CPython built with ``--enable-shared`` (pyenv's default: this machine's 3.12.1) runs every
process from ``libpython3.12.so``: code in a shared library reaches its thread-local variables through
``__tls_get_addr``, and CPython 3.12 reads the current thread state from one on nearly every C API
call (``_PyThreadState_GET``). Under valgrind that call alone was 4.9 % of the query function's
import (85 M instructions), the process ~6 % slower in all (BENCHMARKS.md, issue 15, spawn7). CPython's
default build (``--disable-shared``) links the interpreter executable with the same objects
statically, so the linker resolves those accesses to one instruction; CPython 3.14 offers it beside
the shared library (``--enable-static-libpython-for-interpreter``, gh-133312).

The base install ships what that link needs: ``libpython3.12.a`` and ``python.o`` in its ``LIBPL``
directory. This script links them (as CPython's own Makefile links ``python``: ``LINKFORSHARED``
exports the C API to extension modules, none of which links libpython itself), checks that the
result is the same interpreter with every extension module the gateway uses, and puts it in place
of the venv's ``python3.12`` symlink (``pyvenv.cfg`` still names the base install: same standard
library, same site-packages). Nothing changes where it cannot be done (a static base, no archive, no
C compiler, a failed check): the venv keeps the base interpreter.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# The check: the same interpreter, the C extension modules on the gateway's paths importable.
_CHECK = ("import sys, ssl, ctypes, decimal, hashlib, json, asyncio, uuid, zlib; "
          "print(sys.version); print(sys.prefix)")


def _var(name: str) -> str:
    return str(sysconfig.get_config_var(name) or "")


def _base_executable() -> Path:
    return Path(_var("BINDIR")) / f"python{sysconfig.get_python_version()}"


def link(venv: Path) -> str:
    exe = venv / "bin" / f"python{sysconfig.get_python_version()}"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return "the base interpreter is linked statically already: nothing to do"
    libpl = Path(_var("LIBPL"))
    archive, main_o = libpl / _var("LIBRARY"), libpl / "python.o"
    cc = shlex.split(_var("LINKCC") or _var("CC") or "cc")
    if not archive.is_file() or not main_o.is_file():
        return f"no {archive.name} / python.o in {libpl}: the venv keeps the shared interpreter"
    if shutil.which(cc[0]) is None:
        return f"no C compiler ({cc[0]}): the venv keeps the shared interpreter"
    tmp = exe.with_name(f".{exe.name}.static")
    argv = [*cc, *shlex.split(_var("PY_CORE_LDFLAGS") or _var("LDFLAGS")), *shlex.split(_var("LINKFORSHARED")),
            "-o", str(tmp), str(main_o), "-Wl,--whole-archive", str(archive), "-Wl,--no-whole-archive",
            *shlex.split(_var("LIBS")), *shlex.split(_var("MODLIBS")), *shlex.split(_var("SYSLIBS"))]
    built = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603  the build's own config
    if built.returncode != 0:
        tmp.unlink(missing_ok=True)
        return f"the link failed, the venv keeps the shared interpreter:\n{built.stderr.strip()[-2000:]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    check = subprocess.run([str(tmp), "-c", _CHECK], capture_output=True, text=True, check=False,  # noqa: S603
                           env=env)
    expected = [sys.version, str(venv.resolve())]
    if check.returncode != 0 or check.stdout.splitlines() != expected:
        tmp.unlink(missing_ok=True)
        return (f"the linked interpreter failed its check, the venv keeps the shared one: "
                f"{check.stdout.strip()} {check.stderr.strip()[-2000:]}")
    os.replace(tmp, exe)  # the running interpreter keeps its own (old) file
    return f"{exe}: libpython linked statically ({archive})"


def unlink(venv: Path) -> str:
    exe = venv / "bin" / f"python{sysconfig.get_python_version()}"
    if exe.is_symlink():
        return f"{exe} is the base interpreter's symlink already"
    tmp = exe.with_name(f".{exe.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(_base_executable())
    os.replace(tmp, exe)
    return f"{exe} -> {_base_executable()}"


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2 or (len(argv) == 2 and argv[1] != "--shared"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    venv = Path(argv[0])
    print("static-python: " + (unlink(venv) if argv[1:] == ["--shared"] else link(venv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
