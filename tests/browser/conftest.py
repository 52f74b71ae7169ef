"""Browser tests: the console in Debian's chromium (Playwright for Python, ``executable_path``),
against the local stack exactly as ``make dev`` runs it (its own subprocess and database).

Screenshots of every page at desktop and phone width go to ``BROWSER_ARTIFACTS_DIR`` (default
``.local/browser-artifacts``, ignored by git). Chromium comes from the Debian package
(``.ci/run`` installs it when missing); ``BROWSER_EXECUTABLE`` overrides the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import start_local_stack

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("BROWSER_EXECUTABLE", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS_DIR", ROOT / ".local" / "browser-artifacts"))
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The local stack as `make dev` runs it, with the local identity provider: without the JWT
    settings other e2e modules add to STACK_ENV (they sign their own HS256 tokens)."""
    with start_local_stack(tmp_path_factory, drop_env=("JWT_",)) as creds:
        assert creds["idp_url"], "the stack did not start the local identity provider"
        yield creds


# Module scope on purpose: the sync API runs an event loop in this thread while it is open, which
# would break the asyncio tests that run after this directory.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}: `apt-get install chromium` (.ci/run does it), "
                    "or set BROWSER_EXECUTABLE")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where chromium refuses its sandbox.
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield instance
        instance.close()


@dataclass
class Tab:
    """A browser context + page that records every console error and page error."""

    context: Any
    page: Any
    problems: list[str] = field(default_factory=list)


def open_tab(browser: Any, base_url: str, viewport: dict[str, int] = DESKTOP) -> Tab:
    context = browser.new_context(viewport=viewport, base_url=base_url, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    tab = Tab(context, page)
    page.on("console", lambda m: tab.problems.append(f"console.{m.type}: {m.text}")
            if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.on("pageerror", lambda e: tab.problems.append(f"pageerror: {e}"))
    return tab


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
