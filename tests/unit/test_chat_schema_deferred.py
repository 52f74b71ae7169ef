"""``gateway.chat.schema``: only ``ChatRequest``'s validator is built at import; the parts' own
validators are built on first use (``defer_build``, issue 15 spawn4) and validate as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from gateway.chat import schema

ROOT = Path(__file__).resolve().parents[2]
PARTS = sorted((v for v in vars(schema).values() if isinstance(v, type) and issubclass(v, BaseModel)
                and v.__module__ == schema.__name__ and v is not schema.ChatRequest and not v.__name__.startswith("_")),
               key=lambda v: v.__name__)


def test_only_chat_request_is_built_at_import() -> None:
    code = ("import json, gateway.chat.schema as s; from pydantic import BaseModel; print(json.dumps({n: "
            "v.__pydantic_complete__ for n, v in vars(s).items() if isinstance(v, type) and issubclass(v, BaseModel) "
            "and v.__module__ == s.__name__}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT / "layers" / "common"), "PATH": "/usr/bin:/bin"})
    built = json.loads(done.stdout)
    assert built.pop("ChatRequest") is True
    assert len(built) >= 20 and not any(built.values()), built


def test_a_request_validates_through_chat_request_alone() -> None:
    req = schema.ChatRequest.model_validate_json(json.dumps({
        "model": "openai/gpt-4o-mini", "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}))
    assert isinstance(req.messages[0], schema.Message) and isinstance(req.messages[0].content[0], schema.TextPart)
    assert req.tools is not None and isinstance(req.tools[0], schema.Tool)
    with pytest.raises(ValidationError):
        schema.ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [{"type": "x"}]}]})


@pytest.mark.parametrize("part", PARTS, ids=lambda v: v.__name__)
def test_a_part_built_on_first_use_has_the_schema_chat_request_validates_it_with(part: type[BaseModel]) -> None:
    defs = schema.ChatRequest.model_json_schema()["$defs"]
    if part.__name__ not in defs:
        pytest.skip(f"{part.__name__} is not a field type of ChatRequest")
    own = part.model_json_schema(ref_template="#/$defs/{model}")
    own_defs = own.pop("$defs", {})
    assert own == defs[part.__name__]
    assert all(defs[name] == sub for name, sub in own_defs.items())
