"""gateway.import_bundle: modules imported from one file the build wrote, as a normal import gives them
(file, package path, source, tracebacks, resources), and nothing else changed; a bundle of another
Python, or none, changes nothing; uninstalled, imports are as always again."""

from __future__ import annotations

import builtins
import collections
import dataclasses
import importlib
import importlib.resources
import inspect
import json
import shutil
import sys
import traceback
import types
import typing
import uuid
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import pytest

from gateway import import_bundle


@pytest.fixture
def layer(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A layer directory (``python/``) holding a package with a module, a subpackage and a data file;
    its unique name; the bundle's modules left out of ``sys.modules`` and the finder off afterwards."""
    name = f"bundled_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "build" / "python"
    (root / name / "sub").mkdir(parents=True)
    (root / name / "__init__.py").write_text("ORIGIN = 'init from source'\n")
    (root / name / "mod.py").write_text("VALUE = 'mod from source'\n\n\ndef fail():\n    raise ValueError('boom')\n")
    (root / name / "sub" / "__init__.py").write_text("")
    (root / name / "sub" / "leaf.py").write_text("from .. import mod\nLEAF = mod.VALUE + ' via leaf'\n")
    (root / name / "other.py").write_text("OTHER = 'other from source'\n")
    (root / name / "data.txt").write_text("a resource\n")
    try:
        yield root, name
    finally:
        import_bundle.uninstall()
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def _build(root: Path, name: str, *extra: str) -> Path:
    out = root / "gateway-imports.bin"
    modules = [name, f"{name}.mod", f"{name}.sub", f"{name}.sub.leaf", f"{name}.other", *extra]
    assert import_bundle.build(str(out), modules, [str(root)], relative=True) == list(extra)
    return out


def test_modules_come_from_the_bundle_and_look_as_imported_from_their_files(layer: tuple[Path, str]) -> None:
    root, name = layer
    bundle = _build(root, name)
    # The sources change after the build: what is imported is the bundle's code, as written by the build
    (root / name / "mod.py").write_text("VALUE = 'edited later'\n")
    assert import_bundle.install(str(bundle))
    mod = importlib.import_module(f"{name}.mod")
    leaf = importlib.import_module(f"{name}.sub.leaf")
    package = sys.modules[name]
    assert mod.VALUE == "mod from source" and leaf.LEAF == "mod from source via leaf"
    assert package.ORIGIN == "init from source"
    # As a file's module: __file__, __spec__, __path__, __cached__, the source, resources
    assert mod.__file__ == str(root / name / "mod.py")
    assert mod.__spec__ is not None and mod.__spec__.origin == mod.__file__ and mod.__spec__.parent == name
    assert package.__path__ == [str(root / name)] and sys.modules[f"{name}.sub"].__path__ == [str(root / name / "sub")]
    assert mod.__cached__ == str(root / name / "__pycache__" / f"mod.{sys.implementation.cache_tag}.pyc")
    assert inspect.getsource(package) == "ORIGIN = 'init from source'\n"
    assert importlib.resources.files(name).joinpath("data.txt").read_text() == "a resource\n"
    # A traceback names the module's file and line (the code's file name is fixed as for a .pyc)
    with pytest.raises(ValueError, match="boom") as raised:
        mod.fail()
    frame = traceback.extract_tb(raised.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.name) == (str(root / name / "mod.py"), 5, "fail")


def test_the_layer_directory_can_move_after_the_build(layer: tuple[Path, str], tmp_path: Path) -> None:
    """Built under ARTIFACTS_DIR, deployed as /opt/python: the bundle's paths are relative to it."""
    root, name = layer
    _build(root, name)
    deployed = tmp_path / "opt" / "python"
    shutil.copytree(root, deployed)
    shutil.rmtree(root)
    assert import_bundle.install(str(deployed / "gateway-imports.bin"))
    mod = importlib.import_module(f"{name}.mod")
    assert mod.__file__ == str(deployed / name / "mod.py") and mod.VALUE == "mod from source"


def test_uninstalled_later_imports_are_as_always_and_the_bytes_let_go(layer: tuple[Path, str]) -> None:
    root, name = layer
    bundle = _build(root, name)
    (root / name / "other.py").write_text("OTHER = 'edited later'\n")
    assert import_bundle.install(str(bundle))
    finder = sys.meta_path[0]
    assert isinstance(finder, import_bundle._Finder) and finder.data is not None
    importlib.import_module(f"{name}.mod")
    import_bundle.uninstall()
    assert finder not in sys.meta_path and finder.data is None
    assert importlib.import_module(f"{name}.other").OTHER == "edited later"  # from its file now
    mod = sys.modules[f"{name}.mod"]
    assert importlib.reload(mod).VALUE == "mod from source"  # the loader reads the file again
    import_bundle.uninstall()  # twice: nothing


@pytest.mark.parametrize("damage", ["another Python", "not a bundle", "cut short", "missing"])
def test_a_bundle_it_cannot_use_changes_nothing(layer: tuple[Path, str], damage: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root, name = layer
    monkeypatch.syspath_prepend(str(root))
    bundle = _build(root, name)
    data = bundle.read_bytes()
    if damage == "another Python":
        magic = data[8:12]
        bundle.write_bytes(data[:8] + bytes([magic[0] ^ 1]) + magic[1:] + data[12:])
    elif damage == "not a bundle":
        bundle.write_bytes(b"\x00" * len(data))
    elif damage == "cut short":  # the index's length says more than there is
        bundle.write_bytes(data[:40])
    else:
        bundle.unlink()
    meta_path = list(sys.meta_path)
    assert import_bundle.install(str(bundle)) is False
    assert sys.meta_path == meta_path
    spec = importlib.import_module(f"{name}.mod").__spec__
    assert spec is not None and type(spec.loader) is SourceFileLoader  # the path's finder


def test_without_a_path_nothing_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(import_bundle.ENVIRONMENT, raising=False)
    meta_path = list(sys.meta_path)
    assert import_bundle.install() is False and sys.meta_path == meta_path


def test_the_build_reports_and_leaves_out_what_no_root_has(layer: tuple[Path, str]) -> None:
    root, name = layer
    bundle = _build(root, name, f"{name}.absent", "no_such_package")
    assert import_bundle.install(str(bundle))
    assert import_bundle._installed is not None
    assert f"{name}.absent" not in import_bundle._installed.index
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"{name}.absent")


def test_a_second_install_keeps_the_first(layer: tuple[Path, str]) -> None:
    root, name = layer
    bundle = _build(root, name)
    assert import_bundle.install(str(bundle)) is True
    assert import_bundle.install(str(bundle)) is False
    assert sum(isinstance(f, import_bundle._Finder) for f in sys.meta_path) == 1


def test_the_command_line_writes_paths_relative_to_the_bundle(layer: tuple[Path, str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m gateway.import_bundle OUT LIST ROOT...``, as layers/common/Makefile runs it."""
    root, name = layer
    listing = root.parent / "modules.txt"
    listing.write_text(f"# a comment\n{name}\n{name}.mod  # trailing comment\n\n{name}.gone\n")
    out = root / "gateway-imports.bin"
    assert import_bundle.main([str(out), str(listing), str(root)]) == 0
    assert f"left out: {name}.gone" in capsys.readouterr().err
    assert import_bundle.install(str(out))
    assert import_bundle._installed is not None
    assert import_bundle._installed.index[f"{name}.mod"][:2] == (f"{name}/mod.py", False)
    assert import_bundle.main([]) == 2


# --------------------------------------------------------------------------- the texts the cold start compiles
def _record_texts() -> set[tuple[str, str]]:
    """The texts dataclasses, collections.namedtuple and typing.ForwardRef compile for the classes of
    ``_declare`` (recorded as infra.coldstart_modules records them)."""
    texts = import_bundle.record()
    try:
        _declare()
    finally:
        import_bundle.uninstall()
    return texts


def _declare() -> tuple[type, type, typing.ForwardRef]:
    """A dataclass (frozen: ``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``,
    ``__delattr__``), a namedtuple and a string annotation, declared as libraries declare them."""

    @dataclasses.dataclass(frozen=True)
    class Price:
        amount: int
        currency: str = "usd"

    Point = collections.namedtuple("Point", "x y")
    return Price, Point, typing.ForwardRef("dict[str, int] | None")


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """A code object and the ones nested in it (a generated method is a function of a function)."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _codes(constant)


@pytest.fixture
def compiled(layer: tuple[Path, str]) -> Iterator[dict[tuple[str, str], Any]]:
    """A bundle with the texts ``_declare`` compiles, installed; its compiled texts."""
    root, name = layer
    texts = _record_texts()
    assert len(texts) == 8, texts  # six dataclass methods, a namedtuple's __new__, an annotation
    out = root / "gateway-imports.bin"
    import_bundle.build(str(out), [name], [str(root)], texts=texts)
    assert import_bundle.install(str(out)) and import_bundle._installed is not None
    before = dict(import_bundle.compiles)
    yield import_bundle._installed.compiled
    import_bundle.compiles.update(before)


def test_the_texts_it_holds_are_answered_with_their_code_and_the_classes_work(
        compiled: dict[tuple[str, str], Any]) -> None:
    counted = import_bundle.compiles["from_bundle"]
    price_class, point_class, annotation = _declare()
    assert import_bundle.compiles["from_bundle"] == counted + 8
    # The bundle's code objects, the ones compile makes from the same texts
    init = price_class.__init__.__code__  # type: ignore[misc]
    assert any(init is nested for code in compiled.values() for nested in _codes(code))
    for (mode, text), code in compiled.items():  # as dataclasses, namedtuple and ForwardRef compile them
        assert code == builtins.compile(text, "<string>", mode, dont_inherit=True)
    assert annotation.__forward_code__ is compiled[("eval", "dict[str, int] | None")]
    # and the classes behave as always
    price = price_class(5)
    assert repr(price) == "_declare.<locals>.Price(amount=5, currency='usd')"
    assert price == price_class(5, "usd") and price != price_class(5, "eur") and hash(price) == hash(price_class(5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        price.amount = 6  # type: ignore[misc]
    assert point_class(1, 2) == (1, 2) and point_class(x=1, y=2).y == 2
    assert typing.get_type_hints(type("Hinted", (), {"__annotations__": {"a": annotation}}))["a"] == (
        dict[str, int] | None)


def test_a_text_it_does_not_hold_is_compiled_as_always(compiled: dict[tuple[str, str], Any]) -> None:
    counted = dict(import_bundle.compiles)

    @dataclasses.dataclass
    class Other:
        left: int
        right: list[int] = dataclasses.field(default_factory=list)

    assert Other(1) == Other(1, []) and repr(Other(2, [3])).endswith("Other(left=2, right=[3])")
    assert import_bundle.compiles["compiled"] == counted["compiled"] + 3  # __init__, __repr__, __eq__
    assert import_bundle.compiles["from_bundle"] == counted["from_bundle"]
    # compiled with dataclasses' features (none), not the hook module's (``annotations``): the field types
    assert Other.__init__.__annotations__ == {"left": "int", "right": "list[int]", "return": None}
    assert collections.eval("  1 + 1\n", {}) == 2  # type: ignore[attr-defined]  # as eval(): leading blanks ignored


def test_a_caller_with_future_features_gets_the_text_compiled_with_them(
        compiled: dict[tuple[str, str], Any]) -> None:
    """exec of a text compiles it with its caller's __future__ features (this module has ``annotations``):
    the bundle's code, compiled without them, is not theirs."""
    text = "def annotated(value: int) -> int:\n    return value\n"
    compiled[("exec", text)] = builtins.compile(text, "<string>", "exec", dont_inherit=True)
    namespace: dict[str, Any] = {}
    dataclasses.exec(text, namespace)  # type: ignore[attr-defined]  # from this module: as builtins.exec
    assert namespace["annotated"].__annotations__ == {"value": "int", "return": "int"}
    as_if = {"run": dataclasses.exec, "TEXT": text}  # type: ignore[attr-defined]  # code without them: the bundle's
    builtins.exec(builtins.compile("run(TEXT, globals())", "<string>", "exec", dont_inherit=True), as_if)
    bundled = list(_codes(compiled[("exec", text)]))
    assert as_if["annotated"].__code__ in bundled and namespace["annotated"].__code__ not in bundled


def test_without_namespaces_the_text_runs_in_the_callers(compiled: dict[tuple[str, str], Any]) -> None:
    namespace = {"run": dataclasses.exec, "evaluate": collections.eval}  # type: ignore[attr-defined]
    builtins.exec("run('seen = 1')\nsum_ = evaluate('seen + 1')", namespace)
    assert (namespace["seen"], namespace["sum_"]) == (1, 2)


def test_uninstalled_the_builtins_compile_again_and_the_same_code(compiled: dict[tuple[str, str], Any]) -> None:
    assert {"exec", "eval", "compile"} <= {*vars(dataclasses), *vars(collections), *vars(typing)}
    with_bundle = _declare()
    import_bundle.uninstall()
    assert "exec" not in vars(dataclasses) and "eval" not in vars(collections) and "compile" not in vars(typing)
    counted = dict(import_bundle.compiles)
    price_class, point_class, annotation = _declare()
    assert import_bundle.compiles == counted and price_class(1).currency == "usd"
    # What the builtins compiled is the code the bundle gave: equal, not the same objects
    methods = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")
    pairs = [(inspect.unwrap(getattr(with_bundle[0], m)).__code__, inspect.unwrap(getattr(price_class, m)).__code__)
             for m in methods]
    pairs += [(with_bundle[1].__new__.__code__, point_class.__new__.__code__),
              (with_bundle[2].__forward_code__, annotation.__forward_code__)]
    for before, after in pairs:
        assert before == after and before is not after


def test_the_command_line_takes_the_texts_of_a_compiles_file(layer: tuple[Path, str]) -> None:
    root, name = layer
    listing = root.parent / "modules.txt"
    listing.write_text(f"{name}\n")
    texts = root.parent / "compiles.json"
    texts.write_text(json.dumps({"note": "test", "texts": [["eval", "int | None"], ["exec", "x = 1\n"]]}))
    out = root / "gateway-imports.bin"
    assert import_bundle.main([str(out), str(listing), str(root), "--compiles", str(texts)]) == 0
    assert import_bundle.install(str(out)) and import_bundle._installed is not None
    assert set(import_bundle._installed.compiled) == {("eval", "int | None"), ("exec", "x = 1\n")}
    assert import_bundle._installed.index[name][:2] == (f"{name}/__init__.py", True)
