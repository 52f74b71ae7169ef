"""``mlp refresh-models``: run discovery now, with a progress display.

Progress goes to stderr as each source answers (fetched N models, time, failures), then a table
per source -- fetched / added / updated / price changes / deactivated / reactivated / skipped --
and the published catalogue version. stdout gets one summary line (or the whole result with
``--json``), so scripts can use it.

Attribution in the table: additions, updates and price changes count for the source the data
came from (OpenRouter for every priced model); a deactivation counts for the source the model is
routed through; ``skipped`` = listed but not importable (no price, dynamic price, no route).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from .discovery import SOURCES, SourceResult, SyncResult

Print = Callable[[str], None]

_COLUMNS = ("fetched", "added", "updated", "price_changed", "deactivated", "reactivated", "skipped")
_HEADERS = ("fetched", "added", "updated", "price Δ", "deactivated", "reactivated", "skipped")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", action="append", choices=SOURCES, dest="sources", metavar="SOURCE",
                        help=f"only these sources (repeatable; default: every configured one of {', '.join(SOURCES)})")
    parser.add_argument("--dry-run", action="store_true", help="fetch and show what would change; write nothing")
    parser.add_argument("--force", action="store_true",
                        help="accept a source list that shrank below CATALOG_MIN_SOURCE_RATIO of the last good one")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any source failed (default: only "
                        "when all failed)")
    parser.add_argument("--show-changes", action="store_true", help="list the individual changes (first 50)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout")


class ProgressPrinter:
    """Renders discovery progress events as lines (stderr)."""

    def __init__(self, info: Print) -> None:
        self.info = info

    def __call__(self, event: str, **data: Any) -> None:
        if event == "fetching":
            names = data.get("sources") or []
            self.info(f"refresh-models: fetching {', '.join(names) if names else 'no sources'} ...")
        elif event == "fetched":
            r: SourceResult = data["result"]
            if r.ok:
                note = f"  ({len(r.skipped)} not importable)" if r.skipped else ""
                self.info(f"  ok    {r.name:<11} fetched {r.count:>5} models {r.elapsed_ms:>8.0f} ms{note}")
            else:
                self.info(f"  FAIL  {r.name:<11} {r.error}  ({r.elapsed_ms:.0f} ms; keeping its last good data)")
        elif event == "writing":
            self.info("writing model_pricing ...")
        elif event == "published":
            self.info(f"published catalogue {data['version']} ({data['models']} active models) to the cache")
        elif event == "publish_failed":
            self.info(f"WARN  cache not updated ({data['error']}); the next cache miss rebuilds it")


def table(result: SyncResult) -> list[str]:
    width = max([len("source"), len("total"), *(len(n) for n in result.sources)])
    head = "  ".join(f"{h:>{max(len(h), 7)}}" for h in _HEADERS)
    lines = [f"{'source':<{width}}  {head}"]
    totals = dict.fromkeys(_COLUMNS, 0)
    for name, stats in result.sources.items():
        values = []
        for col, h in zip(_COLUMNS, _HEADERS, strict=True):
            value = getattr(stats, col)
            totals[col] += value
            values.append(f"{value:>{max(len(h), 7)}}")
        status = "" if stats.ok else f"  FAILED: {stats.error}"
        lines.append(f"{name:<{width}}  {'  '.join(values)}{status}")
    lines.append(f"{'total':<{width}}  " + "  ".join(
        f"{(totals[c] if c != 'fetched' else ''):>{max(len(h), 7)}}" for c, h in zip(_COLUMNS, _HEADERS, strict=True)))
    return lines


def summary_line(result: SyncResult) -> str:
    prefix = "dry run: would apply" if result.dry_run else result.status + ":"
    text = (f"{prefix} {result.added} added, {result.updated} updated ({result.price_changed} price changes), "
            f"{result.deactivated} deactivated, {result.reactivated} reactivated, {result.skipped} skipped")
    if result.active is not None:
        text += f"; {result.active} active models"
    if result.failed_sources:
        text += f"; failed: {', '.join(result.failed_sources)}"
    return text


async def refresh_models(args: argparse.Namespace, *, out: Print, info: Print) -> SyncResult:
    from ..adapters.http_client import aclose_http_client
    from ..upstash import get_redis, reset_redis
    from .discovery import discover

    try:
        result = await discover(trigger="cli", sources=args.sources, force=args.force, dry_run=args.dry_run,
                                progress=ProgressPrinter(info), emit_metrics=False)
    finally:
        await aclose_http_client()
        try:
            await get_redis().close()
        except Exception:  # noqa: S110 -- best-effort cleanup of the REST client
            pass
        reset_redis()
    for line in table(result):
        info(line)
    if args.show_changes:
        for change in result.changes:
            info("  " + json.dumps(change, default=str))
    info(f"done in {result.duration_ms / 1000:.2f} s")
    out(json.dumps(result.to_dict(), default=str, indent=2) if args.json else summary_line(result))
    return result
