"""What the query function's process (run.sh → serve.py) leaves out of its cold start, and that what
was left out still works when a request needs it (issue 15, spawn third pass): a fresh interpreter
imports ``serve`` as run.sh does, builds uvicorn's ``Config``, and answers chat completions through
``stream_app`` (real Postgres, the Upstash bridge, the fake provider)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.support.account are parameters here)
from __future__ import annotations

import json
import site
from pathlib import Path
from typing import Any

import pytest

from gateway import import_bundle
from gateway.account import byok
from tests.support.account import master_key, provider_secret, set_env, upstream_requests  # noqa: F401
from tests.support.apps import FRESH_CHAT, ROOT, in_fresh_function
from tests.support.money import one_record

pytestmark = pytest.mark.integration

# Modules the cold start no longer imports: uvicorn's dictConfig machinery (serve.py sets its loggers
# itself), the BYOK module (only a caller with stored provider keys needs it) and the other surfaces'
# shared room (the chat path takes END_OF_BODY and dropped_header from adapters.contract).
LAZY = ("logging.config", "gateway.account.byok", "gateway.translation")

_REQUEST = ("""
import os, sys
os.environ["GATEWAY_COLD_START"] = "serve"
os.environ["PORT"] = "18124"
import serve
serve.config()
import app
LAZY = LAZY_MODULES
before = sorted(m for m in LAZY if m in sys.modules)
""" + FRESH_CHAT + """
status, answer = chat(max_tokens=16)
print(json.dumps([before, status, b"choices" in answer, sorted(m for m in LAZY if m in sys.modules)]))
""").replace("LAZY_MODULES", repr(LAZY))


async def test_a_chat_completion_in_a_fresh_process_imports_none_of_the_lazy_modules(
        stack: str, fake_upstream: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    user = await make_user()
    monkeypatch.setenv("TEST_API_KEY", user.api_key)
    before, status, answered, after = json.loads(in_fresh_function("query", _REQUEST))
    assert (status, answered) == (200, True)
    assert before == [] and after == []


async def test_a_byok_request_in_a_fresh_process_imports_the_byok_module_and_uses_the_users_key(
        stack: str, fake_upstream: Any, make_user: Any, set_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(BYOK_MASTER_KEYS=master_key("v1"))
    user = await make_user()
    mine = provider_secret("sk-proj-")
    await byok.put(user.user_id, "openai", mine)
    monkeypatch.setenv("TEST_API_KEY", user.api_key)
    seen = len(upstream_requests(fake_upstream, "openai"))
    before, status, answered, after = json.loads(in_fresh_function("query", _REQUEST))
    assert (status, answered) == (200, True)
    assert "gateway.account.byok" not in before and "gateway.account.byok" in after
    assert [q["key"] for q in upstream_requests(fake_upstream, "openai")[seen:]] == [mine]


_BUNDLED = (r"""
import os, sys
os.environ["GATEWAY_COLD_START"] = "serve"
os.environ["PORT"] = "18125"
from gateway import import_bundle
import serve
import app
listed = import_bundle.listed(LISTING)
finders = [f for f in sys.meta_path if type(f).__name__ == "_Finder"]
def bundled(name):
    return type(sys.modules[name].__spec__.loader).__module__ == "gateway.import_bundle"
imported = [n for n in listed if n in sys.modules]
from_files = sorted(n for n in imported if not bundled(n))
from_bundle = sorted(n for n in sys.modules if getattr(sys.modules[n], "__spec__", None) and bundled(n))
""" + FRESH_CHAT + """
status, answer = chat(max_tokens=16)
import dataclasses, collections, typing
hooks_gone = not ({"exec", "eval", "compile"} & {*vars(dataclasses), *vars(collections), *vars(typing)})
print(json.dumps([len(imported), from_files, from_bundle == sorted(imported), finders == [] and
                  import_bundle._installed is None and hooks_gone, sys.modules["gateway.chat.service"].__file__,
                  import_bundle.compiles, status, b"choices" in answer]))
""").replace("LISTING", repr(str(ROOT / "layers" / "common" / "coldstart-modules.txt")))


async def test_with_the_import_bundle_the_listed_modules_come_from_it_and_a_chat_completion_works(
        stack: str, fake_upstream: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The query function with the bundle the layer build writes (gateway.import_bundle; here from the
    checkout's gateway and this environment's packages, as the benchmarks build it): every listed
    module its import loads comes from the bundle, nothing else does, every text its classes compile
    (dataclass methods, string annotations, namedtuples) is answered from it too, the finder and the
    compile hooks are gone once the app is built, the modules' files are their own, and a chat
    completion is answered and billed."""
    user = await make_user()
    bundle = tmp_path / "gateway-imports.bin"
    common = ROOT / "layers" / "common"
    assert import_bundle.build(str(bundle), import_bundle.listed(str(common / "coldstart-modules.txt")),
                               [str(common), *site.getsitepackages()],
                               texts=import_bundle.recorded(str(common / "coldstart-compiles.json"))) == []
    monkeypatch.setenv("TEST_API_KEY", user.api_key)
    monkeypatch.setenv("GATEWAY_IMPORT_BUNDLE", str(bundle))
    count, from_files, only_listed, put_away, service_file, compiled, status, answered = json.loads(
        in_fresh_function("query", _BUNDLED))
    assert count > 250 and from_files == [] and only_listed and put_away
    assert compiled["compiled"] == 0 and compiled["from_bundle"] > 500
    assert service_file == str(common / "gateway" / "chat" / "service.py")
    assert (status, answered) == (200, True)
    record = await one_record(user.user_id)  # billed, the hold settled: the money path ran on the bundle's code
    assert record["charge"] > 0
