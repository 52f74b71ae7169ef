"""functions/query/app.py in the process run.sh starts (``GATEWAY_COLD_START=serve``: it serves
``stream_app`` only) builds QueryFunction's buffered app and Mangum handler on first access; in
QueryFunction itself they are built during the import."""

from __future__ import annotations

import json

from tests.support.apps import in_fresh_function


def test_the_buffered_app_is_built_on_first_access_in_run_sh_process() -> None:
    code = ("import os, json\nos.environ['GATEWAY_COLD_START'] = 'serve'\nimport sys, app\n"
            "before = 'mangum' in sys.modules\nhandler = app.handler\n"
            "print(json.dumps([before, 'mangum' in sys.modules, type(app.app).__name__, callable(handler),\n"
            "                  app.handler is handler and vars(app)['app'] is app.app]))")
    assert json.loads(in_fresh_function("query", code)) == [False, True, "LeanApp", True, True]


def test_query_function_builds_its_handler_during_the_import() -> None:
    code = ("import os, json, sys\nos.environ.pop('GATEWAY_COLD_START', None)\n"
            "os.environ['AWS_LAMBDA_FUNCTION_NAME'] = 'query'\nimport app\n"
            "print(json.dumps(['app' in vars(app), 'handler' in vars(app), 'mangum' in sys.modules]))")
    assert json.loads(in_fresh_function("query", code)) == [True, True, True]
