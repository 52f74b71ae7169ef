"""Discovery and pricing sync: provider model lists -> ``model_pricing`` (the billing source of truth).

Sources, fetched concurrently with the shared upstream HTTP client:

* ``openrouter``: ``GET {OPENROUTER_BASE_URL}/models`` -- hundreds of priced models (public
  endpoint; our key is sent when we hold one) -- and ``GET .../embeddings/models``, its embedding
  models (``output_modalities: ["embeddings"]``, priced per input token; one source: either list
  failing fails it);
* ``openai`` / ``anthropic`` / ``gemini``: each direct provider's own list, only where we hold a
  key. They carry no prices; they say which models we can route directly (and under which name).

Merged by catalogue id (``vendor/model``, OpenRouter style; ``feeds.catalogue_ids`` maps the direct
names). Then, in ONE transaction under an advisory lock (concurrent runs serialise):

* new priced models are inserted (routed to a direct provider when its list has them, else through
  OpenRouter -- only if we hold an OpenRouter key, otherwise they could not be served);
* existing models get the listed prices and metadata; a price change archives the old prices in
  ``model_price_history`` (trigger) and bumps ``updated_at`` / ``price_changed_at``; routing
  (provider, upstream model), owner and per-model markup are never touched;
* a model no successful source lists any more is marked inactive (``deactivated_reason =
  'vanished'``, never deleted) -- but only when every source that could list it answered: a
  failing source keeps the last good catalogue (and emits the ``CatalogSourceFailure`` metric).
  A source whose list shrank below ``catalog_min_source_ratio`` of its last good size counts as
  failed too. Rows with ``source`` 'manual' or 'local' and ``compat`` models are left alone;
* an inactive model that reappears is reactivated if discovery had deactivated it.

Afterwards the registry of this container is invalidated and the rendered catalogue is
re-published to Redis from Postgres. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import httpx
from psycopg.types.json import Jsonb

from .. import db
from ..adapters import registry as providers
from ..adapters.contract import DirectModel
from ..adapters.http_client import get_catalog_http_client
from ..adapters.registry import DIRECT_PROVIDERS, OPENROUTER, catalogue_ids
from ..config import Settings, get_settings
from ..observability import MetricUnit, count, in_lambda, logger
from ..observability import emit as emit_metrics
from . import cache, registry
from .feeds import PRICE_COLUMNS, DiscoveredModel, format_amount, parse_openrouter_payload

SOURCES = (OPENROUTER, *DIRECT_PROVIDERS)
LOCK_ID = 0x4D4C5043  # "MLPC": advisory lock of the catalogue write phase
UNTOUCHED_SOURCES = frozenset({"manual", "local"})  # model_pricing.source values discovery leaves alone
OPTIONAL_ZERO_AS_NULL = frozenset({"image", "web_search", "internal_reasoning"})

Progress = Callable[..., None]


class SourceError(Exception):
    pass


@dataclass(slots=True)
class SourceResult:
    name: str
    ok: bool = False
    models: list[DiscoveredModel] = field(default_factory=list)   # openrouter: priced models
    direct: list[DirectModel] = field(default_factory=list)       # direct providers
    listed_ids: set[str] = field(default_factory=set)             # openrouter: every id listed, priced or not
    skipped: list[tuple[str, str]] = field(default_factory=list)
    count: int = 0
    error: str | None = None
    elapsed_ms: float = 0.0


@dataclass(slots=True, kw_only=True)
class Changes:
    """What a run changes in model_pricing: per source (``SourceStats``) and in all (``SyncResult``)."""

    added: int = 0
    updated: int = 0
    price_changed: int = 0
    deactivated: int = 0
    reactivated: int = 0
    skipped: int = 0              # listed but not importable


@dataclass(slots=True, kw_only=True)
class SourceStats(Changes):
    ok: bool = False
    fetched: int = 0
    error: str | None = None
    elapsed_ms: float = 0.0


@dataclass(slots=True, kw_only=True)
class SyncResult(Changes):
    status: str                   # ok | partial | failed | skipped
    sync_id: int | None = None
    sources: dict[str, SourceStats] = field(default_factory=dict)
    unchanged: int = 0
    active: int | None = None
    published_version: str | None = None
    duration_ms: float = 0.0
    dry_run: bool = False
    error: str | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)   # first few changes, for logs / the CLI

    @property
    def failed_sources(self) -> list[str]:
        return [name for name, s in self.sources.items() if not s.ok]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed_sources"] = self.failed_sources
        return out


# ----------------------------------------------------------------------------- fetching


def configured_sources(settings: Settings) -> list[str]:
    out = [OPENROUTER] if settings.openrouter_base_url else []
    out += [p for p in DIRECT_PROVIDERS if providers.provider(p).api_key(settings)]
    return out


async def _get_json(client: httpx.AsyncClient, url: str, *, headers: dict[str, str],
                    params: dict[str, Any] | None, limit_s: float) -> Any:
    try:
        response = await client.get(url, headers=headers, params=params, timeout=httpx.Timeout(limit_s))
    except httpx.TimeoutException:
        raise SourceError("timed out") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"{type(exc).__name__}: {exc}"[:300]) from None
    if response.status_code != 200:
        raise SourceError(f"HTTP {response.status_code}")
    try:
        # parse_float=Decimal: a numeric price or discount stays exact
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        raise SourceError("response is not valid JSON") from None


async def _fetch(name: str, settings: Settings, client: httpx.AsyncClient) -> SourceResult:
    """One source: OpenRouter's priced catalogue, or a direct provider's model list (its registry
    entry's ``list_models``), with our key where we hold one."""
    result = SourceResult(name)
    timeout = settings.catalog_fetch_timeout_s
    started = time.perf_counter()

    async def get(url: str, headers: Mapping[str, str], params: Mapping[str, Any] | None) -> Any:
        return await _get_json(client, url, headers={"accept": "application/json", **headers},
                               params=dict(params) if params else None, limit_s=timeout)

    try:
        async with asyncio.timeout(timeout):
            if name not in SOURCES:
                raise SourceError(f"unknown source {name!r}")
            entry = providers.provider(name)
            base_url = entry.base_url(settings).rstrip("/")
            headers = providers.get_adapter(name).auth_headers(entry.api_key(settings))
            if name == OPENROUTER:  # the priced catalogue: chat models, then embedding models
                payload, embedding_payload = await asyncio.gather(
                    get(f"{base_url}/models", headers, None), get(f"{base_url}/embeddings/models", headers, None))
                models, skipped, count = parse_openrouter_payload(payload)
                chat_ids = {m.id for m in models}
                embedding_models, embedding_skipped, _ = parse_openrouter_payload(embedding_payload)
                models += [m for m in embedding_models if m.id not in chat_ids]
                skipped += embedding_skipped
                # ``count`` (the truncation guard's size) stays the chat list's
                result.models, result.skipped, result.count = models, skipped, count
                result.listed_ids = {m.id for m in models} | {i for i, _ in skipped if i != "?"}
            else:
                assert entry.list_models is not None
                result.direct, result.count = await entry.list_models(get, base_url, headers)
        result.ok = True
    except TimeoutError:
        result.error = "timed out"
    except SourceError as exc:
        result.error = str(exc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        result.error = f"unexpected response: {exc}"[:300]
    result.elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    if not result.ok:
        result.models, result.direct, result.listed_ids = [], [], set()
    return result


async def fetch_sources(names: Iterable[str], settings: Settings | None = None,
                        progress: Progress | None = None) -> dict[str, SourceResult]:
    settings = settings or get_settings()
    client = get_catalog_http_client()

    async def one(name: str) -> SourceResult:
        result = await _fetch(name, settings, client)
        if progress:
            progress("fetched", source=name, result=result)
        return result

    results = await asyncio.gather(*(one(n) for n in names))
    return {r.name: r for r in results}


# ----------------------------------------------------------------------------- planning (pure)


def _tiers_json(model: DiscoveredModel) -> list[dict[str, Any]] | None:
    if not model.tiers:
        return None
    return [{k: (v if k == "min_prompt_tokens" else format_amount(v)) for k, v in t.items()} for t in model.tiers]


def desired_columns(model: DiscoveredModel) -> dict[str, Any]:
    """The model_pricing columns a discovered model determines (everything but routing/markup)."""
    out: dict[str, Any] = {
        "name": model.name,
        "description": model.description,
        "context_length": model.context_length,
        "max_completion_tokens": model.max_completion_tokens,
        "input_modalities": list(model.input_modalities),
        "output_modalities": list(model.output_modalities),
        "architecture": model.architecture,
        "supported_parameters": model.supported_parameters,
        "canonical_slug": model.canonical_slug,
        "openrouter_id": model.id,
        "upstream_created_at": dt.datetime.fromtimestamp(model.created, dt.UTC) if model.created else None,
        "is_free": model.is_free,
        "discount": model.discount,
        "price_tiers": _tiers_json(model),
        "pricing_extra": {k: format_amount(v) for k, v in sorted(model.extra_prices.items())} or None,
        "list_pricing": model.list_pricing,
    }
    for key, column in PRICE_COLUMNS.items():
        value = model.prices.get(key)
        # OpenRouter lists "image": "0", "web_search": "0", ... for models without such charges:
        # stored as NULL (no charge) so they are not "price changes" of seeded rows.
        if key in OPTIONAL_ZERO_AS_NULL and value is not None and value == 0:
            value = None
        out[column] = value
    out["request_price"] = out["request_price"] if out["request_price"] is not None else Decimal(0)
    return out


PRICE_FIELDS = (*PRICE_COLUMNS.values(), "discount", "price_tiers", "pricing_extra")
JSON_FIELDS = frozenset({"architecture", "price_tiers", "pricing_extra", "list_pricing"})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Decimal) or isinstance(b, Decimal):
        if a is None or b is None:
            return a is b
        return Decimal(a) == Decimal(b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return bool(a == b)


def diff_row(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (existing.get(k), v) for k, v in desired.items() if not _same(existing.get(k), v)}


@dataclass(slots=True)
class SyncPlan:
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)        # full desired columns + id
    price_changes: list[str] = field(default_factory=list)
    seen: dict[str, list[str]] = field(default_factory=dict)           # id -> sources that listed it
    deactivate: list[str] = field(default_factory=list)
    reactivate: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (source, id, reason)
    changes: list[dict[str, Any]] = field(default_factory=list)
    per_source: dict[str, SourceStats] = field(default_factory=dict)


def _source_stats(results: Mapping[str, SourceResult]) -> dict[str, SourceStats]:
    return {name: SourceStats(ok=r.ok, fetched=r.count, error=r.error, elapsed_ms=r.elapsed_ms,
                              skipped=len(r.skipped)) for name, r in results.items()}


def plan_sync(existing: Mapping[str, Mapping[str, Any]], results: Mapping[str, SourceResult], *,
              openrouter_routable: bool, configured: Iterable[str] = (), max_changes_logged: int = 50) -> SyncPlan:
    """Decide every insert/update/(de)activation. ``existing``: all model_pricing rows by id.
    ``configured``: the sources a full run asks; one of them missing from ``results`` (a run
    restricted to some sources) counts as unknown, like a failed one."""
    plan = SyncPlan(per_source=_source_stats(results))
    orr = results.get("openrouter")
    or_ok = bool(orr and orr.ok)
    or_models = {m.id: m for m in orr.models} if orr and orr.ok else {}
    or_listed = orr.listed_ids if orr and orr.ok else set()
    direct_ok = {p: r for p, r in results.items() if p in DIRECT_PROVIDERS and r.ok}
    direct_failed = {p for p, r in results.items() if p in DIRECT_PROVIDERS and not r.ok}
    direct_failed |= {p for p in configured if p in DIRECT_PROVIDERS and p not in results}
    direct_names = {p: {d.upstream for d in r.direct} for p, r in direct_ok.items()}
    direct_by_id: dict[str, tuple[str, str]] = {}
    for p, r in direct_ok.items():
        for d in r.direct:
            for cid in catalogue_ids(p, d.upstream):
                direct_by_id.setdefault(cid, (p, d.upstream))

    def note(kind: str, model_id: str, **extra: Any) -> None:
        if len(plan.changes) < max_changes_logged:
            plan.changes.append({"change": kind, "id": model_id, **extra})

    handled: set[str] = set()
    for model_id, row in existing.items():
        handled.add(model_id)
        if row.get("provider") == "compat" or row.get("source") in UNTOUCHED_SOURCES:
            continue
        provider = row.get("provider")
        seen_in: list[str] = []
        if model_id in or_listed:
            seen_in.append("openrouter")
        if provider in direct_names and row.get("upstream_model") in direct_names[provider]:
            seen_in.append(str(provider))
        elif model_id in direct_by_id and provider == "openrouter":
            seen_in.append(direct_by_id[model_id][0])
        if not seen_in:
            unknown = not or_ok or provider in direct_failed
            if not unknown and row.get("active"):
                plan.deactivate.append(model_id)
                home = provider if provider in direct_ok else "openrouter"
                plan.per_source.setdefault(home, SourceStats()).deactivated += 1
                note("deactivated", model_id)
            continue
        plan.seen[model_id] = seen_in
        credited = "openrouter" if model_id in or_models else seen_in[0]
        stats = plan.per_source.setdefault(credited, SourceStats())
        if not row.get("active") and row.get("deactivated_reason") == "vanished":
            plan.reactivate.append(model_id)
            stats.reactivated += 1
            note("reactivated", model_id)
        model = or_models.get(model_id)
        if model is None:
            plan.unchanged += 1
            continue
        desired = desired_columns(model)
        changed = diff_row(row, desired)
        if not changed:
            plan.unchanged += 1
            continue
        plan.updates.append({"id": model_id, **desired})
        stats.updated += 1
        price_fields = sorted(k for k in changed if k in PRICE_FIELDS)
        if price_fields:
            plan.price_changes.append(model_id)
            stats.price_changed += 1
            note("price_changed", model_id, fields={k: [_show(changed[k][0]), _show(changed[k][1])]
                                                    for k in price_fields})
        else:
            note("updated", model_id, fields=sorted(changed))

    for model_id, model in or_models.items():
        if model_id in handled:
            continue
        if model_id in direct_by_id:
            provider, upstream = direct_by_id[model_id]
        elif openrouter_routable:
            provider, upstream = "openrouter", model_id
        else:
            plan.skipped.append(("openrouter", model_id, "no OpenRouter key and no direct provider lists it"))
            plan.per_source["openrouter"].skipped += 1
            continue
        seen_in = ["openrouter"] + ([provider] if provider != "openrouter" else [])
        plan.inserts.append({"id": model_id, "provider": provider, "upstream_model": upstream,
                             "owned_by": model.owned_by, **desired_columns(model)})
        plan.seen[model_id] = seen_in
        plan.per_source["openrouter"].added += 1
        note("added", model_id, provider=provider)

    for p, r in direct_ok.items():
        for d in r.direct:
            ids = catalogue_ids(p, d.upstream)
            if not any(i in existing or i in or_models for i in ids):
                plan.skipped.append((p, ids[0], "no price from any source"))
                plan.per_source[p].skipped += 1
    for source, r in results.items():
        plan.skipped += [(source, model_id, reason) for model_id, reason in r.skipped]
    return plan


def _show(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format_amount(value)
    return value


# ----------------------------------------------------------------------------- writing

_COLUMNS = ("name", "description", "context_length", "max_completion_tokens", "input_modalities",
            "output_modalities", "architecture", "supported_parameters", "canonical_slug", "openrouter_id",
            "upstream_created_at", "is_free", "discount", "price_tiers", "pricing_extra", "list_pricing",
            *PRICE_COLUMNS.values())

INSERT_SQL = f"""
INSERT INTO model_pricing (id, provider, upstream_model, owned_by, source, active, seen_in, last_seen_at,
                           {", ".join(_COLUMNS)})
VALUES (%(id)s, %(provider)s, %(upstream_model)s, %(owned_by)s, 'discovery', true, %(seen_in)s, now(),
        {", ".join(f"%({c})s" for c in _COLUMNS)})
ON CONFLICT (id) DO NOTHING
"""

UPDATE_SQL = f"""
UPDATE model_pricing SET {", ".join(f"{c} = %({c})s" for c in _COLUMNS)}, updated_at = now()
WHERE id = %(id)s
"""

TOUCH_SQL = """
UPDATE model_pricing AS m SET last_seen_at = now(), seen_in = v.seen
FROM (SELECT key AS id, ARRAY(SELECT jsonb_array_elements_text(value)) AS seen
      FROM jsonb_each(%s::jsonb)) AS v
WHERE m.id = v.id
"""

DEACTIVATE_SQL = """
UPDATE model_pricing SET active = false, deactivated_at = now(), deactivated_reason = 'vanished', updated_at = now()
WHERE id = ANY(%s) AND active
"""

REACTIVATE_SQL = """
UPDATE model_pricing SET active = true, deactivated_at = NULL, deactivated_reason = NULL, updated_at = now()
WHERE id = ANY(%s) AND NOT active
"""


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (Jsonb(v) if k in JSON_FIELDS and v is not None else v) for k, v in row.items()}


async def _apply(conn: db.Connection, plan: SyncPlan) -> None:
    async with conn.cursor() as cur:
        if plan.updates:
            await cur.executemany(UPDATE_SQL, [_params(u) for u in plan.updates])
        if plan.inserts:
            await cur.executemany(INSERT_SQL, [_params({**i, "seen_in": plan.seen.get(i["id"], [])})
                                               for i in plan.inserts])
        if plan.seen:
            await cur.execute(TOUCH_SQL, (json.dumps(plan.seen),))
        if plan.deactivate:
            await cur.execute(DEACTIVATE_SQL, (plan.deactivate,))
        if plan.reactivate:
            await cur.execute(REACTIVATE_SQL, (plan.reactivate,))


# ----------------------------------------------------------------------------- bookkeeping


async def _already_done(trigger_id: str) -> bool:
    row = await db.fetchone("SELECT 1 AS done FROM catalog_syncs WHERE trigger_id = %s AND status IN ('ok', 'partial')",
                            (trigger_id,))
    return row is not None


async def _last_counts() -> dict[str, int]:
    rows = await db.fetchall("SELECT source, last_count FROM catalog_sources WHERE last_count IS NOT NULL")
    return {r["source"]: r["last_count"] for r in rows}


def _guard_shrink(results: dict[str, SourceResult], last: Mapping[str, int], ratio: float) -> None:
    for name, r in results.items():
        previous = last.get(name)
        if r.ok and previous and ratio > 0 and r.count < previous * ratio:
            r.ok = False
            r.error = f"list shrank from {previous} to {r.count} models (below {ratio:.0%}); kept the last good one"
            r.models, r.direct, r.listed_ids = [], [], set()


async def _record_sources(results: Mapping[str, SourceResult]) -> None:
    for name, r in results.items():
        if r.ok:
            await db.execute(
                """INSERT INTO catalog_sources (source, last_attempt_at, last_success_at, last_count,
                                               consecutive_failures)
                   VALUES (%s, now(), now(), %s, 0)
                   ON CONFLICT (source) DO UPDATE SET last_attempt_at = now(), last_success_at = now(),
                       last_count = EXCLUDED.last_count, consecutive_failures = 0""", (name, r.count))
        else:
            await db.execute(
                """INSERT INTO catalog_sources (source, last_attempt_at, last_error, last_error_at,
                                               consecutive_failures)
                   VALUES (%s, now(), %s, now(), 1)
                   ON CONFLICT (source) DO UPDATE SET last_attempt_at = now(), last_error = EXCLUDED.last_error,
                       last_error_at = now(),
                       consecutive_failures = catalog_sources.consecutive_failures + 1""", (name, r.error))


def _emit_failure_metrics(failed: list[str], emit: bool) -> None:
    if not failed:
        return
    count("CatalogSourceFailures", len(failed))
    if not emit:
        return
    for name in failed:
        try:
            emit_metrics({"source": name}, [("CatalogSourceFailure", 1, MetricUnit.Count)], service_dimension=False)
        except Exception:  # a metric must never break discovery
            logger.exception("could not emit the CatalogSourceFailure metric")


# ----------------------------------------------------------------------------- entry point


async def discover(*, trigger: str = "manual", trigger_id: str | None = None, sources: Iterable[str] | None = None,
                   force: bool = False, dry_run: bool = False, publish: bool = True,
                   progress: Progress | None = None, emit_metrics: bool | None = None) -> SyncResult:
    """Run one discovery + pricing sync. Never raises for a provider failure (see ``status``)."""
    settings = get_settings()
    started = time.perf_counter()
    emit = in_lambda() if emit_metrics is None else emit_metrics
    if trigger_id and not dry_run and await _already_done(trigger_id):
        logger.info("catalogue sync already done for this trigger", extra={"trigger_id": trigger_id})
        return SyncResult(status="skipped")
    names = [s for s in (sources or configured_sources(settings)) if s in SOURCES]
    if progress:
        progress("fetching", sources=names)
    results = await fetch_sources(names, settings, progress)
    if not force:
        _guard_shrink(results, await _last_counts(), settings.catalog_min_source_ratio)
    failed = [n for n, r in results.items() if not r.ok]
    if failed:
        logger.warning("catalogue sources failed; keeping their last good data",
                       extra={"failed": {n: results[n].error for n in failed}})
    _emit_failure_metrics(failed, emit)

    status = "ok" if not failed else ("failed" if len(failed) == len(results) else "partial")
    sync_id: int | None = None
    if not dry_run:
        row = await db.fetchone("INSERT INTO catalog_syncs (trigger, trigger_id, status) VALUES (%s, %s, 'running') "
                                "RETURNING id", (trigger, trigger_id))
        sync_id = row["id"] if row else None
        await _record_sources(results)

    plan = SyncPlan(per_source=_source_stats(results))
    error: str | None = None
    if status != "failed":
        if progress:
            progress("writing")
        try:
            async with db.transaction() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
                await conn.execute("SELECT set_config('mlp.price_change_source', %s, true)",
                                   (f"discovery:{trigger}:{sync_id}",))
                cur = await conn.execute("SELECT * FROM model_pricing FOR UPDATE")
                columns = [c.name for c in cur.description or ()]
                existing = {r[0]: dict(zip(columns, r, strict=True)) for r in await cur.fetchall()}
                plan = plan_sync(existing, results, openrouter_routable=bool(settings.openrouter_api_key),
                                 configured=configured_sources(settings))
                if not dry_run:
                    await _apply(conn, plan)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            status = "failed"
            logger.exception("catalogue write failed; nothing changed")

    result = SyncResult(
        status=status, sync_id=sync_id, sources=plan.per_source, added=len(plan.inserts),
        updated=len(plan.updates), price_changed=len(plan.price_changes), deactivated=len(plan.deactivate),
        reactivated=len(plan.reactivate), unchanged=plan.unchanged, skipped=len(plan.skipped),
        dry_run=dry_run, error=error, changes=plan.changes)
    if error is None and failed:
        result.error = "; ".join(f"{n}: {results[n].error}" for n in failed)

    if not dry_run:
        registry.invalidate()
        if publish:
            try:
                catalogue = await cache.publish_from_database()
                result.published_version, result.active = catalogue.version, len(catalogue)
                if progress:
                    progress("published", version=catalogue.version, models=len(catalogue))
            except Exception as exc:
                logger.warning("catalogue not published to the cache; a miss will rebuild it",
                               extra={"error": f"{type(exc).__name__}: {exc}"})
                if progress:
                    progress("publish_failed", error=f"{type(exc).__name__}: {exc}")
    result.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    if sync_id is not None:
        try:
            await db.execute(
                """UPDATE catalog_syncs SET status = %s, finished_at = now(), sources = %s, added = %s, updated = %s,
                       price_changed = %s, deactivated = %s, reactivated = %s, skipped = %s, error = %s
                   WHERE id = %s""",
                (status, Jsonb({n: asdict(s) for n, s in result.sources.items()}), result.added, result.updated,
                 result.price_changed, result.deactivated, result.reactivated, result.skipped, result.error,
                 sync_id))
        except Exception:
            logger.exception("could not record the catalogue sync")
    for name, value in (("CatalogModelsAdded", result.added), ("CatalogPriceChanges", result.price_changed),
                        ("CatalogModelsDeactivated", result.deactivated)):
        if value:
            count(name, value)
    logger.info("catalogue sync finished", extra={"sync": {k: v for k, v in result.to_dict().items()
                                                            if k != "changes"}})
    if progress:
        progress("done", result=result)
    return result
