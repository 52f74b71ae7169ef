#!/usr/bin/env bash
# Validate template.yaml with the AWS SAM CLI and cfn-lint, fully offline.
#
# aws-sam-cli lives in its own venv (.venv-sam) because it pins an older boto3 than
# moto/the dev venv want. The venv is created on first use and reused afterwards;
# set SAM_CLI_VERSION to change the pinned version (the venv is rebuilt when it differs).
#
# Usage: bash .ci/sam-validate.sh            (from anywhere inside the repo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SAM_CLI_VERSION="${SAM_CLI_VERSION:-1.170.0}"
SAM_VENV="${SAM_VENV:-$ROOT/.venv-sam}"
TEMPLATE="${TEMPLATE:-template.yaml}"

find_python312() {
    local candidate
    if candidate="$(command -v python3.12 2>/dev/null)" && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        echo "$candidate"; return 0
    fi
    candidate="$(printf '%s\n' "$HOME"/.pyenv/versions/3.12*/bin/python3.12 | sort -V | tail -n 1)"
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
    return 1
}

sam_ready() {
    [ -x "$SAM_VENV/bin/sam" ] || return 1
    local installed
    installed="$("$SAM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("aws-sam-cli"))' 2>/dev/null)" || return 1
    [ "$installed" = "$SAM_CLI_VERSION" ]
}

if ! sam_ready; then
    PY312="$(find_python312)" || { echo "sam-validate: python3.12 not found on PATH or in ~/.pyenv/versions" >&2; exit 1; }
    echo "sam-validate: creating $SAM_VENV with $PY312 and aws-sam-cli==$SAM_CLI_VERSION" >&2
    rm -rf "$SAM_VENV"
    "$PY312" -m venv "$SAM_VENV"
    "$SAM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$SAM_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "aws-sam-cli==$SAM_CLI_VERSION"
fi

# `sam validate` wants a region and (for the managed-policy lookup it may do) credentials.
# Nothing here talks to AWS: dummy credentials plus a dead proxy make any attempt fail fast
# instead of hanging, so a green run proves the validation is offline.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_REGION="$AWS_DEFAULT_REGION"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-AKIAEXAMPLEDUMMY0000}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-dummy-secret-for-offline-validation}"
export AWS_EC2_METADATA_DISABLED=true
export SAM_CLI_TELEMETRY=0
export HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9
unset NO_PROXY no_proxy

# samconfig.toml turns lint on for `sam validate`; run the basic (SAM translator) validation
# once with an empty config so both kinds really run.
EMPTY_SAMCONFIG="$(mktemp --suffix=.toml)"
trap 'rm -f "$EMPTY_SAMCONFIG"' EXIT
echo "version = 0.1" > "$EMPTY_SAMCONFIG"

# The per-function log groups and Errors alarms are written by infra/template_gen.py: a stale
# section means a function without them (or with another function's), so it fails here too.
if [ "$TEMPLATE" = template.yaml ]; then
    echo "== generated per-function resources ==" >&2
    GEN_PYTHON="$ROOT/.venv/bin/python"
    [ -x "$GEN_PYTHON" ] || GEN_PYTHON="$SAM_VENV/bin/python"
    "$GEN_PYTHON" -m infra.template_gen --check "$TEMPLATE"
fi

echo "== sam validate (SAM transform) ==" >&2
"$SAM_VENV/bin/sam" validate --config-file "$EMPTY_SAMCONFIG" --template "$TEMPLATE" --region "$AWS_DEFAULT_REGION"

echo "== sam validate --lint ==" >&2
"$SAM_VENV/bin/sam" validate --lint --template "$TEMPLATE" --region "$AWS_DEFAULT_REGION"

# `sam validate` only proves the transform succeeds. Transform here too (same translator,
# placeholder artifact URIs) and check what it produced for the parts that fail silently.
echo "== SAM transform output checks ==" >&2
"$SAM_VENV/bin/python" - "$TEMPLATE" <<'PY'
import json
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class OfflinePolicies:  # managed policies SAM adds by name (Tracing: Active, basic execution)
    def load(self):
        return {
            "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
            "AWSXrayWriteOnlyAccess": "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess",
        }


with open(sys.argv[1], encoding="utf-8") as fh:
    template = yaml_parse(fh.read())
for resource in template.get("Resources", {}).values():
    props = resource.get("Properties") or {}
    for key in ("CodeUri", "ContentUri"):
        if isinstance(props.get(key), str):
            props[key] = "s3://placeholder-bucket/placeholder-key"
out = transform(template, {}, OfflinePolicies())
resources = out["Resources"]
problems = []

# Every Ref must name a parameter, a resource or a pseudo parameter (the SAM CORS code path
# rewrites keys inside intrinsics and can mangle names).
known = set(out.get("Parameters", {})) | set(resources)
def walk(node):
    if isinstance(node, dict):
        if set(node) == {"Ref"} and isinstance(node["Ref"], str):
            if not node["Ref"].startswith("AWS::") and node["Ref"] not in known:
                problems.append(f"unresolved Ref {node['Ref']!r}")
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
walk(resources)

# HttpApi CORS must keep headers/methods, not only origins.
for rid, res in resources.items():
    if res["Type"] == "AWS::ApiGatewayV2::Api" and "Body" in res["Properties"]:
        cors = res["Properties"]["Body"].get("x-amazon-apigateway-cors")
        if cors is not None:
            variants = cors["Fn::If"][1:] if isinstance(cors, dict) and "Fn::If" in cors else [cors]
            for variant in variants:
                if not isinstance(variant, dict) or not {"allowOrigins", "allowHeaders", "allowMethods"} <= set(variant):
                    problems.append(f"{rid}: CORS lost settings in the transform: {json.dumps(variant)[:200]}")

# Public Function URLs need both lambda:InvokeFunctionUrl and lambda:InvokeFunction (Oct 2025 model).
for rid, res in resources.items():
    if res["Type"] == "AWS::Lambda::Url" and res["Properties"].get("AuthType") == "NONE":
        fn = res["Properties"]["TargetFunctionArn"]
        actions = {
            p["Properties"]["Action"]
            for p in resources.values()
            if p["Type"] == "AWS::Lambda::Permission" and p["Properties"].get("FunctionName") == fn
        }
        missing = {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"} - actions
        if missing:
            problems.append(f"{rid}: missing public permissions {sorted(missing)}")

if problems:
    print("SAM transform output checks failed:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"transform OK: {len(resources)} CloudFormation resources")
PY

# cfn-lint from the dev venv when present (the version pyproject pins), else the one sam pulled in.
CFN_LINT="$ROOT/.venv/bin/cfn-lint"
[ -x "$CFN_LINT" ] || CFN_LINT="$SAM_VENV/bin/cfn-lint"
echo "== $("$CFN_LINT" --version) ==" >&2
"$CFN_LINT" "$TEMPLATE"

echo "sam-validate: OK" >&2
