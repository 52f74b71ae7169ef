"""The OpenAI Responses request (``POST /v1/responses``), validated.

Top-level fields are strict (an unknown one is a 400) and cover every parameter of the installed
openai SDK's ``ResponseCreateParams`` so a current client is never refused for its shape; what the
gateway does not implement is refused or dropped by ``translate`` with a clear message, not here.
Input items and content parts keep fields OpenAI adds (``extra="allow"``); item types this module
does not model arrive as :class:`OtherItem` and are refused by the translation by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from gateway.translation import OpenModel, StrictModel

MODEL_ID = Annotated[str, Field(min_length=1, max_length=200)]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


# ---------------------------------------------------------------------------------- content parts
class InputText(OpenModel):
    type: Literal["input_text"]
    text: str


class InputImage(OpenModel):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None


class InputFile(OpenModel):
    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class OutputText(OpenModel):
    """Assistant text in the history (an earlier response's ``output_text``)."""

    type: Literal["output_text"]
    text: str


class OutputRefusal(OpenModel):
    type: Literal["refusal"]
    refusal: str


class OtherPart(OpenModel):
    type: str


_PARTS = ("input_text", "input_image", "input_file", "output_text", "refusal")


def _part_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _PARTS else "other"


ContentPart = Annotated[
    Annotated[InputText, Tag("input_text")] | Annotated[InputImage, Tag("input_image")]
    | Annotated[InputFile, Tag("input_file")] | Annotated[OutputText, Tag("output_text")]
    | Annotated[OutputRefusal, Tag("refusal")] | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_tag),
]


# ------------------------------------------------------------------------------------ input items
class MessageItem(OpenModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(OpenModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class FunctionCallOutputItem(OpenModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[ContentPart]


class ReasoningItem(OpenModel):
    type: Literal["reasoning"]


class OtherItem(OpenModel):
    """``item_reference``, hosted tool calls and their outputs, MCP items, …"""

    type: str


_ITEMS = ("message", "function_call", "function_call_output", "reasoning")


def _item_tag(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type") or ("message" if "role" in value else None)
    else:
        kind = getattr(value, "type", None)
    return kind if kind in _ITEMS else "other"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")] | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_tag),
]


# ------------------------------------------------------------------------------------------ tools
class FunctionTool(OpenModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(OpenModel):
    """A built-in or hosted tool (``web_search``, ``file_search``, ``code_interpreter``, ``mcp``, …)."""

    type: str


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    Discriminator(lambda v: "function" if (v.get("type") if isinstance(v, dict) else getattr(v, "type", None))
                  == "function" else "other"),
]


class ToolChoiceFunction(StrictModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


class ToolChoiceAllowed(StrictModel):
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class ToolChoiceOther(OpenModel):
    type: str


ToolChoice = Annotated[
    Annotated[ToolChoiceFunction, Tag("function")] | Annotated[ToolChoiceAllowed, Tag("allowed_tools")]
    | Annotated[ToolChoiceOther, Tag("other")],
    Discriminator(lambda v: (t if (t := (v.get("type") if isinstance(v, dict) else getattr(v, "type", None)))
                             in ("function", "allowed_tools") else "other")),
]


# ---------------------------------------------------------------------------- text and reasoning
class FormatText(StrictModel):
    type: Literal["text"]


class FormatJSONObject(StrictModel):
    type: Literal["json_object"]


class FormatJSONSchema(StrictModel):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(StrictModel):
    format: Annotated[FormatText | FormatJSONObject | FormatJSONSchema, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(StrictModel):
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None
    mode: str | None = None


class StreamOptions(StrictModel):
    include_obfuscation: bool | None = None


# ---------------------------------------------------------------------------------------- request
class ResponsesRequest(StrictModel):
    model: MODEL_ID
    input: Annotated[str, Field(min_length=1)] | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=128)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    store: bool | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Accepted so the request parses; the translation refuses or drops each (translate.py says which).
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    background_options: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    context_management: list[dict[str, Any]] | None = None
    moderation: dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    access_programs: dict[str, Any] | None = None
    prompt_cache_options: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            if len(v) > 16:
                raise ValueError("metadata holds at most 16 pairs")
            if any(len(k) > 64 or len(val) > 512 for k, val in v.items()):
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return v
