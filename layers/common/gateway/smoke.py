"""``mlp smoke``: check a deployed stage end to end, from the outside, as a customer would.

With an API key of a dedicated smoke user (a little credit, no other traffic):
1. ``GET /health`` on the API answers 200 with every check ok (and accepts the key);
2. on BOTH the buffered API URL and the streaming Function URL, one chat completion and one
   streamed chat completion (``[DONE]`` received);
3. exactly those 4 requests appear in ``/v1/usage`` (each once), nothing is left held (but the
   holds carried for the next request, docs/money.md), and the
   balance went down by exactly the sum of their charges: every request billed once;
4. a webhook with a forged Stripe signature is refused (400) and credits nothing.

Each check prints one ``ok``/``FAIL`` line; the exit status is 1 if any failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx

USAGE_PAGE = 100


@dataclass
class Smoke:
    base_url: str
    stream_url: str
    api_key: str
    model: str = "openai/gpt-4o-mini"
    wait_s: float = 30.0
    out: Callable[[str], None] = print
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.stream_url = self.stream_url.rstrip("/")
        self.http = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0),
                                 headers={"authorization": f"Bearer {self.api_key}",
                                          "user-agent": "mlp-smoke"})

    # ------------------------------------------------------------------ reporting
    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        self.out(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
        if not ok:
            self.failures.append(what)
        return ok

    # ------------------------------------------------------------------ steps
    def health(self) -> None:
        try:
            r = self.http.get(f"{self.base_url}/health")
            body = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            self.check(False, "GET /health", f"{type(exc).__name__}: {exc}")
            return
        checks = body.get("checks", {}) if isinstance(body, dict) else {}
        self.check(r.status_code == 200 and body.get("status") == "ok" and "caller" in body,
                   "GET /health (database, migrations, Upstash; the key is accepted)",
                   f"HTTP {r.status_code}: {json.dumps(checks)[:500]}")

    def _usage_ids(self) -> dict[str, dict[str, Any]]:
        r = self.http.get(f"{self.base_url}/v1/usage", params={"limit": USAGE_PAGE})
        r.raise_for_status()
        return {row["id"]: row for row in r.json()["data"]}

    def _balance(self) -> dict[str, Any]:
        r = self.http.get(f"{self.base_url}/v1/balance")
        r.raise_for_status()
        return dict(r.json())

    def _chat(self, url: str, *, stream: bool) -> None:
        where = "the streaming URL" if url == self.stream_url else "the API"
        label = f"POST {'streamed ' if stream else ''}chat on {where}"
        body = {"model": self.model, "messages": [{"role": "user", "content": "Reply with the word: ok"}],
                "max_tokens": 8, "stream": stream}
        try:
            if not stream:
                r = self.http.post(f"{url}/v1/chat/completions", json=body)
                ok = r.status_code == 200 and bool(r.json().get("choices"))
                self.check(ok, label, f"HTTP {r.status_code}: {r.text[:300]}")
                return
            with self.http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    self.check(False, label, f"HTTP {r.status_code}: {r.text[:300]}")
                    return
                chunks = [line for line in r.iter_lines() if line.startswith("data: ")]
            self.check(bool(chunks) and chunks[-1] == "data: [DONE]", label,
                       f"{len(chunks)} events, last {chunks[-1][:100] if chunks else None!r}")
        except (httpx.HTTPError, ValueError) as exc:
            self.check(False, label, f"{type(exc).__name__}: {exc}")

    def chats_billed_once(self) -> None:
        try:
            before_ids, before = self._usage_ids(), self._balance()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self.check(False, "read /v1/usage and /v1/balance", f"{type(exc).__name__}: {exc}")
            return
        for url in (self.base_url, self.stream_url):
            self._chat(url, stream=False)
            self._chat(url, stream=True)
        deadline = time.monotonic() + self.wait_s
        while True:  # settlement may finish after the response (buffered API: a background task)
            try:
                new = {k: v for k, v in self._usage_ids().items() if k not in before_ids}
                after = self._balance()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.check(False, "read /v1/usage and /v1/balance", f"{type(exc).__name__}: {exc}")
                return
            settled = len(new) >= 4 and _held(after) == _held(before)
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.check(len(new) == 4, "4 usage records, one per request",
                   f"{len(new)} new records: {sorted(new)} (a dedicated smoke user must have no other traffic)")
        streamed = sorted(bool(row.get("stream")) for row in new.values())
        self.check(streamed == [False, False, True, True], "2 streamed and 2 buffered records", str(streamed))
        charged = sum((Decimal(row["charge"]) for row in new.values()), Decimal(0))
        spent = Decimal(before["total"]) - Decimal(after["total"])
        self.check(spent == charged and _held(after) == _held(before),
                   f"billed once each: balance down by exactly the charges (${charged})",
                   f"balance down ${spent}, charges ${charged}, held for requests in flight {_held(before)} -> "
                   f"{_held(after)}")

    def forged_webhook(self) -> None:
        event = {"id": f"evt_smoke_{int(time.time())}", "object": "event", "type": "checkout.session.completed",
                 "created": int(time.time()), "data": {"object": {"id": "cs_smoke", "object": "checkout.session"}}}
        try:
            r = httpx.post(f"{self.base_url}/webhooks/stripe", content=json.dumps(event), timeout=30,
                           headers={"content-type": "application/json",
                                    "stripe-signature": f"t={int(time.time())},v1={'0' * 64}"})
        except httpx.HTTPError as exc:
            self.check(False, "a forged Stripe webhook is refused", f"{type(exc).__name__}: {exc}")
            return
        self.check(r.status_code == 400, "a forged Stripe webhook is refused (400)",
                   f"HTTP {r.status_code}: {r.text[:200]}")

    def run(self) -> int:
        with self.http:
            self.health()
            self.chats_billed_once()
            self.forged_webhook()
        if self.failures:
            self.out(f"smoke: {len(self.failures)} check(s) failed")
            return 1
        self.out("smoke: all checks passed")
        return 0


def _held(balance: dict[str, Any]) -> Decimal:
    """What ``/v1/balance`` holds for requests in flight: ``reserved`` but the holds carried for
    the next request of a key (docs/money.md "Carried holds"), which the smoke's own requests leave."""
    return Decimal(balance["reserved"]) - Decimal(balance.get("carried", "0"))
