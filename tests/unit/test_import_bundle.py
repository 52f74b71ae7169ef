"""gateway.import_bundle: modules imported from one file the build wrote, as a normal import gives them
(file, package path, source, tracebacks, resources), and nothing else changed; a bundle of another
Python, or none, changes nothing; uninstalled, imports are as always again."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import shutil
import sys
import traceback
import uuid
from collections.abc import Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path

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
