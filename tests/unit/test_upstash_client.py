"""The Upstash client's imports: it runs on the lean upstream client (``gateway.upstream_http``),
which lives outside the adapters package, so a function that uses Upstash but calls no provider
(the health function) does not import every adapter with it; the upstream client's former module
still gives the very same objects."""

from __future__ import annotations

import json

from tests.support.apps import in_fresh_function


def test_the_health_function_does_not_import_the_adapters() -> None:
    code = ("import sys, json, app\n"
            "from gateway import upstash\n"
            "print(json.dumps(['gateway.adapters' in sys.modules, 'gateway.upstream_http' in sys.modules]))")
    adapters, lean = json.loads(in_fresh_function("health", code))
    assert not adapters and lean


def test_the_former_module_re_exports_the_same_client() -> None:
    from gateway import upstream_http
    from gateway.adapters import http_client

    for name in http_client.__all__:
        assert getattr(http_client, name) is getattr(upstream_http, name)
