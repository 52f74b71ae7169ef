"""README's error table names the upstream error codes the gateway really returns, and no other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = ROOT / "layers" / "common" / "gateway"
# ``code="upstream_x"`` / ``code = "upstream_x"``, and both arms of ``code="a" if ... else "b"``
CODE = re.compile(r"""code\s*=\s*["'](upstream_[a-z_]+)["']"""
                  r"""|["'](upstream_[a-z_]+)["']\s+if\b|else\s+["'](upstream_[a-z_]+)["']""")


def _returned() -> set[str]:
    codes: set[str] = set()
    for path in GATEWAY.rglob("*.py"):
        for match in CODE.finditer(path.read_text()):
            codes.add(next(g for g in match.groups() if g))
    return codes


def _documented() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| Situation | Status | `error.code`"):]
    table = table[:table.index("\n\n")]
    return set(re.findall(r"`(upstream_[a-z_]+)`", table))


def test_every_upstream_error_code_returned_is_documented_and_vice_versa() -> None:
    returned = _returned()
    assert {"upstream_unreachable", "upstream_connection_error", "upstream_error", "upstream_unavailable",
            "upstream_timeout"} <= returned  # the scan finds them (it would pass vacuously otherwise)
    assert returned == _documented()
