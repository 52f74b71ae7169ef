"""The interleaved A/B benchmark (bench/ab.py) runs each side from its own tree, and a side's extra
environment reaches its process: a ``PYTHONPATH`` given with ``--cand-env`` is kept, after the tree."""

from __future__ import annotations

from pathlib import Path

from bench import ab


def test_a_side_runs_its_own_tree_first() -> None:
    side = ab.Side("A", Path("/trees/a"), "main", {})
    assert ab.python_path(side) == "/trees/a/layers/common:/trees/a"


def test_a_pythonpath_from_the_side_environment_is_kept_after_the_tree() -> None:
    side = ab.Side("B", Path("/trees/b"), "working tree", {"PYTHONPATH": "/tmp/experiment", "X": "1"})
    assert ab.python_path(side) == "/trees/b/layers/common:/trees/b:/tmp/experiment"
