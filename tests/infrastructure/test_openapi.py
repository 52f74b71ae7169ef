"""Every function's OpenAPI is a valid document that schemathesis can use: it validates against
the OpenAPI schema, every ``$ref`` resolves inside the document, each operation generates cases
(a bounded number of examples, requests never sent: nothing reaches a database, a provider or
Stripe), and the documented error statuses are the real ones (the OpenAI error shape; no unused
422, which FastAPI adds but our validation errors are 400). Every example in a document validates
against its schema; the account, billing and console functions document each success body as a
real schema (named fields, with an example), not ``{}`` or a free-form object."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import jsonschema_rs  # schemathesis's own validator
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
# The functions whose routes answer response models (gateway.account.schema and its kin).
TYPED = {"admin", "balance", "billing", "console", "keys", "webhooks"}
SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_MAPS = ("properties", "patternProperties", "$defs")
SCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else")


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


def _subschemas(schema: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    """``schema`` and every schema inside it, with where each stands."""
    if not isinstance(schema, dict):
        return []
    found = [(where, schema)]
    for key in SCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            found += _subschemas(sub, f"{where}/{key}/{name}")
    for key in SCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []):
            found += _subschemas(sub, f"{where}/{key}/{i}")
    for key in SCHEMA_ONE:
        found += _subschemas(schema.get(key), f"{where}/{key}")
    return found


def _all_schemas(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every schema of an OpenAPI document: components, parameters, request and response bodies."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        found += _subschemas(schema, f"#/components/schemas/{name}")
    for path, item in doc["paths"].items():
        for method, op in item.items():
            at = f"{method.upper()} {path}"
            for param in op.get("parameters", []):
                found += _subschemas(param.get("schema"), f"{at} parameter {param['name']}")
            bodies = [("request", op.get("requestBody", {})), *op.get("responses", {}).items()]
            for status, body in bodies:
                for media, content in body.get("content", {}).items():
                    found += _subschemas(content.get("schema"), f"{at} {status} {media}")
    return found


def _success_schemas(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f"{method.upper()} {path} {status}", content.get("schema"))
            for path, item in doc["paths"].items() for method, op in item.items()
            for status, response in op["responses"].items() if status.startswith("2")
            for content in response.get("content", {}).values()]


def test_every_function_is_checked() -> None:
    assert len(APPS) >= 9, APPS
    assert TYPED <= {Path(p).parent.name for p in APPS}


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


@pytest.mark.parametrize("path", APPS)
def test_examples_validate_against_their_schemas(path: str) -> None:
    doc = _openapi(path)
    checked = 0
    for where, schema in _all_schemas(doc):
        examples = list(schema.get("examples") or []) + ([schema["example"]] if "example" in schema else [])
        if not examples:
            continue
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": doc.get("components", {})})
        for example in examples:
            errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(example)]
            assert not errors, f"{path}: an example of {where} does not validate: {errors[:3]}"
            checked += 1
    if Path(path).parent.name in TYPED:
        assert checked, f"{path}: no examples"


@pytest.mark.parametrize("path", sorted(p for p in APPS if Path(p).parent.name in TYPED))
def test_every_success_body_has_a_real_schema(path: str) -> None:
    doc = _openapi(path)
    successes = _success_schemas(doc)
    assert successes, f"{path}: no documented success body"
    for where, schema in successes:
        assert schema, f"{path}: {where} has no schema"
        assert "$ref" in schema, f"{path}: {where} is not a named model: {schema}"
        model = _resolve(doc, schema["$ref"])
        assert model.get("type") == "object" and model.get("properties"), f"{path}: {where}: no fields"
        assert model.get("additionalProperties") is False, f"{path}: {where} allows undeclared fields"
        assert model.get("examples"), f"{path}: {where} has no example"
        missing = set(model["properties"]) - set(model.get("required", []))
        # only a field that may be absent on the wire is optional (Balance.api_key: API-key callers only)
        assert missing <= {"api_key"}, f"{path}: {where}: fields always present but not required: {missing}"
