"""The layer modules the query functions' cold start imports: ``layers/common/coldstart-modules.txt``,
the list the layer build writes into the import bundle (``gateway.import_bundle``); and the texts that
cold start compiles while its classes are created (``dataclasses``' methods, ``typing.ForwardRef``'s
string annotations, ``collections.namedtuple``'s ``__new__``): ``layers/common/coldstart-compiles.json``,
which the layer build compiles into the bundle too.

    .venv/bin/python -m infra.coldstart_modules           # print the list the functions import today
    .venv/bin/python -m infra.coldstart_modules --write   # write both files (after a change of imports or dependencies)
    .venv/bin/python -m infra.coldstart_modules --check   # exit 1 if a file differs (tests/infrastructure)

Each function is imported in a fresh interpreter as Lambda starts it, and the modules it has
loaded from outside the standard library and the function's own directory when its app is built
(``coldstart.done()``, where the bundle is put away) are recorded, less those loaded before the
bundle can be opened (``gateway.coldstart``'s own). QueryStreamFunction: run.sh's ``serve`` module
(``GATEWAY_COLD_START=serve``); QueryFunction: ``app`` in Lambda (``AWS_LAMBDA_FUNCTION_NAME``).
The modules are the dev environment's; the layer holds the same locked packages (for arm64): one
the layer lacks is reported by the build and imported as always.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTION = ROOT / "functions" / "query"
LISTING = ROOT / "layers" / "common" / "coldstart-modules.txt"
COMPILES = ROOT / "layers" / "common" / "coldstart-compiles.json"

_PROBE = """
import json, os, sys
from importlib.machinery import SourceFileLoader
from gateway import import_bundle
texts = import_bundle.record()  # the texts the three call sites look up, until coldstart.done()
from gateway import coldstart
before = set(sys.modules)
skip = (os.path.dirname(os.__file__) + os.sep, sys.argv[1] + os.sep)  # the standard library, the function
found = []
real_done = coldstart.done
def done():
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if name in before or spec is None or not isinstance(spec.loader, SourceFileLoader):
            continue
        if spec.origin and not spec.origin.startswith(skip):
            found.append(name)
    real_done()
coldstart.done = done
import importlib
importlib.import_module(sys.argv[2])
print(json.dumps([sorted(found), sorted(texts)]))
"""

# As each function starts (the settings it reads at import; no database is reached: a port nothing listens on)
_BASE_ENV = {"STAGE": "local", "DATABASE_URL": "postgresql://127.0.0.1:9/coldstart",
             "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_DISABLED": "true",
             "POWERTOOLS_SERVICE_NAME": "mlp-prod", "POWERTOOLS_METRICS_NAMESPACE": "MultiLLM",
             "SETUPTOOLS_USE_DISTUTILS": "stdlib"}
RUNS = {  # function: (module, environment)
    "QueryStreamFunction": ("serve", {"GATEWAY_COLD_START": "serve"}),
    "QueryFunction": ("app", {"AWS_LAMBDA_FUNCTION_NAME": "QueryFunction"}),
}


def record() -> tuple[list[str], list[tuple[str, str]]]:
    """The union of the modules each query function's cold start imports from the layer, and of the
    texts it compiles at the call sites ``gateway.import_bundle`` answers, sorted."""
    names: set[str] = set()
    texts: set[tuple[str, str]] = set()
    for module, extra in RUNS.values():
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_LAMBDA_", "GATEWAY_", "POWERTOOLS_", "PYTHONPATH"))}
        env.update(_BASE_ENV, **extra)
        done = subprocess.run([sys.executable, "-c", _PROBE, str(FUNCTION), module], cwd=FUNCTION, env=env,  # noqa: S603
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"importing {module} failed: {done.stderr.strip()[-2000:]}")
        found, compiled = json.loads(done.stdout.strip().splitlines()[-1])
        names.update(found)
        texts.update((mode, text) for mode, text in compiled)
    return sorted(names), sorted(texts)


def render(names: list[str]) -> str:
    return ("# The layer modules the query functions' cold start imports (gateway.import_bundle; the layer\n"
            "# build writes their bytecode into one file). Generated: .venv/bin/python -m infra.coldstart_modules "
            "--write\n" + "".join(f"{n}\n" for n in names))


def render_compiles(texts: list[tuple[str, str]]) -> str:
    """The compiles file: JSON, one text per line (a change of a dependency shows as lines in a diff)."""
    note = ("The texts the query functions' cold start compiles in dataclasses, typing.ForwardRef and "
            "collections.namedtuple, compiled into the import bundle by the layer build (gateway.import_bundle). "
            "Generated: .venv/bin/python -m infra.coldstart_modules --write")
    lines = ",\n".join(json.dumps(list(text)) for text in texts)
    return f'{{"note": {json.dumps(note)},\n"texts": [\n{lines}\n]}}\n'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true",
                        help=f"write {LISTING.relative_to(ROOT)} and {COMPILES.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are not those of today")
    args = parser.parse_args()
    names, texts = record()
    files = {LISTING: render(names), COMPILES: render_compiles(texts)}
    if args.write:
        for path, text in files.items():
            path.write_text(text)
    elif args.check:
        stale = 0
        for path, text in files.items():
            current = path.read_text() if path.exists() else ""
            if current != text:
                stale += 1
                old, new = set(current.splitlines()), set(text.splitlines())
                print(f"{path.relative_to(ROOT)} is out of date: run `.venv/bin/python -m infra.coldstart_modules "
                      f"--write`\n  missing: {sorted(new - old)[:20]}\n  no longer there: {sorted(old - new)[:20]}",
                      file=sys.stderr)
        return 1 if stale else 0
    else:
        sys.stdout.write(files[LISTING])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
