"""The console function's pages and assets (no I/O beyond the in-process app): security headers,
no inline script anywhere, hashed immutable assets, gzip, the page configuration, first-load size."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.config import get_settings, reset_settings
from gateway.console import assets
from gateway.console.pages import PAGES, content_security_policy
from gateway.console.routes import create_console_app

FIRST_LOAD_BUDGET = 150_000  # bytes: the HTML shell and everything it loads


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("CONSOLE_CLIENT_ID", "client-123")
    monkeypatch.setenv("CONSOLE_AUTHORIZE_URL", "https://auth.example.com/oauth2/authorize")
    monkeypatch.setenv("CONSOLE_TOKEN_URL", "https://auth.example.com/oauth2/token")
    monkeypatch.setenv("CONSOLE_STREAM_URL", "https://stream.lambda-url.example.com/")
    reset_settings()
    yield TestClient(create_console_app())
    reset_settings()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, Any]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_shell_has_strict_security_headers_and_no_cookie(client: TestClient) -> None:
    r = client.get("/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in csp
    assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert directives["connect-src"] == "'self' https://auth.example.com https://stream.lambda-url.example.com"
    assert r.headers["strict-transport-security"].startswith("max-age=63072000")
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers.get_list("content-security-policy") == [csp]  # one policy, not the API's as well
    assert "set-cookie" not in r.headers


def test_no_inline_script_style_or_handlers(client: TestClient) -> None:
    parsed = _parse(client.get("/console").text)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert scripts and all(a.get("src", "").startswith("/console/assets/") for a in scripts)
    assert parsed.script_text == []
    for tag, attrs in parsed.tags:
        assert tag != "style"
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    source = assets.assets()["app.js"].body.decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "setAttribute('style'"):
        assert sink not in source, sink


def test_page_configuration_in_a_meta_tag(client: TestClient) -> None:
    parsed = _parse(client.get("/console").text)
    [meta] = [a for t, a in parsed.tags if t == "meta" and a.get("name") == "mlp:config"]
    config = json.loads(meta["content"])
    assert config["auth"] == {"client_id": "client-123", "authorize_url": "https://auth.example.com/oauth2/authorize",
                              "token_url": "https://auth.example.com/oauth2/token",
                              "signup_url": "https://auth.example.com/oauth2/authorize", "logout_url": "",
                              "scope": "openid email profile"}
    assert config["stream_url"] == "https://stream.lambda-url.example.com"
    plans = {p["name"]: p for p in config["plans"]}
    assert plans["pro"]["rpm"] == get_settings().tier("pro").rpm
    assert not any("stripe" in key for plan in config["plans"] for key in plan)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_client_side_page_gets_the_shell(client: TestClient, page: str) -> None:
    r = client.get(f"/console/{page}")
    assert r.status_code == 200 and 'name="mlp:config"' in r.text


def test_unknown_pages_and_assets_are_404(client: TestClient) -> None:
    r = client.get("/console/nope")
    assert r.status_code == 404 and "Page not found" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    r = client.get("/console/assets/app.000000000000.js")
    assert r.status_code == 404 and r.headers["content-security-policy"].startswith("default-src 'none'")


def test_assets_are_hashed_immutable_and_gzipped(client: TestClient) -> None:
    html = client.get("/console").text
    urls = re.findall(r'(?:src|href)="(/console/assets/[^"]+)"', html)
    assert {u.rsplit("/", 1)[1].split(".")[0] for u in urls} == {"app", "favicon"}
    for url in set(urls):
        plain = client.get(url, headers={"accept-encoding": "identity"})
        assert plain.status_code == 200
        assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
        name = url.rsplit("/", 1)[1]
        digest = name.split(".")[1]
        assert re.fullmatch(r"[0-9a-f]{12}", digest)
        zipped = client.get(url, headers={"accept-encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip" and zipped.content == plain.content  # client decodes
        again = client.get(url, headers={"if-none-match": plain.headers["etag"]})
        assert again.status_code == 304


def test_first_load_is_under_budget(client: TestClient) -> None:
    html = client.get("/console").content
    urls = set(re.findall(rb'(?:src|href)="(/console/assets/[^"]+)"', html))
    plain = len(html) + sum(len(client.get(u.decode(), headers={"accept-encoding": "identity"}).content) for u in urls)
    zipped = len(gzip.compress(html)) + sum(len(assets.by_url()[u.decode()].gzipped) for u in urls)
    assert plain < FIRST_LOAD_BUDGET, plain
    assert zipped < plain / 2


def test_csp_without_optional_origins() -> None:
    reset_settings()
    try:
        assert "connect-src 'self';" in content_security_policy(get_settings())
    finally:
        reset_settings()
