#!/bin/bash
# Entry point of QueryStreamFunction (Handler: run.sh). The AWS Lambda Web Adapter layer's
# /opt/bootstrap (AWS_LAMBDA_EXEC_WRAPPER) runs this script, waits until the app answers on
# $PORT, then proxies Function URL invocations to it with response streaming.
#
# The Python runtime's own bootstrap does not run here, so put the CommonLayer (gateway +
# dependencies, including uvicorn, unpacked under /opt/python) and the runtime directory (boto3)
# on the path ourselves. The function code is on it already: `python -m serve` puts the working
# directory (the function's, below) first. Listed again, every top-level import not found in it
# (the standard library, the layer: ~130) would look there twice: ~7 M instructions of the
# process's import, ~0.4 % (BENCHMARKS.md, issue 15, spawn7 lane).
set -e
# The function's directory (Lambda's task root, else this script's): found without a subshell or
# `dirname`, two processes fewer before Python starts (~1.5 ms of a local spawn)
if [ -n "${LAMBDA_TASK_ROOT:-}" ]; then cd "$LAMBDA_TASK_ROOT"; elif [[ "$0" == */* ]]; then cd "${0%/*}"; fi
TASK_ROOT="$PWD"
export PYTHONPATH="/opt/python${LAMBDA_RUNTIME_DIR:+:$LAMBDA_RUNTIME_DIR}${PYTHONPATH:+:$PYTHONPATH}"
export PATH="${PATH}:${TASK_ROOT}/bin"
# This process serves the function: its import starts as in Lambda (gateway/coldstart.py) here too
export GATEWAY_COLD_START=serve
# uvicorn serving app:stream_app on $PORT (0.0.0.0, no access log, uvloop, httptools): serve.py builds
# the Config `python -m uvicorn app:stream_app` built, without uvicorn's command-line module. Run as
# `-m serve` (the same `__main__`, this directory first on sys.path), Python runs serve.py's bytecode,
# which the function ships (functions/query/Makefile), instead of compiling the script at every start
# (~9 M instructions, ~0.5 % of the spawn; BENCHMARKS.md, issue 15, import lane).
exec python -m serve
