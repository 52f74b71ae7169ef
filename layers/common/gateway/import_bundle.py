"""The query functions' cold-start imports read from one file (BENCHMARKS.md, issue 15, eighteenth and
nineteenth passes).

A cold start of a query function imports ~330 modules from the layer (the gateway and its
dependencies). For each one, Python's path finder checks the directories on ``sys.path`` and the
loader then checks the source file, opens its bytecode file, reads it and validates its header:
about five system calls per module. On a Firecracker VM (Lambda's, and the machine the benchmarks
run on) a system call is not cheap, and in Lambda a layer's files are fetched on first read. The
layer build (``layers/common/Makefile``) therefore also writes the bytecode of the modules the
query functions' import loads (listed in ``layers/common/coldstart-modules.txt``) into one file,
and a function whose environment names that file (``GATEWAY_IMPORT_BUNDLE``: template.yaml, for
the two query functions) reads it once when its cold start begins (:func:`install`, called by
``gateway.coldstart``) and imports those modules from it. Measured on the query function's spawn:
-16.6 ms (paired median of 30, faster in 25).

Only where a module's code comes from changes. Its finder answers from the bundle's index instead of
searching ``sys.path``, and its loader is the module file's own ``SourceFileLoader`` with one method
replaced (``get_code``), so ``__file__``, ``__spec__``, ``__path__``, the source (``inspect``,
tracebacks: the code's file names are the module file's, as the import system sets them for a
``.pyc``), resources and ``importlib.reload`` are what a normal import gives. A module not in the
bundle is imported as always. The bundle holds no module of the standard library (the runtime's,
which the layer does not ship) nor of the function's own code.

**The source the cold start compiles, compiled by the build too.** Besides modules, the import compiles
Python source that the standard library generates while classes are created: ``dataclasses`` writes
each method it makes (``__init__``, ``__repr__``, ``__eq__``, ...) as text and ``exec``-s it,
``typing.ForwardRef`` compiles each annotation given as a string (pydantic-core's ``core_schema``
alone declares hundreds), ``collections.namedtuple`` ``eval``-s its ``__new__``. Those compilations
were ~15 % of the query function's import (py-spy, 20 cold imports: ``dataclasses._create_fn`` 34 of
319 ms, ``ForwardRef`` 8); answered from the bundle, the import took 50 ms less (paired median of 20,
faster in 17). The texts are fixed by the class definitions, so ``infra.coldstart_modules``
records the ones the query functions' cold start compiles (``layers/common/coldstart-compiles.json``),
the build compiles them into the bundle, and while it is installed those three call sites (the
module globals ``dataclasses.exec``, ``typing.compile`` and ``collections.eval``, which shadow the
builtins for those modules only) take the code object of a text found in the bundle instead of
compiling it: the same code, as ``compile`` makes it from the same text (a text the bundle does not
have, say one written by another patch release's ``dataclasses``, is compiled as always).
:data:`compiles` counts the texts answered from the bundle and those compiled as always.

The bundle is written by the layer build and deployed with it, and never changes afterwards: like
the layer's "unchecked-hash" ``.pyc`` files, its bytecode is not compared with the sources. A bundle
written by another Python (another bytecode magic number), not readable, cut short or damaged is
ignored.
:func:`uninstall` (``coldstart.done()``: the app is built) takes the finder off ``sys.meta_path``
and lets the file's bytes go (~4.5 MB); what is imported later is imported as always.

Format: ``SIGNATURE``, the interpreter's ``importlib.util.MAGIC_NUMBER`` (4 bytes), the index's
length and the compiled texts' length (4 bytes each, little-endian), the index (``marshal``:
``{name: (path, is_package, offset, length)}``, a relative path being relative to the bundle's
directory: ``/opt/python`` in Lambda), the compiled texts (``marshal``: ``{(mode, text): code}``),
then each module's code object (``marshal``; offsets from the end of the compiled texts).

This module imports nothing but the standard library.
"""

from __future__ import annotations

import builtins
import marshal
import os
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader
from importlib.util import MAGIC_NUMBER

TYPE_CHECKING = False  # typing's own constant, without importing typing this early
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import CodeType
    from typing import Any

SIGNATURE = b"MLPIMPB2"
ENVIRONMENT = "GATEWAY_IMPORT_BUNDLE"
_HEAD = len(SIGNATURE) + len(MAGIC_NUMBER) + 8
MODES = ("exec", "eval")  # the compile modes of the texts a bundle holds


class _Finder:
    """On ``sys.meta_path``, first: the specs of the bundle's modules."""

    def __init__(self, data: bytes, base: str) -> None:
        size = int.from_bytes(data[_HEAD - 8:_HEAD - 4], "little")
        texts = int.from_bytes(data[_HEAD - 4:_HEAD], "little")
        view = memoryview(data)
        self.index: dict[str, tuple[str, bool, int, int]] = marshal.loads(view[_HEAD:_HEAD + size])  # noqa: S302  (a .pyc's format: ours)
        self.compiled: dict[tuple[str, str], CodeType] = marshal.loads(view[_HEAD + size:_HEAD + size + texts])  # noqa: S302
        self.data: bytes | None = data
        self.start = _HEAD + size + texts
        self.base = base

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: object = None) -> ModuleSpec | None:
        entry = self.index.get(name)  # uninstalled: an empty index
        if entry is None:
            return None
        origin = os.path.join(self.base, entry[0])  # an absolute entry stays as it is
        spec = ModuleSpec(name, _Loader(name, origin, self), origin=origin, is_package=entry[1])
        spec.has_location = True  # __file__ and __cached__ as a file's module has them
        if entry[1]:
            spec.submodule_search_locations = [os.path.dirname(origin)]
        return spec

    def code(self, name: str) -> CodeType | None:
        data, entry = self.data, self.index.get(name)
        if data is None or entry is None:
            return None
        offset = self.start + entry[2]
        return marshal.loads(memoryview(data)[offset:offset + entry[3]])  # type: ignore[no-any-return]  # noqa: S302

    def invalidate_caches(self) -> None:
        """Nothing cached: the bundle does not change."""


class _Loader(SourceFileLoader):
    """The module file's loader; its code from the bundle while the finder has it."""

    def __init__(self, fullname: str, path: str, finder: _Finder) -> None:
        super().__init__(fullname, path)
        self._finder = finder

    def get_code(self, fullname: str) -> CodeType | None:
        code = self._finder.code(fullname)
        if code is None:  # uninstalled since (a reload): from the module's files, as always
            return super().get_code(fullname)
        import _imp

        # the file names the module's, as the import system sets them for a .pyc (the build's paths)
        _imp._fix_co_filename(code, self.path)  # type: ignore[attr-defined]
        return code


_installed: _Finder | None = None


def install(path: str | None = None) -> bool:
    """Import the bundle's modules from it from now on (``path``, else ``$GATEWAY_IMPORT_BUNDLE``;
    none: nothing), and answer the texts it holds at the three call sites. False, and nothing
    changed, when the file is missing, unreadable, or written for another Python."""
    global _installed
    path = path or os.environ.get(ENVIRONMENT)
    if not path or _installed is not None:
        return False
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return False
    if data[:len(SIGNATURE)] != SIGNATURE or data[len(SIGNATURE):_HEAD - 8] != MAGIC_NUMBER:
        return False
    try:
        finder = _Finder(data, os.path.dirname(os.path.abspath(path)))
    except (EOFError, ValueError, TypeError):  # cut short or damaged: not a bundle to use
        return False
    if not isinstance(finder.index, dict) or not isinstance(finder.compiled, dict):
        return False
    _installed = finder
    sys.meta_path.insert(0, _installed)  # type: ignore[arg-type]
    if finder.compiled and not sys.flags.optimize:  # compiled as Python compiles without -O
        _answer_compiles(finder.compiled)
    return True


def uninstall() -> None:
    """The finder off ``sys.meta_path`` and the bundle's bytes let go; later imports as always."""
    global _installed, _texts, _recording
    finder, _installed = _installed, None
    _texts, _recording = {}, None
    for module_name, name, hook in _SITES:
        module = sys.modules.get(module_name)
        if module is not None and module.__dict__.get(name) is hook:
            delattr(module, name)  # the builtin again
    if finder is not None:
        finder.data, finder.index, finder.compiled = None, {}, {}
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the texts the cold start compiles
compiles = {"from_bundle": 0, "compiled": 0}  # texts of the three call sites since install()
_texts: dict[tuple[str, str], CodeType] = {}
_inherited = 0  # the __future__ features' flags that exec, eval and compile take over from their caller
_recording: set[tuple[str, str]] | None = None  # record(): the texts looked up, until uninstall()


def _text_code(source: Any, filename: Any, mode: str, flags: int, optimize: int = -1, **options: Any) -> Any:
    """The code ``compile(source, filename, mode, flags, dont_inherit=True, optimize, **options)``
    gives: the bundle's for a text it holds, which the build compiled so (``"<string>"``, no flags,
    no ``__future__`` features), else compiled here. ``flags`` holds the caller's features: ``exec``,
    ``eval`` and ``compile`` (unless told not to) compile a text with them."""
    if not flags and filename == "<string>" and optimize == -1 and not options and source.__class__ is str:
        if _recording is not None:
            _recording.add((mode, source))
        code = _texts.get((mode, source))
        if code is not None:
            compiles["from_bundle"] += 1
            return code
    compiles["compiled"] += 1
    return builtins.compile(source, filename, mode, flags, True, optimize, **options)


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """``dataclasses.exec`` while installed (its generated methods' texts): the builtin's."""
    caller = sys._getframe(1)
    if globals is None:  # the caller's namespaces, as the builtin takes them
        globals, locals = caller.f_globals, caller.f_locals if locals is None else locals
    if isinstance(source, (str, bytes, bytearray)):
        source = _text_code(source, "<string>", "exec", caller.f_code.co_flags & _inherited)
    builtins.exec(source, globals, locals)  # noqa: S102  (what dataclasses does)


def _eval(source: Any, globals: Any = None, locals: Any = None, /) -> Any:
    """``collections.eval`` while installed (a namedtuple's ``__new__``): the builtin's."""
    caller = sys._getframe(1)
    if globals is None:  # the caller's namespaces, as the builtin takes them
        globals, locals = caller.f_globals, caller.f_locals if locals is None else locals
    if isinstance(source, str):  # eval() ignores a text's leading spaces and tabs
        source = _text_code(source.lstrip(" \t"), "<string>", "eval", caller.f_code.co_flags & _inherited)
    elif isinstance(source, (bytes, bytearray)):
        source = _text_code(source.lstrip(b" \t"), "<string>", "eval", caller.f_code.co_flags & _inherited)
    return builtins.eval(source, globals, locals)  # noqa: S307  (what namedtuple does)


def _compile(source: Any, filename: Any, mode: str, flags: int = 0, dont_inherit: bool = False,
             optimize: int = -1, **options: Any) -> Any:
    """``typing.compile`` while installed (a ``ForwardRef``'s annotation text): the builtin's."""
    if not dont_inherit:
        flags |= sys._getframe(1).f_code.co_flags & _inherited
    return _text_code(source, filename, mode, flags, optimize, **options)


_SITES = (("dataclasses", "exec", _exec), ("collections", "eval", _eval), ("typing", "compile", _compile))


def record() -> set[tuple[str, str]]:
    """The three call sites hooked without a bundle, recording every text they look up (``(mode,
    source)``: what a bundle's texts are keyed by) into the set returned, until :func:`uninstall`
    (``coldstart.done()``). ``infra.coldstart_modules`` records the query functions' cold start so."""
    global _recording
    _recording = set()
    _answer_compiles({})
    return _recording


def _answer_compiles(texts: dict[tuple[str, str], CodeType]) -> None:
    """The three call sites answered from ``texts`` (module globals shadowing the builtins there)."""
    global _texts, _inherited
    import __future__

    import collections
    import dataclasses
    import typing

    _inherited = 0
    for feature in __future__.all_feature_names:  # (nested_scopes' flag, CO_NESTED, is not one to take over)
        if feature not in ("nested_scopes", "generators"):
            _inherited |= getattr(__future__, feature).compiler_flag
    _texts = texts
    for module, (_, name, hook) in zip((dataclasses, collections, typing), _SITES, strict=True):
        setattr(module, name, hook)


# --------------------------------------------------------------------------- writing one (the build)
def module_file(name: str, roots: Iterable[str]) -> tuple[str, bool] | None:
    """``name``'s source file under the first of ``roots`` holding it (a package's ``__init__.py``,
    else ``<name>.py``), and whether it is a package; None if no root has it."""
    parts = name.split(".")
    for root in roots:
        package = os.path.join(root, *parts, "__init__.py")
        if os.path.isfile(package):
            return package, True
        module = os.path.join(root, *parts[:-1], parts[-1] + ".py")
        if os.path.isfile(module):
            return module, False
    return None


def build(out: str, modules: Iterable[str], roots: Sequence[str], relative: bool = False,
          texts: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Write the bundle of ``modules`` (their sources under ``roots``, compiled as the import system
    compiles them) and of ``texts`` (``(mode, source)``, compiled as ``exec``, ``eval`` and
    ``compile`` compile a text for a caller without ``__future__`` features) to ``out``; with
    ``relative``, the path of each module under ``out``'s directory relative to it (the layer's
    ``python/``, deployed elsewhere), the others' absolute. The names not found under any root are
    returned (and left out: they import as always)."""
    base = os.path.dirname(os.path.abspath(out))
    index: dict[str, tuple[str, bool, int, int]] = {}
    blob = bytearray()
    missing: list[str] = []
    for name in modules:
        found = module_file(name, roots)
        if found is None:
            missing.append(name)
            continue
        source, package = found
        with open(source, "rb") as file:
            code = SourceFileLoader(name, source).source_to_code(file.read(), source)
        data = marshal.dumps(code)
        path = os.path.abspath(source)
        if relative and os.path.commonpath((path, base)) == base:
            path = os.path.relpath(path, base)
        index[name] = (path, package, len(blob), len(data))
        blob += data
    head = marshal.dumps(index)
    sources = marshal.dumps({(mode, text): builtins.compile(text, "<string>", mode, dont_inherit=True, optimize=0)
                             for mode, text in texts})
    with open(out + ".tmp", "wb") as file:  # whole or not at all: a process may be reading the last one
        file.write(SIGNATURE + MAGIC_NUMBER + len(head).to_bytes(4, "little") + len(sources).to_bytes(4, "little")
                   + head + sources + blob)
    os.replace(out + ".tmp", out)
    return missing


def listed(path: str) -> list[str]:
    """The module names of a list file (``layers/common/coldstart-modules.txt``): one per line,
    ``#`` comments."""
    with open(path, encoding="utf-8") as file:
        names = [line.split("#", 1)[0].strip() for line in file]
    return [name for name in names if name]


def recorded(path: str) -> list[tuple[str, str]]:
    """The texts of a compiles file (``layers/common/coldstart-compiles.json``: ``{"texts": [[mode,
    source], ...]}``)."""
    import json

    with open(path, encoding="utf-8") as file:
        texts = json.load(file)["texts"]
    return [(mode, text) for mode, text in texts if mode in MODES]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.import_bundle OUT MODULES_FILE ROOT [ROOT ...] [--compiles FILE]``
    (layers/common/Makefile): the bundle of the modules listed in MODULES_FILE (one per line; ``#``
    comments) found under the ROOTs, the paths under OUT's directory relative to it, and of the texts
    of the compiles FILE (``infra.coldstart_modules`` writes both files)."""
    args = list(sys.argv[1:] if argv is None else argv)
    texts: list[tuple[str, str]] = []
    if "--compiles" in args[:-1]:
        at = args.index("--compiles")
        texts = recorded(args[at + 1])
        del args[at:at + 2]
    if len(args) < 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    out, listing, roots = args[0], args[1], args[2:]
    missing = build(out, listed(listing), roots, relative=True, texts=texts)
    if missing:  # a module the layer does not have here: imported as always, so only reported
        print(f"import bundle: not in the layer, left out: {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
