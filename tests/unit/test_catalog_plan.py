"""The discovery planner (pure): merge by id, routing of new models, deactivation only when every
source that could list a model answered, shrink guard; and the scheduled event parser."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from gateway.adapters.contract import DirectModel
from gateway.catalog.discovery import SourceResult, _guard_shrink, desired_columns, plan_sync
from gateway.catalog.feeds import parse_openrouter_model
from gateway.catalog.warm import parse_event

D = Decimal


def or_model(model_id: str, prompt: str = "0.000001", completion: str = "0.000002") -> Any:
    raw = {"id": model_id, "name": model_id, "context_length": 8192,
           "pricing": {"prompt": prompt, "completion": completion},
           "top_provider": {"max_completion_tokens": 4096}}
    return parse_openrouter_model(json.loads(json.dumps(raw), parse_float=D))


def existing(model_id: str, provider: str = "openrouter", upstream: str | None = None, **over: Any) -> dict[str, Any]:
    m = or_model(model_id)
    row = {"id": model_id, "provider": provider, "upstream_model": upstream or model_id, "owned_by": "x",
           "source": "seed", "active": True, "deactivated_reason": None, **desired_columns(m)}
    row.update(over)
    return row


def orr(*models: Any, ok: bool = True, skipped: tuple[str, ...] = ()) -> SourceResult:
    r = SourceResult("openrouter", ok=ok, models=list(models), count=len(models) + len(skipped),
                     skipped=[(s, "dynamic price") for s in skipped])
    r.listed_ids = {m.id for m in models} | set(skipped)
    if not ok:
        r.error = "HTTP 500"
    return r


def direct(provider: str, *names: str, ok: bool = True) -> SourceResult:
    return SourceResult(provider, ok=ok, direct=[DirectModel(provider, n) for n in names], count=len(names),
                        error=None if ok else "HTTP 500")


def by_id(*rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def test_unchanged_rows_are_only_touched() -> None:
    plan = plan_sync(by_id(existing("a/one")), {"openrouter": orr(or_model("a/one"))}, openrouter_routable=True)
    assert not plan.updates and not plan.inserts and not plan.deactivate and plan.unchanged == 1
    assert plan.seen == {"a/one": ["openrouter"]}


def test_price_change_is_an_update_and_a_price_change() -> None:
    plan = plan_sync(by_id(existing("a/one")), {"openrouter": orr(or_model("a/one", prompt="0.000005"))},
                     openrouter_routable=True)
    assert [u["id"] for u in plan.updates] == ["a/one"] and plan.price_changes == ["a/one"]
    assert plan.updates[0]["prompt_price"] == D("0.000005")
    assert plan.changes[0]["fields"]["prompt_price"] == ["0.000001", "0.000005"]


def test_new_models_route_direct_when_listed_else_openrouter_if_routable() -> None:
    results = {"openrouter": orr(or_model("openai/gpt-x"), or_model("acme/m")), "openai": direct("openai", "gpt-x")}
    plan = plan_sync({}, results, openrouter_routable=True)
    routes = {i["id"]: (i["provider"], i["upstream_model"]) for i in plan.inserts}
    assert routes == {"openai/gpt-x": ("openai", "gpt-x"), "acme/m": ("openrouter", "acme/m")}
    no_key = plan_sync({}, results, openrouter_routable=False)
    assert [i["id"] for i in no_key.inserts] == ["openai/gpt-x"]
    assert ("openrouter", "acme/m", "no OpenRouter key and no direct provider lists it") in no_key.skipped


def test_vanished_model_is_deactivated_only_if_its_sources_answered() -> None:
    rows = by_id(existing("a/gone"), existing("openai/o9", provider="openai", upstream="o9"))
    ok = plan_sync(rows, {"openrouter": orr(or_model("a/other")), "openai": direct("openai", "gpt-4o")},
                   openrouter_routable=True)
    assert sorted(ok.deactivate) == ["a/gone", "openai/o9"]
    # OpenRouter failed: nothing routed through it (or priced by it) can be judged vanished
    failed = plan_sync(rows, {"openrouter": orr(ok=False), "openai": direct("openai", "gpt-4o")},
                       openrouter_routable=True)
    assert failed.deactivate == [] and failed.inserts == [] and failed.updates == []
    # the direct provider failed: its model stays even though OpenRouter does not list it
    direct_failed = plan_sync(rows, {"openrouter": orr(or_model("a/other")), "openai": direct("openai", ok=False)},
                              openrouter_routable=True)
    assert direct_failed.deactivate == ["a/gone"]


def test_a_configured_source_left_out_of_the_run_counts_as_unknown() -> None:
    rows = by_id(existing("openai/o4-mini", provider="openai", upstream="o4-mini"))
    partial_run = plan_sync(rows, {"openrouter": orr()}, openrouter_routable=True,
                            configured=["openrouter", "openai"])
    assert partial_run.deactivate == []
    no_key = plan_sync(rows, {"openrouter": orr()}, openrouter_routable=True, configured=["openrouter"])
    assert no_key.deactivate == ["openai/o4-mini"]  # no OpenAI key: only reachable through OpenRouter


def test_direct_listing_keeps_a_model_openrouter_does_not_have() -> None:
    rows = by_id(existing("openai/o4-mini", provider="openai", upstream="o4-mini"))
    plan = plan_sync(rows, {"openrouter": orr(), "openai": direct("openai", "o4-mini")}, openrouter_routable=True)
    assert plan.deactivate == [] and plan.seen == {"openai/o4-mini": ["openai"]} and plan.unchanged == 1


def test_listed_but_unpriceable_is_not_vanished() -> None:
    plan = plan_sync(by_id(existing("openrouter/auto")), {"openrouter": orr(skipped=("openrouter/auto",))},
                     openrouter_routable=True)
    assert plan.deactivate == [] and plan.updates == []


def test_reactivation_only_of_what_discovery_deactivated() -> None:
    rows = by_id(existing("a/back", active=False, deactivated_reason="vanished"),
                 existing("a/banned", active=False, deactivated_reason="abuse"))
    plan = plan_sync(rows, {"openrouter": orr(or_model("a/back"), or_model("a/banned"))}, openrouter_routable=True)
    assert plan.reactivate == ["a/back"]


def test_manual_local_and_compat_rows_are_left_alone() -> None:
    rows = by_id(existing("m/manual", source="manual"), existing("l/local", source="local"),
                 existing("compat/llama", provider="compat"))
    plan = plan_sync(rows, {"openrouter": orr(or_model("m/manual", prompt="0.1"))}, openrouter_routable=True)
    assert not plan.deactivate and not plan.updates and not plan.seen


def test_routing_and_markup_are_never_planned() -> None:
    plan = plan_sync(by_id(existing("a/one", provider="openai", upstream="special", markup=D("0.3"))),
                     {"openrouter": orr(or_model("a/one", prompt="0.000009"))}, openrouter_routable=True)
    update = plan.updates[0]
    assert "provider" not in update and "upstream_model" not in update and "markup" not in update


def test_unpriced_direct_models_are_reported() -> None:
    plan = plan_sync({}, {"openrouter": orr(), "anthropic": direct("anthropic", "claude-new-9-20300101")},
                     openrouter_routable=True)
    assert ("anthropic", "anthropic/claude-new-9", "no price from any source") in plan.skipped
    assert plan.per_source["anthropic"].skipped == 1


def test_shrink_guard() -> None:
    results = {"openrouter": orr(*(or_model(f"a/m{i}") for i in range(10))), "openai": direct("openai", "gpt-4o")}
    _guard_shrink(results, {"openrouter": 300, "openai": 1}, 0.5)
    assert not results["openrouter"].ok and "shrank from 300 to 10" in (results["openrouter"].error or "")
    assert results["openrouter"].models == [] and results["openai"].ok
    fine = {"openrouter": orr(*(or_model(f"a/m{i}") for i in range(10)))}
    _guard_shrink(fine, {"openrouter": 12}, 0.5)
    assert fine["openrouter"].ok


# ----------------------------------------------------------------------------- scheduled events


def test_parse_scheduler_input_event() -> None:
    event = {"action": "warm-models",
             "schedule_arn": "arn:aws:scheduler:us-east-1:123456789012:schedule/default/mlp-dev-models-warm",
             "scheduled_time": "2025-06-01T12:30:00Z", "execution_id": "d32c5kddcf5bb8c3", "attempt_number": "2"}
    info = parse_event(event)
    assert info.trigger_id == event["schedule_arn"] + "@2025-06-01T12:30:00Z"
    assert info.attempt == 2 and info.execution_id == "d32c5kddcf5bb8c3" and not info.force


def test_parse_unsubstituted_placeholders_and_other_shapes() -> None:
    raw = parse_event({"schedule_arn": "<aws.scheduler.schedule-arn>",
                       "scheduled_time": "<aws.scheduler.scheduled-time>"})
    assert raw.trigger_id is None
    rule = parse_event({"version": "0", "id": "53dc4d37", "detail-type": "Scheduled Event", "source": "aws.events",
                        "time": "2025-06-01T12:30:00Z", "resources": ["arn:aws:events:us-east-1:1:rule/r"],
                        "detail": {}})
    assert rule.trigger_id == "arn:aws:events:us-east-1:1:rule/r@2025-06-01T12:30:00Z"
    assert parse_event({}).trigger_id is None and parse_event(None).trigger_id is None
    assert parse_event({"force": True}).force
