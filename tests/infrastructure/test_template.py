"""Static checks of template.yaml (SAM) and the deploy configuration.

Everything iterates over *all* ``AWS::Serverless::Function`` resources, so a new route
family is covered as soon as it is added to the template. No AWS access, no Docker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from infra.local.template import (
    REPO_ROOT,
    TemplateError,
    http_api_events,
    http_routes,
    load_template,
    serverless_functions,
    to_starlette_path,
)

TEMPLATE_PATH = REPO_ROOT / "template.yaml"
LAYER_DIR = REPO_ROOT / "layers" / "common"
WEB_ADAPTER_LAYER = re.compile(r":753240598075:layer:LambdaAdapterLayerArm64:")

# Actions that only work with Resource "*" (no resource-level permissions in IAM).
STAR_RESOURCE_ALLOWED_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "xray:GetSamplingStatisticSummaries",
    "cloudwatch:PutMetricData",
    "ssm:DescribeParameters",
}
FORBIDDEN_MANAGED_POLICY_MARKERS = ("AdministratorAccess", "PowerUserAccess", "FullAccess", "IAMFullAccess")

# API Gateway (HttpApi) path syntax: literal segments, {param}, and a greedy {param+} last.
_SEGMENT = re.compile(r"^(?:[A-Za-z0-9._~\-]+|\{[A-Za-z_][A-Za-z0-9_]*\}|\{[A-Za-z_][A-Za-z0-9_]*\+\})$")
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY"}


# ----------------------------------------------------------------------------- fixtures/helpers


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE_PATH)


@pytest.fixture(scope="module")
def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = serverless_functions(template)
    assert found, "template declares no AWS::Serverless::Function"
    return found


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v.get("Type") == resource_type}


def ref_target(value: Any) -> str | None:
    """Logical id named by {"Ref": X}, {"Fn::GetAtt": [X, ...]} or "/aws/lambda/${X}"-style !Sub."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else str(target).split(".")[0])
    return None


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def is_web_adapter_function(props: dict[str, Any]) -> bool:
    env = ((props.get("Environment") or {}).get("Variables")) or {}
    return env.get("AWS_LAMBDA_EXEC_WRAPPER") == "/opt/bootstrap"


def layer_is_web_adapter(layer: Any) -> bool:
    text = layer.get("Fn::Sub") if isinstance(layer, dict) else layer
    if isinstance(text, list):
        text = text[0]
    return isinstance(text, str) and bool(WEB_ADAPTER_LAYER.search(text))


def iter_statements(document: Any) -> list[dict[str, Any]]:
    """Statements of a policy document, looking through !If branches."""
    statements: list[dict[str, Any]] = []
    for stmt in as_list((document or {}).get("Statement")):
        if isinstance(stmt, dict) and "Fn::If" in stmt:
            _cond, yes, no = stmt["Fn::If"]
            for branch in (yes, no):
                if isinstance(branch, dict) and "Ref" not in branch:
                    statements.append(branch)
        elif isinstance(stmt, dict):
            statements.append(stmt)
    return statements


def function_policy_statements(
    template: dict[str, Any], props: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """(inline + referenced-managed-policy statements, other policy entries such as SAM templates)."""
    statements: list[dict[str, Any]] = []
    others: list[Any] = []
    for policy in as_list(props.get("Policies")):
        target = ref_target(policy)
        if target and template["Resources"].get(target, {}).get("Type") in (
            "AWS::IAM::ManagedPolicy",
            "AWS::IAM::Policy",
        ):
            statements += iter_statements(template["Resources"][target]["Properties"]["PolicyDocument"])
        elif isinstance(policy, dict) and "Statement" in policy:
            statements += iter_statements(policy)
        else:
            others.append(policy)
    return statements, others


def alarms_watching(template: dict[str, Any], namespace: str, metric: str) -> dict[str, set[str]]:
    """alarm logical id -> logical ids referenced by the dimensions of its `metric` metrics."""
    result: dict[str, set[str]] = {}
    for alarm_id, alarm in resources_of_type(template, "AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        metric_defs = []
        if props.get("MetricName"):
            metric_defs.append(props)
        for query in as_list(props.get("Metrics")):
            stat = (query.get("MetricStat") or {}).get("Metric")
            if stat:
                metric_defs.append(stat)
        for m in metric_defs:
            if m.get("Namespace") == namespace and m.get("MetricName") == metric:
                for dim in as_list(m.get("Dimensions")):
                    target = ref_target(dim.get("Value"))
                    if target:
                        result.setdefault(alarm_id, set()).add(target)
    return result


# ----------------------------------------------------------------------------- loader


def test_loader_parses_short_form_intrinsics(tmp_path: Path) -> None:
    src = tmp_path / "t.yaml"
    src.write_text(
        "Resources:\n"
        "  A:\n"
        "    Type: X\n"
        "    Properties:\n"
        "      R: !Ref B\n"
        "      G: !GetAtt B.Arn\n"
        "      GL: !GetAtt [B, Arn]\n"
        "      S: !Sub /aws/lambda/${B}\n"
        "      I: !If [C, !Select [0, !Split [',', !Ref P]], !Ref AWS::NoValue]\n"
        "      N: !Not [!Equals [!Ref P, '']]\n"
        "      J: !Join ['', [a, !FindInMap [M, k, v]]]\n"
        "      K: !Condition C\n"
        "      V: 2012-10-17\n",
        encoding="utf-8",
    )
    props = load_template(src)["Resources"]["A"]["Properties"]
    assert props["R"] == {"Ref": "B"}
    assert props["G"] == {"Fn::GetAtt": ["B", "Arn"]}
    assert props["GL"] == {"Fn::GetAtt": ["B", "Arn"]}
    assert props["S"] == {"Fn::Sub": "/aws/lambda/${B}"}
    assert props["I"] == {
        "Fn::If": ["C", {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "P"}]}]}, {"Ref": "AWS::NoValue"}]
    }
    assert props["N"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "P"}, ""]}]}
    assert props["J"] == {"Fn::Join": ["", ["a", {"Fn::FindInMap": ["M", "k", "v"]}]]}
    assert props["K"] == {"Condition": "C"}
    assert props["V"] == "2012-10-17"


def test_loader_rejects_duplicate_keys(tmp_path: Path) -> None:
    src = tmp_path / "dup.yaml"
    src.write_text("Resources:\n  A: {Type: X}\n  A: {Type: Y}\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="duplicate key 'A'"):
        load_template(src)


def test_to_starlette_path() -> None:
    assert to_starlette_path("/v1/keys/{key_id}") == "/v1/keys/{key_id}"
    assert to_starlette_path("/admin/{proxy+}") == "/admin/{proxy:path}"


def test_http_routes_shape(template: dict[str, Any]) -> None:
    routes = http_routes(template)
    assert routes
    for method, path, logical_id, codeuri, handler in routes:
        assert method in HTTP_METHODS and path.startswith("/")
        assert logical_id in template["Resources"] and codeuri and handler


# ----------------------------------------------------------------------------- basics & globals


def test_template_is_sam(template: dict[str, Any]) -> None:
    assert template["AWSTemplateFormatVersion"] == "2010-09-09"
    assert "AWS::Serverless-2016-10-31" in as_list(template["Transform"])


def test_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["Stage"]["AllowedValues"] == ["dev", "staging", "prod"]
    assert params["LogRetentionDays"]["Default"] == 30
    for name in ("CorsAllowOrigins", "AlarmEmail"):
        assert name in params
    assert params["AlarmEmail"]["Default"] == ""
    subscriptions = resources_of_type(template, "AWS::SNS::Subscription")
    assert subscriptions and all(s.get("Condition") for s in subscriptions.values()), (
        "the e-mail subscription must be conditional on AlarmEmail"
    )


def test_tracing_is_a_parameter_off_by_default(template: dict[str, Any]) -> None:
    """X-Ray costs $5 per million traces and records only Lambda's own segments (no SDK in the
    layer): PassThrough unless a stack asks for Active (docs/deploy.md, "Tracing")."""
    param = template["Parameters"]["Tracing"]
    assert param["Default"] == "PassThrough" and param["AllowedValues"] == ["Active", "PassThrough"]
    for name, res in resources_of_type(template, "AWS::Serverless::Function").items():
        assert "Tracing" not in res["Properties"], f"{name}: tracing comes from Globals"


def test_lambda_log_levels_keep_every_emf_record(template: dict[str, Any]) -> None:
    """JSON log format with Lambda's level filters. Lambda files a stdout line without a "level" key
    (every EMF metric record) as INFO, so the application level must never be above INFO or the
    alarms' metrics are dropped; the platform's START/END/REPORT lines go (SystemLogLevel WARN)."""
    logging_config = template["Globals"]["Function"]["LoggingConfig"]
    assert logging_config["LogFormat"] == "JSON"
    assert logging_config["SystemLogLevel"] == {"Ref": "SystemLogLevel"}
    assert template["Parameters"]["SystemLogLevel"]["Default"] == "WARN"
    assert logging_config["ApplicationLogLevel"] == {"Fn::FindInMap": ["ApplicationLogLevels", {"Ref": "LogLevel"},
                                                                       "Level"]}
    levels = template["Mappings"]["ApplicationLogLevels"]
    assert set(levels) == set(template["Parameters"]["LogLevel"]["AllowedValues"])
    assert {name: entry["Level"] for name, entry in levels.items()} == {
        "DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "INFO", "ERROR": "INFO"}
    for name, res in resources_of_type(template, "AWS::Serverless::Function").items():
        assert "LoggingConfig" not in res["Properties"], f"{name}: the log format and levels come from Globals"


def test_globals(template: dict[str, Any]) -> None:
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.12"
    assert glob["Architectures"] == ["arm64"]
    assert glob["Tracing"] == {"Ref": "Tracing"}
    assert isinstance(glob.get("MemorySize"), int)
    env = glob["Environment"]["Variables"]
    for name in (
        "STAGE",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
        "LOG_LEVEL",
        "SECRETS_SSM_PATH",
        "CORS_ALLOW_ORIGINS",
    ):
        assert name in env, f"Globals.Function env lacks {name}"
    assert env["STAGE"] == {"Ref": "Stage"}
    assert env["SECRETS_SSM_PATH"] == {"Fn::Sub": "/mlp/${Stage}/"}
    assert env["CORS_ALLOW_ORIGINS"] == {"Ref": "CorsAllowOrigins"}


def test_functions_use_runtime_and_arch_from_globals(functions: dict[str, dict[str, Any]]) -> None:
    for name, props in functions.items():
        assert props["Runtime"] == "python3.12", name
        assert props["Architectures"] == ["arm64"], name
        assert props.get("PackageType", "Zip") == "Zip", name


def test_function_timeouts(functions: dict[str, dict[str, Any]]) -> None:
    for name, props in functions.items():
        timeout = props["Timeout"]
        assert isinstance(timeout, int), name
        if name == "QueryStreamFunction":
            # long reasoning generations: Function URL streaming allows up to 15 minutes
            assert timeout == 900, f"{name}: the streaming function gets 900 s, not {timeout}"
        elif name.startswith("Query") or name in ("MessagesFunction", "ResponsesFunction", "EmbeddingsFunction"):
            # upstream calls behind HttpApi: a 27 s deadline plus the settle margin
            assert 60 <= timeout <= 120, f"{name}: query functions get 60-120 s, not {timeout}"
        else:
            assert 10 <= timeout <= 30, f"{name}: non-query functions get 10-30 s, not {timeout}"


# ----------------------------------------------------------------------------- layer & code


def test_common_layer(template: dict[str, Any]) -> None:
    layer = template["Resources"]["CommonLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    props = layer["Properties"]
    assert props["ContentUri"].rstrip("/") == "layers/common"
    assert props["CompatibleRuntimes"] == ["python3.12"]
    assert "arm64" in props.get("CompatibleArchitectures", [])
    assert layer["Metadata"]["BuildMethod"] == "makefile"  # layers/common/Makefile: wheels + bytecode
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"
    assert (REPO_ROOT / "layers/common/gateway").is_dir()


def _python312() -> str | None:
    """A real CPython 3.12 (pyenv's, or on PATH), as `sam build` needs."""
    pyenv = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in [*pyenv, shutil.which("python3.12")]:
        check = "import sys; assert sys.version_info[:2] == (3, 12)"
        if candidate and subprocess.run([candidate, "-c", check], capture_output=True).returncode == 0:
            return candidate
    return None


def test_layer_build_ships_unchecked_bytecode(tmp_path: Path) -> None:
    """What `sam build` runs for CommonLayer (``make build-CommonLayer``), with one locked wheel from
    requirements.txt: the gateway package and the wheel land under python/, every module with its
    CPython 3.12 bytecode, hash-based and unchecked (Lambda's code directories are read-only, and the
    zip does not keep mtimes exactly: timestamp .pyc files would be recompiled at every cold start)."""
    python = _python312()
    if python is None:
        pytest.skip("python3.12 is not installed (sam build needs it too)")
    lock = (LAYER_DIR / "requirements.txt").read_text()
    block = re.search(r"^typing-extensions==.*?(?=^\S)", lock, re.M | re.S)
    assert block is not None, "typing-extensions is no longer in the layer lock: pick another small wheel"
    (tmp_path / "req.txt").write_text(block.group(0))
    out = tmp_path / "artifacts"
    subprocess.run(["make", "-s", "-C", str(LAYER_DIR), "build-CommonLayer", f"ARTIFACTS_DIR={out}",
                    f"REQUIREMENTS={tmp_path / 'req.txt'}", f"PYTHON={python}"], check=True, capture_output=True)
    root = out / "python"
    assert (root / "typing_extensions.py").is_file() and (root / "gateway" / "chat" / "service.py").is_file()
    sources = [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(sources) > 50
    for source in sources:
        compiled = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
        assert compiled.is_file(), f"{source.relative_to(root)} has no bytecode"
        flags = int.from_bytes(compiled.read_bytes()[4:8], "little")
        assert flags == 0b01, f"{compiled.relative_to(root)}: not unchecked-hash bytecode (flags {flags})"
    # Last, the import bundle of the listed modules the layer has (here: the gateway's and
    # typing_extensions), its paths relative to python/ (deployed as /opt/python)
    from gateway import import_bundle

    bundle = (root / "gateway-imports.bin").read_bytes()
    index = import_bundle._Finder(bundle, "/opt/python").index
    listed = import_bundle.listed(str(LAYER_DIR / "coldstart-modules.txt"))
    assert set(index) == {n for n in listed if n.startswith(("gateway.", "typing_extensions"))}
    assert index["gateway.chat.service"][:2] == ("gateway/chat/service.py", False)
    assert index["gateway.chat"][:2] == ("gateway/chat/__init__.py", True)
    # with the texts the cold start compiles, compiled by the layer's Python
    compiled = import_bundle._Finder(bundle, "/opt/python").compiled
    assert set(compiled) == set(import_bundle.recorded(str(LAYER_DIR / "coldstart-compiles.json")))
    assert len(compiled) > 400


def test_the_query_functions_read_the_layers_import_bundle(template: dict[str, Any]) -> None:
    """Both query functions name the bundle the layer build writes (layers/common/Makefile), where the
    layer is mounted; no other function does (the bundle holds the query functions' modules)."""
    makefile = (LAYER_DIR / "Makefile").read_text()
    assert ('-m gateway.import_bundle "$(TARGET)/gateway-imports.bin" coldstart-modules.txt "$(TARGET)" \\\n'
            '\t\t--compiles coldstart-compiles.json') in makefile
    named = {name: resource["Properties"].get("Environment", {}).get("Variables", {}).get("GATEWAY_IMPORT_BUNDLE")
             for name, resource in template["Resources"].items() if resource["Type"] == "AWS::Serverless::Function"}
    assert {k: v for k, v in named.items() if v} == {"QueryFunction": "/opt/python/gateway-imports.bin",
                                                     "QueryStreamFunction": "/opt/python/gateway-imports.bin"}
    assert "GATEWAY_IMPORT_BUNDLE" not in str(template.get("Globals", {}))


def test_the_listed_cold_start_modules_are_what_the_query_functions_import() -> None:
    """layers/common/coldstart-modules.txt is what the query functions' import loads from the layer
    today (infra/coldstart_modules.py): a module added to the import is listed, one dropped is not;
    and coldstart-compiles.json holds the texts that import compiles today."""
    done = subprocess.run([sys.executable, "-m", "infra.coldstart_modules", "--check"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_layer_requirements_exist() -> None:
    assert (LAYER_DIR / "requirements.txt").is_file(), "layers/common/requirements.txt is missing"


def test_every_function_has_common_layer(functions: dict[str, dict[str, Any]]) -> None:
    for name, props in functions.items():
        layers = as_list(props.get("Layers"))
        assert {"Ref": "CommonLayer"} in layers, f"{name} lacks the CommonLayer"
        extra = [layer for layer in layers if layer != {"Ref": "CommonLayer"}]
        if is_web_adapter_function(props):
            assert extra and all(layer_is_web_adapter(x) for x in extra), f"{name}: unexpected layers {extra}"
        else:
            assert not extra, f"{name}: only the CommonLayer is expected, got extra {extra}"


def test_codeuri_and_handler_exist(functions: dict[str, dict[str, Any]]) -> None:
    missing = []
    for name, props in functions.items():
        codeuri = props.get("CodeUri")
        assert isinstance(codeuri, str) and codeuri.startswith("functions/"), f"{name}: CodeUri {codeuri!r}"
        code_dir = REPO_ROOT / codeuri
        handler = props["Handler"]
        if not code_dir.is_dir():
            missing.append(f"{name}: {codeuri} does not exist")
            continue
        if is_web_adapter_function(props):
            script = code_dir / handler
            if not script.is_file():
                missing.append(f"{name}: start script {codeuri}{handler} missing")
            elif not os.access(script, os.X_OK):
                missing.append(f"{name}: {codeuri}{handler} is not executable (chmod 755)")
            elif not script.read_text(encoding="utf-8").startswith("#!"):
                missing.append(f"{name}: {codeuri}{handler} has no shebang")
            continue
        module, _, attr = handler.rpartition(".")
        assert module and attr, f"{name}: handler {handler!r} is not module.attr"
        module_file = code_dir / (module.replace(".", "/") + ".py")
        if not module_file.is_file():
            missing.append(f"{name}: handler module {module_file.relative_to(REPO_ROOT)} missing")
    assert not missing, "\n".join(missing)


def test_stream_run_script() -> None:
    script = REPO_ROOT / "functions/query/run.sh"
    text = script.read_text(encoding="utf-8")
    assert os.access(script, os.X_OK)
    assert "\r\n" not in text, "run.sh must use LF line endings"
    assert "/opt/python" in text and "PORT" in text
    assert re.search(r"^exec python -m serve$", text, re.MULTILINE)  # uvicorn serving app:stream_app (serve.py)
    assert (script.parent / "serve.py").is_file()


def test_query_functions_ship_their_bytecode(template: dict[str, Any], tmp_path: Path) -> None:
    """QueryFunction and QueryStreamFunction (CodeUri functions/query/) are built by
    functions/query/Makefile (SAM's python builder leaves every .pyc out): what `sam build` runs for
    each (``make build-<LogicalId>``) ships app.py, serve.py and run.sh (still executable, the same
    bytes) and the CPython 3.12 bytecode of the two modules, hash-based and unchecked (Lambda's code
    directory is read-only and the zip does not keep mtimes exactly), and nothing else."""
    source = REPO_ROOT / "functions" / "query"
    for name in ("QueryFunction", "QueryStreamFunction"):
        resource = template["Resources"][name]
        assert resource["Properties"]["CodeUri"].rstrip("/") == "functions/query"
        assert resource.get("Metadata", {}).get("BuildMethod") == "makefile", name
    python = _python312()
    if python is None:
        pytest.skip("python3.12 is not installed (sam build needs it too)")
    for name in ("QueryFunction", "QueryStreamFunction"):
        out = tmp_path / name
        subprocess.run(["make", "-s", "-C", str(source), f"build-{name}", f"ARTIFACTS_DIR={out}", f"PYTHON={python}"],
                       check=True, capture_output=True)
        shipped = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        assert shipped == ["__pycache__", "__pycache__/app.cpython-312.pyc", "__pycache__/serve.cpython-312.pyc",
                           "app.py", "run.sh", "serve.py"], shipped
        for file in ("app.py", "serve.py", "run.sh"):
            assert (out / file).read_bytes() == (source / file).read_bytes()
        assert os.access(out / "run.sh", os.X_OK)
        for module in ("app", "serve"):
            compiled = (out / "__pycache__" / f"{module}.cpython-312.pyc").read_bytes()
            flags = int.from_bytes(compiled[4:8], "little")
            assert flags == 0b01, f"{module}: not unchecked-hash bytecode (flags {flags})"


# ----------------------------------------------------------------------------- routes


def test_each_route_declared_once(template: dict[str, Any]) -> None:
    counts = Counter((r.method, r.path) for r in http_routes(template))
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"routes declared more than once: {dupes}"
    # ANY overlaps every method on the same path.
    for method, path in counts:
        if method == "ANY":
            others = [m for m, p in counts if p == path and m != "ANY"]
            assert not others, f"{path}: ANY plus {others} is ambiguous"


def test_route_syntax(template: dict[str, Any]) -> None:
    for method, path, logical_id, _codeuri, _handler in http_routes(template):
        assert method in HTTP_METHODS, f"{logical_id}: method {method}"
        assert path.startswith("/") and (path == "/" or not path.endswith("/")), f"{logical_id}: {path}"
        segments = path.strip("/").split("/") if path != "/" else []
        for i, segment in enumerate(segments):
            assert _SEGMENT.match(segment), f"{logical_id}: bad segment {segment!r} in {path}"
            if segment.endswith("+}"):
                assert i == len(segments) - 1, f"{logical_id}: greedy {segment} must be last in {path}"


def test_routes_attach_to_the_api_and_existing_functions(template: dict[str, Any]) -> None:
    api = template["Resources"]["Api"]
    assert api["Type"] == "AWS::Serverless::HttpApi"
    functions = serverless_functions(template)
    for logical_id, event_name, props in http_api_events(template):
        assert logical_id in functions
        assert props.get("ApiId") == {"Ref": "Api"}, (
            f"{logical_id}.{event_name}: set ApiId: !Ref Api (otherwise SAM creates a second, implicit API)"
        )
        assert "Path" in props and "Method" in props, f"{logical_id}.{event_name}"


def test_known_routes(template: dict[str, Any]) -> None:
    routes = {(r.method, r.path): r.logical_id for r in http_routes(template)}
    assert routes[("GET", "/health")] == "HealthFunction"
    assert routes[("POST", "/v1/chat/completions")] == "QueryFunction"
    assert routes[("POST", "/v1/messages")] == routes[("POST", "/v1/messages/count_tokens")] == "MessagesFunction"
    assert routes[("POST", "/v1/responses")] == "ResponsesFunction"


def test_stripe_webhook_has_no_authorizer(template: dict[str, Any]) -> None:
    """Stripe cannot send our credentials; the handler verifies the Stripe signature instead."""
    api_auth = (template["Resources"]["Api"].get("Properties") or {}).get("Auth") or {}
    for logical_id, event_name, props in http_api_events(template):
        if props.get("Path") != "/webhooks/stripe":
            continue
        authorizer = (props.get("Auth") or {}).get("Authorizer")
        if api_auth.get("DefaultAuthorizer"):
            assert authorizer == "NONE", f"{logical_id}.{event_name}: needs Auth: {{Authorizer: NONE}}"
        else:
            assert authorizer in (None, "NONE"), f"{logical_id}.{event_name}: must not use an authorizer"


def test_api_config(template: dict[str, Any]) -> None:
    props = template["Resources"]["Api"]["Properties"]
    cors = props["CorsConfiguration"]
    # One !If around the whole config (see the comment in template.yaml).
    _cond, any_origin, listed = cors["Fn::If"]
    assert any_origin["AllowOrigins"] == ["*"]
    assert listed["AllowOrigins"] == {"Fn::Split": [",", {"Ref": "CorsAllowOrigins"}]}
    assert {k: v for k, v in any_origin.items() if k != "AllowOrigins"} == {
        k: v for k, v in listed.items() if k != "AllowOrigins"
    }, "CORS branches must differ only in AllowOrigins"
    assert "authorization" in [h.lower() for h in any_origin["AllowHeaders"]]
    settings = props["DefaultRouteSettings"]
    assert "ThrottlingBurstLimit" in settings and "ThrottlingRateLimit" in settings
    log_target = ref_target(props["AccessLogSettings"]["DestinationArn"]) or props["AccessLogSettings"][
        "DestinationArn"
    ].get("Fn::Sub", "")
    assert "ApiAccessLogGroup" in str(log_target)
    assert props["AccessLogSettings"]["Format"]
    access_logs = template["Resources"]["ApiAccessLogGroup"]
    assert access_logs["Type"] == "AWS::Logs::LogGroup"
    assert access_logs["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# ----------------------------------------------------------------------------- streaming


def test_query_stream_function(template: dict[str, Any], functions: dict[str, dict[str, Any]]) -> None:
    stream = functions["QueryStreamFunction"]
    assert stream["CodeUri"] == functions["QueryFunction"]["CodeUri"], "same code as QueryFunction"
    assert stream["Handler"] == "run.sh"
    assert is_web_adapter_function(stream)
    assert not [e for e in (stream.get("Events") or {}).values() if e.get("Type") == "HttpApi"], (
        "the stream function is served by its Function URL, not by the HttpApi"
    )


def test_web_adapter_functions_stream_via_function_url(functions: dict[str, dict[str, Any]]) -> None:
    for name, props in functions.items():
        if not is_web_adapter_function(props):
            continue
        env = props["Environment"]["Variables"]
        assert env.get("AWS_LWA_INVOKE_MODE") == "response_stream", name
        # readiness by TCP: an HTTP GET / would build the surfaces a first chat completion skips
        assert env.get("AWS_LWA_READINESS_CHECK_PROTOCOL") == "tcp", name
        assert str(env.get("PORT")) == "8080", name
        assert any(layer_is_web_adapter(x) for x in as_list(props.get("Layers"))), name
        url = props.get("FunctionUrlConfig") or {}
        assert url.get("InvokeMode") == "RESPONSE_STREAM", name
        assert url.get("AuthType") == "NONE", name


# ----------------------------------------------------------------------------- IAM


def test_every_function_reads_only_its_audiences_secrets(
    template: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    """Least privilege by audience: the SSM parameters a function may read are exactly
    /mlp/${Stage}/<audience> for the audiences in its SECRETS_AUDIENCES, which gateway.config reads."""
    from gateway.config import SECRET_AUDIENCES

    for name, props in functions.items():
        audiences = props["Environment"]["Variables"]["SECRETS_AUDIENCES"].split(",")
        assert "core" in audiences and set(audiences) <= set(SECRET_AUDIENCES), name
        statements, _others = function_policy_statements(template, props)
        ssm = [s for s in statements if any(str(a).startswith("ssm:") for a in as_list(s.get("Action")))]
        assert {a for s in ssm for a in as_list(s["Action"])} == {"ssm:GetParameters", "ssm:GetParameter"}, name
        readable = set()
        for stmt in ssm:
            for resource in as_list(stmt.get("Resource")):
                text = resource.get("Fn::Sub") if isinstance(resource, dict) else resource
                prefix = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/mlp/${Stage}/"
                assert isinstance(text, str) and text.startswith(prefix), (name, resource)
                # the identity audience is the stack's own parameter (IDENTITY_SSM_PARAMETER)
                readable.add(text.removeprefix(prefix).removeprefix("${AWS::StackName}/"))
        assert readable == set(audiences), f"{name}: may read {sorted(readable)}, reads {sorted(audiences)}"


def test_only_the_stripe_functions_read_the_stripe_secrets(functions: dict[str, dict[str, Any]]) -> None:
    billing = {name for name, props in functions.items()
               if "billing" in props["Environment"]["Variables"]["SECRETS_AUDIENCES"].split(",")}
    assert billing == {"BillingFunction", "WebhooksFunction"}
    assert functions["HealthFunction"]["Environment"]["Variables"]["SECRETS_AUDIENCES"] == "core"


def test_no_wildcard_policies(template: dict[str, Any], functions: dict[str, dict[str, Any]]) -> None:
    documents: list[tuple[str, Any]] = []
    for rid, res in template["Resources"].items():
        if res.get("Type") in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            documents.append((rid, res["Properties"]["PolicyDocument"]))
        elif res.get("Type") == "AWS::IAM::Role":
            for policy in as_list(res["Properties"].get("Policies")):
                documents.append((rid, policy.get("PolicyDocument")))
    for name, props in functions.items():
        _statements, others = function_policy_statements(template, props)
        for policy in as_list(props.get("Policies")):
            if isinstance(policy, dict) and "Statement" in policy:
                documents.append((name, policy))
        for other in others:
            text = other if isinstance(other, str) else str(other)
            assert not any(marker in text for marker in FORBIDDEN_MANAGED_POLICY_MARKERS), (
                f"{name}: broad managed policy {other!r}"
            )
    assert documents
    for owner, document in documents:
        for stmt in iter_statements(document):
            if stmt.get("Effect", "Allow") != "Allow":
                continue
            actions = [str(a) for a in as_list(stmt.get("Action"))]
            assert "NotAction" not in stmt and "NotResource" not in stmt, f"{owner}: NotAction/NotResource"
            for action in actions:
                assert "*" not in action, f"{owner}: wildcard action {action!r}"
            if "*" in as_list(stmt.get("Resource")):
                assert set(actions) <= STAR_RESOURCE_ALLOWED_ACTIONS, (
                    f"{owner}: Resource '*' is only for actions without resource-level permissions, got {actions}"
                )


def test_kms_decrypt_only_via_ssm(template: dict[str, Any]) -> None:
    for rid, res in template["Resources"].items():
        if res.get("Type") != "AWS::IAM::ManagedPolicy":
            continue
        for stmt in iter_statements(res["Properties"]["PolicyDocument"]):
            if "kms:Decrypt" in as_list(stmt.get("Action")):
                via = stmt["Condition"]["StringEquals"]["kms:ViaService"]
                assert "ssm." in str(via), rid
                assert stmt["Resource"] != "*", rid


# ----------------------------------------------------------------------------- scheduling


def test_scheduled_events_have_retry_and_dlq(functions: dict[str, dict[str, Any]]) -> None:
    for name, props in functions.items():
        for event_name, event in (props.get("Events") or {}).items():
            if event.get("Type") not in ("ScheduleV2", "Schedule"):
                continue
            eprops = event.get("Properties") or {}
            assert eprops.get("RetryPolicy"), f"{name}.{event_name}: RetryPolicy missing"
            assert eprops.get("DeadLetterConfig"), f"{name}.{event_name}: DeadLetterConfig missing"


# ----------------------------------------------------------------------------- observability


# Written by infra/template_gen.py. The scheduled functions' Errors alarms follow their schedule:
# (threshold, period in seconds); every other function uses the parameter per 5 minutes.
SCHEDULED_ERRORS_ALARMS = {"SweeperFunction": (2, 900), "ModelsWarmFunction": (1, 1800)}


def lambda_metric(query_id: str, metric: str, function: str, period: int) -> dict[str, Any]:
    dimensions = [{"Name": "FunctionName", "Value": {"Ref": function}}]
    return {"Id": query_id, "ReturnData": False, "MetricStat": {
        "Metric": {"Namespace": "AWS/Lambda", "MetricName": metric, "Dimensions": dimensions},
        "Period": period, "Stat": "Sum"}}


def test_every_function_has_one_log_group_deleted_with_the_stack(
    template: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    log_groups = resources_of_type(template, "AWS::Logs::LogGroup")
    for name in functions:
        log_group_name = {"Fn::Sub": f"/aws/lambda/${{{name}}}"}
        found = [rid for rid, res in log_groups.items() if res["Properties"].get("LogGroupName") == log_group_name]
        assert found == [f"{name}LogGroup"], f"{name}: one log group (python -m infra.template_gen)"
        assert log_groups[f"{name}LogGroup"] == {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": {"LogGroupName": log_group_name, "RetentionInDays": {"Ref": "LogRetentionDays"}},
        }


def test_every_function_has_one_errors_and_throttles_alarm(
    template: dict[str, Any], functions: dict[str, dict[str, Any]]
) -> None:
    assert set(SCHEDULED_ERRORS_ALARMS) <= set(functions)
    errors = alarms_watching(template, "AWS/Lambda", "Errors")
    throttles = alarms_watching(template, "AWS/Lambda", "Throttles")
    for name in functions:
        alarm = f"{name}ErrorsAlarm"
        assert [aid for aid, targets in errors.items() if name in targets] == [alarm], f"{name}: Errors alarms"
        assert [aid for aid, targets in throttles.items() if name in targets] == [alarm], f"{name}: Throttles alarms"
        threshold, period = SCHEDULED_ERRORS_ALARMS.get(name, ({"Ref": "FunctionErrorAlarmThreshold"}, 300))
        assert template["Resources"][alarm] == {"Type": "AWS::CloudWatch::Alarm", "Properties": {
            "AlarmDescription": {"Fn::Sub": f"${{AWS::StackName}} {name} Lambda errors + throttles"},
            "AlarmActions": [{"Ref": "AlarmTopic"}],
            "OKActions": [{"Ref": "AlarmTopic"}],
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "Threshold": threshold,
            "EvaluationPeriods": 1,
            "TreatMissingData": "notBreaching",
            "Metrics": [
                lambda_metric("errors", "Errors", name, period),
                lambda_metric("throttles", "Throttles", name, period),
                {"Id": "errorsAndThrottles", "Label": "Errors + Throttles",
                 "Expression": "FILL(errors, 0) + FILL(throttles, 0)", "ReturnData": True},
            ],
        }}


def test_api_5xx_and_query_p99_alarms(template: dict[str, Any]) -> None:
    api_alarms = alarms_watching(template, "AWS/ApiGateway", "5xx")
    assert any("Api" in targets for targets in api_alarms.values()), "no HttpApi 5xx alarm"
    duration = alarms_watching(template, "AWS/Lambda", "Duration")
    for function in ("QueryFunction", "MessagesFunction", "ResponsesFunction"):  # upstream calls behind HttpApi
        p99 = [
            aid
            for aid, targets in duration.items()
            if function in targets and template["Resources"][aid]["Properties"].get("ExtendedStatistic") == "p99"
        ]
        assert p99, f"no p99 Duration alarm on {function}"


def test_alarms_notify_the_topic(template: dict[str, Any]) -> None:
    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm")
    assert alarms
    assert template["Resources"]["AlarmTopic"]["Type"] == "AWS::SNS::Topic"
    for aid, alarm in alarms.items():
        assert {"Ref": "AlarmTopic"} in as_list(alarm["Properties"].get("AlarmActions")), aid


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for name in ("ApiUrl", "QueryStreamUrl", "LayerArn", "AlarmTopicArn"):
        assert name in outputs, name
    assert outputs["QueryStreamUrl"]["Value"] == {"Fn::GetAtt": ["QueryStreamFunctionUrl", "FunctionUrl"]}
    assert outputs["LayerArn"]["Value"] == {"Ref": "CommonLayer"}
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}


# ----------------------------------------------------------------------------- samconfig


def test_samconfig_environments() -> None:
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    for env in ("dev", "staging", "prod"):
        deploy = config[env]["deploy"]["parameters"]
        assert deploy["stack_name"] == f"mlp-{env}"
        assert "CAPABILITY_IAM" in deploy["capabilities"]
        assert deploy["resolve_s3"] is True
        assert f"Stage={env}" in deploy["parameter_overrides"]
        assert deploy["region"]
        assert deploy["confirm_changeset"] is (env == "prod")


# ----------------------------------------------------------------------------- lint


def test_cfn_lint() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            str(TEMPLATE_PATH),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"cfn-lint failed:\n{result.stdout}\n{result.stderr}"
