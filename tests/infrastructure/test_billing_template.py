"""template.yaml pieces of billing: routes, the public Stripe webhook, the money alarms (on the
metric names the code emits: webhook failures, unmatched sessions, disputes, non-USD payments, an
unusual sign-up rate) and the per-function stripe dependency."""

from __future__ import annotations

import inspect
import tomllib
from typing import Any

import pytest

from gateway.account import identity
from gateway.billing import webhooks
from infra.local.template import REPO_ROOT, http_api_events, http_routes, load_template


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def test_billing_routes(template: dict[str, Any]) -> None:
    routes = {(r.method, r.path): r.logical_id for r in http_routes(template)}
    assert routes[("POST", "/v1/billing/checkout")] == "BillingFunction"
    assert routes[("POST", "/v1/billing/portal")] == "BillingFunction"
    assert routes[("GET", "/v1/subscription")] == "BillingFunction"
    assert routes[("POST", "/webhooks/stripe")] == "WebhooksFunction"


def test_stripe_webhook_route_is_public(template: dict[str, Any]) -> None:
    events = [props for _id, _name, props in http_api_events(template) if props.get("Path") == "/webhooks/stripe"]
    assert len(events) == 1
    assert (events[0].get("Auth") or {}).get("Authorizer") in (None, "NONE")


@pytest.mark.parametrize("module,metrics", [
    (webhooks, ("WebhookFailures", "WebhookSignatureErrors", "CheckoutSessionUnmatched", "StripeDisputes",
                "NonUsdPayment")),
    (identity, ("UsersProvisioned",)),
])
def test_money_alarms_watch_the_metrics_the_code_emits(template: dict[str, Any], module: Any,
                                                       metrics: tuple[str, ...]) -> None:
    source = inspect.getsource(module)
    globals_env = template["Globals"]["Function"]["Environment"]["Variables"]
    alarms = {rid: r["Properties"] for rid, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    for metric in metrics:
        assert f'"{metric}"' in source
        [props] = [p for p in alarms.values() if p.get("MetricName") == metric]
        assert props["Namespace"] == globals_env["POWERTOOLS_METRICS_NAMESPACE"]
        assert props["Dimensions"] == [{"Name": "service", "Value": globals_env["POWERTOOLS_SERVICE_NAME"]}]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_stripe_is_installed_where_it_is_used() -> None:
    """The functions' locks (make lock) pin stripe within the 'billing' extra; the layer has none."""
    from packaging.requirements import Requirement

    from tests.infrastructure.test_dependencies import parse_lock

    extra = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["billing"]
    for function in ("billing", "webhooks"):
        pins = parse_lock(REPO_ROOT / "functions" / function / "requirements.txt")
        for spec in extra:
            req = Requirement(spec)
            assert req.name in pins and req.specifier.contains(pins[req.name][0]), f"functions/{function}: {spec}"
    layer = (REPO_ROOT / "layers/common/requirements.txt").read_text()
    assert "stripe" not in layer, "stripe belongs to the billing functions, not the shared layer"


def test_every_dispute_and_unmatched_session_alarms_at_once(template: dict[str, Any]) -> None:
    alarms = {r["Properties"].get("MetricName"): r["Properties"] for r in template["Resources"].values()
              if r["Type"] == "AWS::CloudWatch::Alarm"}
    for metric in ("CheckoutSessionUnmatched", "StripeDisputes", "NonUsdPayment"):
        assert alarms[metric]["Threshold"] == 1 and alarms[metric]["Period"] == 300, metric
    sign_ups = alarms["UsersProvisioned"]
    assert sign_ups["Threshold"] == {"Ref": "SignUpAlarmPerHour"} and sign_ups["Period"] == 3600
    assert template["Parameters"]["SignUpAlarmPerHour"]["Default"] > 0
