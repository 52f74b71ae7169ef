#!/bin/bash
# Entry point of QueryStreamFunction (Handler: run.sh). The AWS Lambda Web Adapter layer's
# /opt/bootstrap (AWS_LAMBDA_EXEC_WRAPPER) runs this script, waits until the app answers on
# $PORT, then proxies Function URL invocations to it with response streaming.
#
# The Python runtime's own bootstrap does not run here, so put the CommonLayer (gateway +
# dependencies, including uvicorn, unpacked under /opt/python), the function code and the
# runtime directory (boto3) on the path ourselves.
set -e
TASK_ROOT="${LAMBDA_TASK_ROOT:-$(cd "$(dirname "$0")" && pwd)}"
export PYTHONPATH="/opt/python:${TASK_ROOT}${LAMBDA_RUNTIME_DIR:+:$LAMBDA_RUNTIME_DIR}${PYTHONPATH:+:$PYTHONPATH}"
export PATH="${PATH}:${TASK_ROOT}/bin"
cd "$TASK_ROOT"
# This process serves the function: its import starts as in Lambda (gateway/coldstart.py) here too
export GATEWAY_COLD_START=serve
# uvicorn serving app:stream_app on $PORT (0.0.0.0, no access log, uvloop, httptools): serve.py builds
# the Config `python -m uvicorn app:stream_app` built, without uvicorn's command-line module
exec python serve.py
