"""What the query function's cold start no longer builds at import (issue 15, spawn5), built on first use
with the same result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fresh(code: str) -> str:
    env = {**os.environ, "GATEWAY_COLD_START": "serve",
           "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT / 'functions' / 'query'}"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT / "functions" / "query", timeout=60, check=True)
    return done.stdout.strip()


def test_the_stream_patterns_are_compiled_by_the_first_stream_not_the_import() -> None:
    out = _fresh("import serve, app; app.stream_app; serve.config()\n"
                 "from gateway.adapters import openai_compat as oc; print(oc._PLAIN is None)")
    assert out == "True"


def test_the_stream_patterns_built_on_first_use_are_the_plain_delta_patterns() -> None:
    from gateway.adapters import openai_compat as oc

    whole, tail = oc._plain_patterns()
    assert oc._plain_patterns() is oc._PLAIN
    assert (whole.pattern, tail.pattern) == (oc._HEAD + oc._TAIL, oc._TAIL)
    block = ('data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
             '"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}')
    m = whole.fullmatch(block, 6)
    assert m is not None and m["content"] == '"hi"'
    assert tail.fullmatch(block, m.start("content")) is not None
    assert re.compile(oc._TAIL).fullmatch(block, m.start("content")) is not None


def test_the_image_token_rules_are_compiled_by_the_first_image_not_the_import() -> None:
    out = _fresh("import serve, app; app.stream_app; serve.config()\n"
                 "from gateway.adapters import tokens; print(tokens._IMAGE_TOKEN_RULES is None)")
    assert out == "True"
    from gateway.adapters import tokens

    rules = tokens._image_token_rules()
    assert [(p.pattern, n) for p, n in rules] == list(tokens.IMAGE_TOKEN_PATTERNS)
    assert tokens._image_token_rules() is rules
    assert tokens.image_token_max("openai/gpt-4o-mini") == 2_833 + 5_667 * 8
    assert tokens.image_token_max("meta/llama-4") == tokens.DEFAULT_IMAGE_TOKENS
