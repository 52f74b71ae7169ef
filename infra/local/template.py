"""Read the SAM/CloudFormation ``template.yaml`` without AWS tooling.

Dependency-light on purpose (PyYAML only, C loader when available): the infrastructure
tests use it, and so does the local dev server to mount the HttpApi routes declared in
the template. Nothing here is test-specific, so the module can move into the package
unchanged; keep the public API stable:

    load_template(path="template.yaml") -> dict
    parse_template(text, source="<string>") -> dict     # the same, from the template's text
    http_routes(template) -> list[Route]      # Route is a (method, path, logical_id, codeuri, handler) tuple
    http_api_events(template) -> iterator of (logical_id, event_name, event_properties)
    serverless_functions(template) -> dict[str, dict]   # effective properties, Globals merged
    to_starlette_path(path) -> str            # "/v1/keys/{key_id}", "/admin/{proxy+}" -> "{proxy:path}"

Short-form intrinsics become their long form (``!Ref X`` -> ``{"Ref": "X"}``,
``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``, ``!Sub s`` -> ``{"Fn::Sub": "s"}``,
``!Condition C`` -> ``{"Condition": "C"}``), as CloudFormation itself does. Duplicate
mapping keys are an error (CloudFormation rejects them; PyYAML would silently keep the
last one and hide, say, a second resource or route with the same name), and timestamps
stay strings (``Version: 2012-10-17`` is not a date to CloudFormation).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import yaml

__all__ = [
    "REPO_ROOT",
    "Route",
    "TemplateError",
    "http_api_events",
    "http_routes",
    "load_template",
    "parse_template",
    "serverless_functions",
    "to_starlette_path",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class TemplateError(ValueError):
    """The template is not something CloudFormation/SAM would accept."""


class _CfnLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader + CloudFormation short-form tags, strict keys, no timestamp magic."""


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            mark = key_node.start_mark
            raise TemplateError(f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}")
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


def _construct_timestamp_as_str(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)
_CfnLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_CfnLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp_as_str)


def _resolve_path(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    in_repo = REPO_ROOT / candidate
    return in_repo if in_repo.exists() else candidate


def load_template(path: str | Path = "template.yaml") -> dict[str, Any]:
    """Parse a CloudFormation/SAM YAML template into plain dicts/lists/scalars.

    A relative ``path`` is looked up in the current directory first, then in the repo root.
    """
    resolved = _resolve_path(path)
    return parse_template(resolved.read_text(encoding="utf-8"), source=str(resolved))


def parse_template(text: str, source: str = "<string>") -> dict[str, Any]:
    """Parse the text of a CloudFormation/SAM YAML template (``source`` names it in errors)."""
    try:
        data = yaml.load(text, Loader=_CfnLoader)
    except TemplateError as exc:
        raise TemplateError(f"{source}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise TemplateError(f"{source}: not a CloudFormation template (no Resources mapping)")
    return data


# ----------------------------------------------------------------------------- SAM helpers


def _merge_globals(global_value: Any, local_value: Any) -> Any:
    """SAM Globals semantics: maps merge (recursively), lists concatenate (globals first),
    anything else is overridden by the resource's own value."""
    if isinstance(global_value, dict) and isinstance(local_value, dict):
        # Intrinsic functions are values, not maps to merge.
        if _is_intrinsic(global_value) or _is_intrinsic(local_value):
            return copy.deepcopy(local_value)
        merged = copy.deepcopy(global_value)
        for key, value in local_value.items():
            merged[key] = _merge_globals(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return copy.deepcopy(global_value) + copy.deepcopy(local_value)
    return copy.deepcopy(local_value)


def _is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = str(next(iter(value)))
    return key in ("Ref", "Condition") or key.startswith("Fn::")


def _iter_resources(template: dict[str, Any], resource_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in (template.get("Resources") or {}).items():
        if isinstance(resource, dict) and resource.get("Type") == resource_type:
            yield logical_id, resource


def serverless_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ``AWS::Serverless::Function`` -> its effective Properties (``Globals.Function`` merged)."""
    global_props = ((template.get("Globals") or {}).get("Function")) or {}
    functions: dict[str, dict[str, Any]] = {}
    for logical_id, resource in _iter_resources(template, "AWS::Serverless::Function"):
        props = resource.get("Properties") or {}
        functions[logical_id] = _merge_globals(global_props, props)
    return functions


class Route(NamedTuple):
    """One HttpApi route declaration; a plain ``(method, path, logical_id, codeuri, handler)`` tuple."""

    method: str  # upper-case HTTP method, or "ANY"
    path: str  # API Gateway syntax: /v1/keys/{key_id}, /admin/{proxy+}
    logical_id: str  # the AWS::Serverless::Function that declares it
    codeuri: str  # function folder relative to the template, without trailing "/"
    handler: str  # e.g. "app.handler"


def http_api_events(template: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(function_logical_id, event_name, event_properties)`` for every ``Type: HttpApi`` event."""
    for logical_id, props in serverless_functions(template).items():
        for event_name, event in (props.get("Events") or {}).items():
            if isinstance(event, dict) and event.get("Type") == "HttpApi":
                yield logical_id, event_name, event.get("Properties") or {}


def http_routes(template: dict[str, Any]) -> list[Route]:
    """All HttpApi routes of all functions, in template order.

    Duplicates are kept as declared, so callers (and the tests) can detect them.
    """
    functions = serverless_functions(template)
    routes: list[Route] = []
    for logical_id, _event_name, eprops in http_api_events(template):
        props = functions[logical_id]
        codeuri = props.get("CodeUri")
        handler = props.get("Handler")
        routes.append(
            Route(
                method=str(eprops.get("Method", "ANY")).upper(),
                path=str(eprops.get("Path", "$default")),
                logical_id=logical_id,
                codeuri=codeuri.rstrip("/") if isinstance(codeuri, str) else "",
                handler=handler if isinstance(handler, str) else "",
            )
        )
    return routes


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}")


def to_starlette_path(path: str) -> str:
    """API Gateway path -> Starlette/FastAPI path (``{proxy+}`` -> ``{proxy:path}``)."""
    return _PARAM.sub(lambda m: "{" + m.group(1) + (":path" if m.group(2) else "") + "}", path)
