"""Every function's OpenAPI is a valid document that schemathesis can use: it validates against
the OpenAPI schema, every ``$ref`` resolves inside the document, each operation generates cases
(a bounded number of examples, requests never sent: nothing reaches a database, a provider or
Stripe), and the documented error statuses are the real ones (the OpenAI error shape; no unused
422, which FastAPI adds but our validation errors are 400)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core import NotSet

ROOT = Path(__file__).resolve().parents[2]
APPS = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("functions/*/app.py")
              if "app = " in p.read_text())
# Statuses our error mapping produces (gateway.http.ERROR_DESCRIPTIONS) and the successes.
REAL_STATUSES = {"200", "201", "400", "401", "402", "403", "404", "409", "413", "429", "500", "502", "503", "504"}
EXAMPLES = 5


def _openapi(path: str) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(f"fn_{Path(path).parent.name}_openapi", ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema: dict[str, Any] = module.app.openapi()
    return schema


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + [r for v in node.values()
                                                                                for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_function_is_checked() -> None:
    assert len(APPS) >= 9, APPS


@pytest.mark.parametrize("path", APPS)
def test_openapi_is_valid_and_usable(path: str) -> None:
    doc = _openapi(path)
    for ref in _refs(doc):
        try:
            _resolve(doc, ref)
        except (KeyError, AssertionError):
            pytest.fail(f"{path}: unresolvable $ref {ref}")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # raises on a document that is not valid OpenAPI
    operations = [result.ok() for result in schema.get_all_operations()]  # ok() raises on a broken operation
    assert operations
    for operation in operations:
        statuses = set(doc["paths"][operation.path][operation.method.lower()]["responses"])
        assert "422" not in statuses, f"{operation.label}: FastAPI's 422 is never answered (ours is 400)"
        assert statuses <= REAL_STATUSES, f"{operation.label}: {sorted(statuses - REAL_STATUSES)}"
        has_body = "requestBody" in doc["paths"][operation.path][operation.method.lower()]

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        def generates(case: Any) -> None:
            if has_body:  # a body schema schemathesis cannot resolve yields no body at all
                assert not isinstance(case.body, NotSet), f"{operation.label}: no body generated"

        generates()
