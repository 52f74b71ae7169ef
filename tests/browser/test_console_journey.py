"""A new customer's first session in the console, in a real chromium, step by step (the tests
run in file order and share one signed-in tab):

sign up → verify the email code → signed in on the onboarding page with the welcome credit →
first key created (secret shown once) and used by the test with the copied curl and openai
snippets → the request in the usage table, the chart (by model and by key) and the CSV export →
key revoked (the API refuses it) → credits bought through the fake Stripe Checkout (the signed
webhook credits the balance the page shows) → plan changed (subscribe, then switch in the
portal) → a chat streamed in the playground with its cost → provider key added/rotated/removed.
Then every page at desktop and phone width (screenshots, no horizontal overflow), keyboard only
use, and no CSP / script error anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.browser.conftest import DESKTOP, PHONE, Tab, open_tab

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PASSWORD = "correct horse battery staple"
PAGES = ["", "/welcome", "/usage", "/keys", "/provider-keys", "/billing", "/models", "/playground"]


class Journey:
    def __init__(self, stack: dict[str, Any], tab: Tab) -> None:
        self.stack, self.tab, self.page = stack, tab, tab.page
        self.base = stack["base_url"]
        self.email = f"new-{uuid.uuid4().hex[:10]}@example.com"
        self.key: dict[str, str] = {}
        self.request_id = ""

    def sql(self, query: str, params: Any = None) -> Any:
        with psycopg.connect(self.stack["database_url"], autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None

    def user_id(self) -> Any:
        return self.sql("SELECT id FROM users WHERE email = %s", (self.email,))

    def goto(self, path: str) -> None:
        self.page.goto(self.base + "/console" + path)
        self.page.wait_for_selector("main h1")


@pytest.fixture(scope="module")
def journey(console_stack: dict[str, Any], browser: Any) -> Any:
    tab = open_tab(browser, console_stack["base_url"])
    yield Journey(console_stack, tab)
    tab.context.close()


def shown(amount: Decimal) -> str:
    """How the console prints money: exact, 2 to 8 decimals, thousands separated."""
    whole, frac = f"{amount:.8f}".split(".")
    return f"${int(whole):,}.{frac.rstrip('0').ljust(2, '0')}"


def _mailbox_code(stack: dict[str, Any], email: str) -> str:
    mails = httpx.get(stack["idp_url"] + "/__dev/mailbox.json", params={"to": email}, timeout=5).json()
    assert mails, "no verification email was sent"
    return str(mails[-1]["code"])


def test_sign_up_verify_and_land_on_onboarding_with_the_welcome_credit(journey: Journey) -> None:
    page = journey.page
    page.goto(journey.base + "/console")
    assert page.get_by_role("heading", name="Multi-LLM console").is_visible()
    page.get_by_role("button", name="Create an account").click()
    page.wait_for_url(re.compile(r".*/signup\?"))
    page.get_by_label("Email").fill(journey.email)
    page.get_by_label(re.compile("^Password")).fill("short")
    page.get_by_role("button", name="Sign up").click()
    # the browser's own minlength check, then the server's words once it is bypassed
    assert page.get_by_label(re.compile("^Password")).evaluate("el => el.validity.tooShort")
    page.get_by_label(re.compile("^Password")).fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("heading", name="Confirm your account").wait_for()

    # A wrong code is refused in words; nothing is provisioned before verification.
    page.get_by_label("Verification code").fill("000000" if _mailbox_code(journey.stack, journey.email) != "000000"
                                                else "111111")
    page.get_by_role("button", name="Confirm account").click()
    assert page.get_by_role("alert").inner_text().startswith("Invalid verification code")
    assert journey.user_id() is None

    page.get_by_label("Verification code").fill(_mailbox_code(journey.stack, journey.email))
    page.get_by_role("button", name="Confirm account").click()
    page.wait_for_url(re.compile(r".*/console/welcome$"))
    page.get_by_text("of welcome credit").wait_for()
    assert "$10.00" in page.locator(".banner.ok").inner_text()
    assert page.locator("#account-email").inner_text() == journey.email
    # provisioned on the first API call with the verified email, welcome credit exactly once
    user_id = journey.user_id()
    assert user_id is not None
    assert journey.sql("SELECT count(*) FROM ledger_entries WHERE user_id = %s AND kind = 'welcome'",
                       (user_id,)) == 1
    # the session token lives in sessionStorage, not in a cookie (cookies ignore ports, so the local
    # identity provider's own session cookie on 127.0.0.1 is the only one; the API never reads cookies)
    assert {c["name"] for c in journey.tab.context.cookies(journey.base)} <= {"mlp_idp_session"}
    assert page.evaluate("() => sessionStorage.getItem('mlp.id_token') !== null")


def _run_snippet(journey: Journey, tab_name: str) -> str:
    page = journey.page
    page.get_by_role("tab", name=tab_name).click()
    return page.locator("#snippet-code").inner_text()


def test_first_key_is_shown_once_and_its_snippets_work(journey: Journey) -> None:
    page = journey.page
    page.get_by_role("button", name="Create my first key").click()
    panel = page.locator("section.secret")
    panel.wait_for()
    secret = page.locator("#new-key-secret").input_value()
    assert secret.startswith("sk-mlp-")
    page.get_by_role("button", name="Copy key").click()
    assert page.evaluate("() => navigator.clipboard.readText()") == secret

    curl = _run_snippet(journey, "curl")
    assert secret in curl and journey.base in curl
    out = subprocess.run(["bash", "-c", curl + " -sS -D /dev/stderr"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["choices"][0]["message"]["content"]
    journey.request_id = re.search(r"x-request-id: (\S+)", out.stderr, re.IGNORECASE).group(1)  # type: ignore[union-attr]

    code = _run_snippet(journey, "openai")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    anthropic = _run_snippet(journey, "anthropic")
    assert f'base_url="{journey.base}"' in anthropic and secret in anthropic

    page.get_by_role("button", name="Done, I saved it").click()
    assert panel.count() == 0
    journey.key = {"secret": secret, "name": "my first key"}
    # the secret is not retrievable afterwards: the key list shows only its prefix
    journey.goto("/keys")
    row = page.locator("tr", has_text="my first key")
    assert secret[:15] in row.inner_text() and secret not in page.content()
    journey.key["id"] = row.get_attribute("data-key-id") or ""
    assert row.locator("td.last-used").inner_text() != "never"


def test_the_request_shows_in_usage_table_chart_and_csv(journey: Journey) -> None:
    page = journey.page
    journey.goto("/usage")
    row = page.locator(f'tr[data-request-id="{journey.request_id}"]')
    row.wait_for()
    assert "openai/gpt-4o-mini" in row.inner_text() and "my first key" in row.inner_text()
    page.locator('#usage-chart rect[data-series="openai/gpt-4o-mini"]').first.wait_for()
    page.get_by_label("Chart").select_option("key")
    page.locator('#usage-chart rect[data-series="my first key"]').first.wait_for()
    assert page.locator("#usage-totals").inner_text().startswith("2 requests")  # curl + the openai snippet
    # filtering the table by key keeps the row; by another model empties it
    page.get_by_label("API key", exact=True).select_option(journey.key["id"])
    page.get_by_role("button", name="Apply").click()
    row.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert journey.request_id in {r["request_id"] for r in rows}
    assert {r["api_key"] for r in rows} == {"my first key"}
    assert all(Decimal(r["charge_usd"]) > 0 for r in rows)


def test_revoking_the_key_stops_it(journey: Journey) -> None:
    page = journey.page
    journey.goto("/keys")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Revoke key my first key").click()
    page.locator("tr", has_text="my first key").locator(".tag.revoked").wait_for()
    assert "revoked" in page.locator("#status").inner_text()
    deadline = time.monotonic() + 10
    while True:  # other warm containers honour a revocation within AUTH_CACHE_TTL_S (1 s here)
        r = httpx.post(journey.base + "/v1/chat/completions", timeout=10,
                       headers={"authorization": f"Bearer {journey.key['secret']}"},
                       json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]})
        if r.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.status_code == 401


def test_buying_credits_through_stripe_checkout_credits_the_balance_shown(journey: Journey) -> None:
    page = journey.page
    journey.goto("/billing")
    before = Decimal(journey.sql("SELECT balance - reserved FROM balances WHERE user_id = %s", (journey.user_id(),)))
    page.get_by_label(re.compile("Amount in USD")).fill("20")
    page.get_by_role("button", name="Buy credits").click()
    page.wait_for_url(re.compile(r".*/c/pay/cs_"))  # the (fake) Stripe Checkout page
    assert "$20.00" in page.content()
    page.get_by_role("button", name="Pay").click()
    page.wait_for_url(re.compile(r".*/console/billing\?checkout=success&session_id=cs_"))
    page.wait_for_function("([sel, text]) => document.querySelector(sel)?.textContent === text",
                           arg=["#billing-balance", shown(before + 20)])
    # the signed webhook credited exactly the purchase, referenced by the PaymentIntent
    assert journey.sql("SELECT count(*) FROM ledger_entries WHERE user_id = %s AND kind = 'purchase' "
                       "AND amount = 20 AND reference LIKE 'stripe:payment_intent:%%'", (journey.user_id(),)) == 1


def test_changing_plan_subscribes_then_switches_in_the_portal(journey: Journey) -> None:
    page = journey.page
    journey.goto("/billing")
    page.get_by_role("button", name="Subscribe to pro").click()
    page.wait_for_url(re.compile(r".*/c/pay/cs_"))
    page.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(re.compile(r".*/console/billing\?checkout=success"))
    summary = page.locator("#plan-summary")
    summary.wait_for()
    page.reload()
    assert re.search(r"Current plan: Pro · subscription active · renews", summary.inner_text())
    assert page.locator('tr[data-plan="pro"] .tag').inner_text() == "current plan"

    page.get_by_role("button", name="Change plan or payment method").click()
    page.wait_for_url(re.compile(r".*/p/session/bps_"))
    page.get_by_role("button", name="Switch to Premium").click()
    page.wait_for_url(re.compile(r".*/console/billing$"))
    page.locator("#plan-summary", has_text="Premium").wait_for()
    assert journey.sql("SELECT tier FROM users WHERE id = %s", (journey.user_id(),)) == "premium"
    journey.goto("")
    assert "Premium" in page.locator(".card", has_text="Plan").inner_text()


def test_playground_streams_a_chat_and_shows_its_cost(journey: Journey) -> None:
    page = journey.page
    journey.goto("/playground")
    page.get_by_label("Model").select_option("openai/gpt-4o-mini")
    page.get_by_label("Message").fill("Tell me a story [[words:40]] [[chunk_delay:0.05]]")
    page.get_by_role("button", name="Send").click()
    output = page.locator("#playground-output")
    page.wait_for_function("() => document.getElementById('playground-output').textContent.length > 0")
    partial = output.inner_text()
    assert page.get_by_role("button", name="Stop").is_enabled()  # still streaming
    page.locator("#playground-meta", has_text="cost $").wait_for()
    final = output.inner_text()
    assert len(final.split()) >= 30 and len(final) > len(partial)
    meta = page.locator("#playground-meta").inner_text()
    cost = Decimal(re.search(r"cost \$([0-9.]+)", meta).group(1))  # type: ignore[union-attr]
    recorded = journey.sql("SELECT charge FROM usage_records u JOIN api_keys k ON k.id = u.api_key_id "
                           "WHERE k.user_id = %s AND k.name = 'Console playground' ORDER BY u.id DESC LIMIT 1",
                           (journey.user_id(),))
    assert cost == recorded > 0
    # one playground key, limited (rpm + cap), listed like any other key
    assert journey.sql("SELECT count(*) FROM api_keys WHERE user_id = %s AND name = 'Console playground' "
                       "AND revoked_at IS NULL AND rpm = 20 AND spend_cap = 2", (journey.user_id(),)) == 1


def test_provider_keys_add_rotate_remove_show_only_last4(journey: Journey) -> None:
    page = journey.page
    journey.goto("/provider-keys")
    section = page.locator('section[data-provider="openai"]')
    section.get_by_label("openai API key").fill("sk-my-openai-key-aaaa1111")
    section.get_by_role("button", name="Add").click()
    section.get_by_text("••••1111").wait_for()
    section.get_by_label("openai API key").fill("sk-my-openai-key-bbbb2222")
    section.get_by_role("button", name="Rotate").click()
    section.get_by_text("••••2222").wait_for()
    assert "bbbb2222" not in page.content().replace("••••2222", "")
    page.once("dialog", lambda d: d.accept())
    section.get_by_role("button", name="Remove").click()
    section.get_by_text("No key stored").wait_for()


def test_every_page_at_desktop_and_phone_width(journey: Journey, artifacts: Path) -> None:
    page = journey.page
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        for path in PAGES:
            journey.goto(path)
            page.wait_for_load_state("networkidle")
            label = path.strip("/") or "overview"
            page.screenshot(path=str(artifacts / f"{label}-{name}.png"), full_page=True)
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{label} overflows horizontally by {overflow}px at {name} width"
            assert page.locator(".banner.error").count() == 0, page.locator(".banner.error").all_inner_texts()
    page.set_viewport_size(DESKTOP)


def test_keyboard_only_navigation_and_key_creation(journey: Journey) -> None:
    page = journey.page
    journey.goto("")
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    for _ in range(20):  # tab to the "API keys" link and follow it with Enter
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent") == "API keys":
            break
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/console/keys$"))
    assert page.evaluate("() => document.activeElement.tagName") == "H1"  # focus moved to the new page
    page.get_by_role("button", name="Create key").wait_for()  # the page has loaded its data
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.name") == "name"
    page.keyboard.type("keyboard key")
    page.keyboard.press("Enter")
    page.locator("section.secret").wait_for()
    assert page.evaluate("() => document.activeElement.id") == "new-key-secret"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent") == "Done, I saved it":
            break
    page.keyboard.press("Enter")
    assert page.locator("section.secret").count() == 0
    assert page.locator("tr", has_text="keyboard key").count() == 1


def test_errors_are_shown_in_words(journey: Journey) -> None:
    page = journey.page
    journey.goto("/billing")
    page.get_by_label(re.compile("Amount in USD")).fill("1")
    page.get_by_label(re.compile("Amount in USD")).evaluate("el => el.removeAttribute('min')")
    page.get_by_role("button", name="Buy credits").click()
    alert = page.locator("#status[role=alert]")
    alert.wait_for()
    assert re.search(r"credits must be between 5(\.00)? and 1000(\.00)? USD", alert.inner_text())
    assert "(HTTP 400)" in alert.inner_text()


def test_sign_out_ends_the_session(journey: Journey) -> None:
    page = journey.page
    journey.goto("")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r".*/console/signed-out$"))
    page.get_by_text("You are signed out.").wait_for()
    assert page.evaluate("() => sessionStorage.length") == 0
    # the playground key was revoked on the way out
    assert journey.sql("SELECT count(*) FROM api_keys WHERE user_id = %s AND name = 'Console playground' "
                       "AND revoked_at IS NULL", (journey.user_id(),)) == 0
    # signing in again goes through the identity provider's sign-in form (its session ended too)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Email").fill(journey.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/console$"))
    page.get_by_role("heading", name="Overview").wait_for()


def test_no_script_or_csp_errors_happened(journey: Journey) -> None:
    assert journey.tab.problems == []
