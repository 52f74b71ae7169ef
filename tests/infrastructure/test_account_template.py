"""The account route families in template.yaml: each route declared once, on its own function."""

from __future__ import annotations

from infra.local.template import REPO_ROOT, http_routes, load_template, serverless_functions

ACCOUNT_ROUTES = {
    ("GET", "/v1/balance"): "BalanceFunction",
    ("GET", "/v1/usage"): "BalanceFunction",
    ("GET", "/v1/usage/summary"): "BalanceFunction",
    ("GET", "/v1/key"): "BalanceFunction",
    ("GET", "/v1/credits"): "BalanceFunction",
    ("GET", "/v1/keys"): "KeysFunction",
    ("POST", "/v1/keys"): "KeysFunction",
    ("DELETE", "/v1/keys/{key_id}"): "KeysFunction",
    ("GET", "/v1/provider-keys"): "KeysFunction",
    ("PUT", "/v1/provider-keys/{provider}"): "KeysFunction",
    ("GET", "/v1/provider-keys/{provider}"): "KeysFunction",
    ("DELETE", "/v1/provider-keys/{provider}"): "KeysFunction",
    ("POST", "/v1/admin/users"): "AdminFunction",
    ("POST", "/v1/admin/credits"): "AdminFunction",
    ("GET", "/v1/admin/users/{user_id}"): "AdminFunction",
}


def test_account_routes_map_to_their_functions() -> None:
    template = load_template(REPO_ROOT / "template.yaml")
    routes = {(r.method, r.path): r.logical_id for r in http_routes(template)}
    assert {k: routes.get(k) for k in ACCOUNT_ROUTES} == ACCOUNT_ROUTES
    functions = serverless_functions(template)
    for name, folder in (("BalanceFunction", "balance"), ("KeysFunction", "keys"), ("AdminFunction", "admin")):
        assert functions[name]["CodeUri"] == f"functions/{folder}/"
        assert functions[name]["Handler"] == "app.handler"
        assert (REPO_ROOT / "functions" / folder / "app.py").is_file()
        assert {p for (_, p), fn in routes.items() if fn == name} == {p for (_, p), fn in ACCOUNT_ROUTES.items()
                                                                      if fn == name}, f"{name} has other routes"
