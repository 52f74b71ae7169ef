"""Where a gateway process spends its CPU: py-spy samples summarised by package.

bench/peers.py ``--profile`` records our query function with py-spy (``--format raw``: one line
per distinct stack, ``frame;frame;…;leaf count``) during an extra c=16 run after its measured ones
(sampling pauses the process, so profiled runs are never the reported ones) and prints ``summary()``:
self time by package (the leaf frame's package or, for our code, module) and inclusive time of
the parts of the request path.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

from bench.stack import ROOT

# inclusive buckets: a sample counts once in each bucket whose pattern one of its frames matches
# (not the server/framework: every request runs inside them; their own cost is in the self time)
PARTS = {
    "rate limit (gateway.ratelimit, Upstash client)": r"gateway/ratelimit\.py|gateway/upstash\.py",
    "reserve (ledger.reserve)": r"^reserve \(.*gateway/money/ledger\.py",
    "settle (ledger.settle)": r"^settle \(.*gateway/money/ledger\.py",
    "upstream call + translation (gateway.adapters)": r"gateway/adapters/",
    "API key (gateway.auth)": r"gateway/auth\.py",
    "request validation (pydantic)": r"\(pydantic",
    "Decimal pricing (gateway.money.pricing)": r"gateway/money/pricing\.py",
    "JSON (json module)": r"\(json/",
    "logging/metrics (powertools, logging)": r"\((aws_lambda_powertools|logging)/",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):\d+\)$")


def py_spy() -> str | None:
    """py-spy from PATH or the throw-away tools venv (.local/peers/tools-venv)."""
    local = ROOT / ".local" / "peers" / "tools-venv" / "bin" / "py-spy"
    return shutil.which("py-spy") or (str(local) if local.exists() else None)


def _package(path: str) -> str:
    """py-spy shortens paths to ``package/module.py``: our modules by name, the rest by package."""
    path = path.split("site-packages/", 1)[-1]
    if path.startswith("gateway/") or "/gateway/" in path:
        return "gateway." + path.split("gateway/", 1)[1].removesuffix(".py").replace("/", ".")
    return path.split("/", 1)[0].removesuffix(".py")


def summary(raw: Path, top: int = 12) -> str:
    self_time: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = _FRAME.match(frames[-1])
        self_time[_package(leaf.group("file")) if leaf else frames[-1]] += count
        for name, pattern in PARTS.items():
            if any(re.search(pattern, f) for f in frames):
                parts[name] += count
    if not total:
        return "py-spy recorded no samples"
    lines = [f"py-spy, {total} samples of the gateway process. Inclusive share by part of the request path:"]
    lines += [f"- {name}: {100 * n / total:.1f}%" for name, n in parts.most_common()]
    lines += ["Self time by package (leaf frame):"]
    lines += [f"- {name}: {100 * n / total:.1f}%" for name, n in self_time.most_common(top)]
    return "\n".join(lines)
