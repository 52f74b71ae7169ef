"""The console and customer sign-in in template.yaml: the console function and its routes, the
Cognito User Pool (email sign-up with verification, hosted UI, a PKCE app client, optional
Google/GitHub federation) or an external issuer, and the SSM parameters that wire both into the
settings every function loads."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.config import Settings
from infra.local.template import REPO_ROOT, http_routes, load_template, serverless_functions

CONSOLE_ROUTES = {("GET", "/console"), ("GET", "/console/{proxy+}"), ("GET", "/console/api/usage/breakdown")}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(REPO_ROOT / "template.yaml")


def _resource(template: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(template["Resources"][name])


def test_console_routes_on_their_own_function(template: dict[str, Any]) -> None:
    routes = {(r.method, r.path): r.logical_id for r in http_routes(template)}
    assert {k for k, v in routes.items() if v == "ConsoleFunction"} == CONSOLE_ROUTES
    fn = serverless_functions(template)["ConsoleFunction"]
    assert fn["CodeUri"] == "functions/console/" and fn["Handler"] == "app.handler"
    assert (REPO_ROOT / "functions/console/app.py").is_file()
    assert all(e["Properties"]["ApiId"] == {"Ref": "Api"} for e in fn["Events"].values())  # same API, same origin


def test_user_pool_signs_up_by_email_with_verification(template: dict[str, Any]) -> None:
    pool = _resource(template, "UserPool")
    assert pool["Condition"] == "UseCognito" and pool["DeletionPolicy"] == "Retain"
    props = pool["Properties"]
    assert props["UsernameAttributes"] == ["email"] and props["AutoVerifiedAttributes"] == ["email"]
    assert props["VerificationMessageTemplate"]["DefaultEmailOption"] == "CONFIRM_WITH_CODE"
    assert props["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is False
    assert props["UserAttributeUpdateSettings"]["AttributesRequireVerificationBeforeUpdate"] == ["email"]
    assert props["Policies"]["PasswordPolicy"]["MinimumLength"] >= 12
    assert _resource(template, "UserPoolDomain")["Properties"]["UserPoolId"] == {"Ref": "UserPool"}


def test_console_client_is_public_code_flow_with_exact_callbacks(template: dict[str, Any]) -> None:
    props = _resource(template, "ConsoleUserPoolClient")["Properties"]
    assert props["GenerateSecret"] is False  # a browser app: PKCE instead of a secret
    assert props["AllowedOAuthFlows"] == ["code"] and props["AllowedOAuthFlowsUserPoolClient"] is True
    assert set(props["AllowedOAuthScopes"]) == {"openid", "email", "profile"}
    assert "ALLOW_USER_PASSWORD_AUTH" not in props["ExplicitAuthFlows"]  # passwords only on the hosted UI
    assert props["PreventUserExistenceErrors"] == "ENABLED" and props["EnableTokenRevocation"] is True
    [callback] = props["CallbackURLs"]
    assert "/console/callback" in str(callback) and "${Api}" in str(callback)
    assert "/console/signed-out" in str(props["LogoutURLs"])
    providers = props["SupportedIdentityProviders"]
    assert providers[0] == "COGNITO"
    assert {"Fn::If": ["HasGoogle", {"Ref": "GoogleIdentityProvider"}, {"Ref": "AWS::NoValue"}]} in providers
    assert {"Fn::If": ["HasGitHub", {"Ref": "GitHubIdentityProvider"}, {"Ref": "AWS::NoValue"}]} in providers


def test_federation_is_optional_and_secrets_are_noecho(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    for name in ("GoogleClientSecret", "GitHubClientSecret"):
        assert params[name]["NoEcho"] is True and params[name]["Default"] == ""
    assert _resource(template, "GoogleIdentityProvider")["Condition"] == "HasGoogle"
    github = _resource(template, "GitHubIdentityProvider")
    assert github["Condition"] == "HasGitHub" and github["Properties"]["ProviderType"] == "OIDC"
    for idp in ("GoogleIdentityProvider", "GitHubIdentityProvider"):
        assert _resource(template, idp)["Properties"]["AttributeMapping"]["email_verified"] == "email_verified"
    assert params["IdentityProvider"]["AllowedValues"] == ["cognito", "external", "none"]
    assert params["IdentityProvider"]["Default"] == "cognito"


def test_identity_parameter_carries_real_settings_for_the_sign_in_functions(template: dict[str, Any]) -> None:
    """The stack writes the sign-in settings as ONE String parameter, the ``identity`` audience of
    gateway.config, read by exactly the functions that verify sign-in tokens or serve the console."""
    ssm = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::SSM::Parameter"}
    assert set(ssm) == {"IdentityConfigParameter"}
    props = ssm["IdentityConfigParameter"]["Properties"]
    assert props["Name"] == {"Fn::Sub": "/mlp/${Stage}/${AWS::StackName}/identity"}
    assert template["Globals"]["Function"]["Environment"]["Variables"]["IDENTITY_SSM_PARAMETER"] == props["Name"]
    assert props["Type"] == "String"  # nothing secret: ids and URLs
    with_identity, without = props["Value"]["Fn::If"][1:]
    body, variables = with_identity["Fn::Sub"]
    keys = json.loads(re.sub(r"\$\{(\w+)\}", r"\1", body))
    assert set(keys) <= set(Settings.model_fields), set(keys) - set(Settings.model_fields)
    assert set(keys) == {"jwt_issuer", "jwt_jwks_url", "jwt_audience", "console_client_id", "console_authorize_url",
                         "console_token_url", "console_signup_url", "console_logout_url", "console_stream_url"}
    # the audience the gateway requires is the console's app client; the issuer is the pool
    assert keys["jwt_audience"] == keys["console_client_id"] == "ClientId"
    assert variables["ClientId"]["Fn::If"][1] == {"Ref": "ConsoleUserPoolClient"}
    assert "${UserPool}" in variables["Issuer"]["Fn::If"][1]["Fn::Sub"]
    assert variables["StreamUrl"] == {"Fn::GetAtt": ["QueryStreamFunctionUrl", "FunctionUrl"]}
    # IdentityProvider=none: only the stream URL, so jwt_* an operator put into core are not blanked
    body, variables = without["Fn::Sub"]
    assert json.loads(re.sub(r"\$\{(\w+)\}", r"\1", body)) == {"console_stream_url": "StreamUrl"}
    readers = {name for name, res in template["Resources"].items() if res["Type"] == "AWS::Serverless::Function"
               and "identity" in res["Properties"].get("Environment", {}).get("Variables", {})
               .get("SECRETS_AUDIENCES", "").split(",")}
    assert readers == {"BalanceFunction", "KeysFunction", "BillingFunction", "ConsoleFunction"}


def test_external_issuer_parameters_are_required_together(template: dict[str, Any]) -> None:
    rule = template["Rules"]["ExternalIdentityProviderSettings"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "IdentityProvider"}, "external"]}
    required = {c["Fn::Not"][0]["Fn::Equals"][0]["Ref"] for c in rule["Assertions"][0]["Assert"]["Fn::And"]}
    assert required == {"ExternalIssuer", "ExternalClientId", "ExternalAuthorizeUrl", "ExternalTokenUrl"}


def test_console_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert "/console" in str(outputs["ConsoleUrl"]["Value"])
    assert outputs["UserPoolId"]["Condition"] == "UseCognito"
