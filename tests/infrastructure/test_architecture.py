"""The import rule of docs/architecture.md, checked: every room of gateway/ is placed in the
layers contract of pyproject.toml (``[tool.importlinter]``), imports only rooms below it, and no
modules or packages import each other in a circle (import-linter, on the real import graph)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = Path(gateway.__file__).parent


def _contracts() -> list[dict]:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_room_has_a_place_in_the_rule() -> None:
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    rooms = {p.stem for p in GATEWAY.glob("*.py") if p.stem != "__init__"}
    rooms |= {p.name for p in GATEWAY.iterdir() if (p / "__init__.py").exists()}
    assert rooms == placed, f"unplaced rooms: {sorted(rooms - placed)}, stale names: {sorted(placed - rooms)}"


def test_the_room_list_in_the_package_docstring_is_complete() -> None:
    doc = gateway.__doc__ or ""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    missing = [name.strip() for layer in layers for name in layer.split("|") if f"``{name.strip()}``" not in doc]
    assert not missing, f"gateway/__init__.py does not list: {missing}"


def test_imports_follow_the_rule_and_have_no_cycles() -> None:
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", "pyproject.toml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout
