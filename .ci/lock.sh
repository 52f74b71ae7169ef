#!/usr/bin/env bash
# The locked, hashed requirements SAM installs, compiled from pyproject.toml for the Lambda
# runtime (python3.12 on arm64, Amazon Linux 2023 = glibc 2.34 = manylinux_2_34):
#   layers/common/requirements.txt         <- [project].dependencies
#   functions/{billing,webhooks}/requirements.txt <- the "billing" extra, constrained to the layer's pins
#
#   bash .ci/lock.sh            (make lock)        rewrite the locks; pins already there are kept
#   bash .ci/lock.sh --upgrade  (make lock-upgrade) re-resolve everything to the newest allowed
#   bash .ci/lock.sh --check    (make test)        fail if the locks do not match pyproject.toml
#
# The existing locks are uv's preferences, so --check does not fail because a dependency
# published a new release; it fails when pyproject.toml changed and `make lock` was not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV="${UV:-$ROOT/.venv/bin/uv}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
LAYER=layers/common/requirements.txt
FUNCTIONS=(functions/billing/requirements.txt functions/webhooks/requirements.txt)
TARGET=(--python-version 3.12 --python-platform aarch64-manylinux_2_34 --generate-hashes
        --custom-compile-command "make lock" --quiet --python "$PYTHON" --no-python-downloads)

mode="${1:-}"
compile_all() {  # compile_all DIR [uv options...]: DIR holds pyproject.toml and the lock files
    local dir="$1"; shift
    (
        cd "$dir"
        "$UV" pip compile pyproject.toml "${TARGET[@]}" "$@" -o "$LAYER"
        "$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["billing"]))' \
            | "$UV" pip compile - "${TARGET[@]}" "$@" --constraint "$LAYER" -o "${FUNCTIONS[0]}"
        for f in "${FUNCTIONS[@]:1}"; do cp "${FUNCTIONS[0]}" "$f"; done
    )
}

case "$mode" in
    "") compile_all "$ROOT" ;;
    --upgrade) compile_all "$ROOT" --upgrade ;;
    --check)
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        for f in pyproject.toml "$LAYER" "${FUNCTIONS[@]}"; do
            mkdir -p "$work/$(dirname "$f")"
            cp "$ROOT/$f" "$work/$f"
        done
        compile_all "$work"
        status=0
        for f in "$LAYER" "${FUNCTIONS[@]}"; do
            if ! diff -u "$ROOT/$f" "$work/$f" > "$work/diff.txt"; then
                echo "lock: $f does not match pyproject.toml; run \`make lock\`:" >&2
                head -40 "$work/diff.txt" >&2
                status=1
            fi
        done
        [ "$status" = 0 ] && echo "lock: $LAYER and ${FUNCTIONS[*]} match pyproject.toml" >&2
        exit "$status"
        ;;
    *) echo "usage: $0 [--check|--upgrade]" >&2; exit 2 ;;
esac
