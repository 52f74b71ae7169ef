"""The OpenAI chat-completions request, validated strictly (plus OpenRouter's ``models``).

Unknown top-level fields are refused with a clear 400 (as OpenAI does) so a typo never
silently changes behaviour; every parameter of the installed openai SDK's
``CompletionCreateParams`` is accepted (tests/unit/test_chat_schema_parity.py diffs the two), and
the OpenRouter extensions. Accepted is not the same as served: :func:`refusals` names the
parameters that would change what a request costs without a price we can hold and bill
(audio output, web search), which the pipeline answers with a 400 before any hold.
"""

# No ``from __future__ import annotations`` here: with it every field's annotation is a string that
# pydantic evaluates at class creation (a ``compile`` and an ``eval`` each), ~2.4 ms of this module's
# import (issue 15, spawn4). A validator returning its own class names it in quotes instead.

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import BadRequest

MODEL_ID = Annotated[str, Field(min_length=1, max_length=200)]


# The parts of a request are validated inside ``ChatRequest``'s validator, which pydantic builds at
# import with their schemas in it: their own validators and serializers are built on first use
# (``defer_build``; none is used by a chat request) instead of at every cold start (~4 ms).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class _Part(_Strict):
    cache_control: dict[str, Any] | None = None  # Anthropic/OpenRouter prompt-cache hint
    prompt_cache_breakpoint: dict[str, Any] | None = None  # OpenAI explicit prompt-cache breakpoint


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high", "original"] | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str = Field(min_length=1)  # base64
    format: Literal["wav", "mp3"]


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(_Strict):
    file_data: str | None = None  # a base64 data URL
    file_id: str | None = None
    filename: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "FileRef":
        if not self.file_data and not self.file_id:
            raise ValueError("a file part needs `file_data` or `file_id`")
        return self


class FilePart(_Part):
    type: Literal["file"]
    file: FileRef


class RefusalPart(_Part):  # assistant history only
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[TextPart | ImagePart | AudioPart | FilePart | RefusalPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str


class CustomCall(_Strict):
    name: str = Field(min_length=1)
    input: str


class ToolCall(_Strict):
    id: str = Field(min_length=1)
    type: Literal["function", "custom"] = "function"
    function: FunctionCall | None = None
    custom: CustomCall | None = None
    index: int | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> "ToolCall":
        if (self.function is None) == (self.custom is None) or (self.type == "custom") != (self.custom is not None):
            raise ValueError("a tool call carries `function` (type function) or `custom` (type custom)")
        return self


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)  # providers add fields (e.g. "refusal", "reasoning")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_role_fields(self) -> "Message":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role == "function" and not self.name:
            raise ValueError("a function message needs name")
        if self.role in ("system", "developer", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls and not (
                self.model_extra or {}).get("function_call") and not (self.model_extra or {}).get("audio"):
            raise ValueError("an assistant message needs content, tool_calls, function_call or audio")
        return self


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomToolDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    format: dict[str, Any] | None = None  # {"type": "text"} or {"type": "grammar", "grammar": {...}}


class Tool(_Strict):
    type: Literal["function", "custom"]
    function: FunctionDef | None = None
    custom: CustomToolDef | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> "Tool":
        if self.type == "function" and (self.function is None or self.custom is not None):
            raise ValueError("a function tool carries `function`")
        if self.type == "custom" and (self.custom is None or self.function is not None):
            raise ValueError("a custom tool carries `custom`")
        return self


class AllowedTools(_Strict):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]] = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function", "custom", "allowed_tools"]
    function: dict[str, str] | None = None
    custom: dict[str, str] | None = None
    allowed_tools: AllowedTools | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> "NamedToolChoice":
        if getattr(self, self.type) is None:
            raise ValueError(f"a tool_choice of type {self.type} carries `{self.type}`")
        return self


class LegacyFunctionChoice(_Strict):  # the deprecated ``function_call: {"name": ...}``
    name: str = Field(min_length=1)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class Prediction(_Strict):
    type: Literal["content"]
    content: str | list[TextPart]


class AudioOutput(_Strict):
    voice: str | dict[str, Any]
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class Moderation(_Strict):
    model: str
    policy: dict[str, Any] | None = None


class PromptCacheOptions(_Strict):
    mode: Literal["implicit", "explicit"] | None = None
    ttl: str | None = None


class WebSearchOptions(_Strict):
    search_context_size: Literal["low", "medium", "high"] | None = None
    user_location: dict[str, Any] | None = None


class ChatRequest(_Strict):
    model_config = ConfigDict(extra="forbid", defer_build=False)  # built at import: every request needs it

    model: MODEL_ID | None = None
    models: list[MODEL_ID] | None = Field(default=None, max_length=8)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only n=1 is supported")
    user: str | None = Field(default=None, max_length=256)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    functions: list[FunctionDef] | None = Field(default=None, max_length=128)  # deprecated form of tools
    function_call: Literal["none", "auto"] | LegacyFunctionChoice | None = None  # of tool_choice
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    service_tier: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    prediction: Prediction | None = None
    web_search_options: WebSearchOptions | None = None
    moderation: Moderation | None = None
    prompt_cache_key: str | None = Field(default=None, max_length=1024)
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    safety_identifier: str | None = Field(default=None, max_length=256)
    # OpenRouter extras accepted and ignored by direct providers
    transforms: list[str] | None = None
    route: str | None = None
    provider: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ChatRequest":
        if not self.model and not self.models:
            raise ValueError("`model` is required")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("`stop` accepts at most 4 sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("`stream_options` is only allowed when `stream` is true")
        budget = self.reasoning.get("max_tokens") if self.reasoning else None
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
            raise ValueError("`reasoning.max_tokens` must be a non-negative integer")
        if budget is not None and self.output_limit is not None and budget >= self.output_limit:
            # OpenRouter's reasoning budget is output billed on top of the visible answer: inside the
            # output limit (as Anthropic requires of budget_tokens) it is inside the hold; above it
            # the provider could bill more than was held.
            raise ValueError("`reasoning.max_tokens` must be below `max_tokens`: reasoning tokens are "
                             "output tokens and count against the output limit")
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def candidates(self) -> list[str]:
        """The primary model, then the fallbacks in order, without duplicates."""
        out: list[str] = []
        for m in ([self.model] if self.model else []) + list(self.models or []):
            if m not in out:
                out.append(m)
        return out

    def upstream_body(self) -> dict[str, Any]:
        """The request as a plain dict for the adapters (unset fields dropped)."""
        return self.model_dump(exclude_none=True, exclude={"models"})


def check_priced(req: ChatRequest) -> None:
    """Refuse (400, before any hold) the parameters that would make a provider bill something our
    catalogue has no price for, so neither the hold nor the charge could be right:

    * audio output (``modalities`` with ``"audio"``, ``audio``): audio output tokens cost several
      times text tokens and no catalogue price covers them;
    * ``web_search_options``: a per-search fee plus search-context tokens, neither priced;

    and file parts by ``file_id``, which would read a file of the gateway's own provider account.

    Everything else the SDK sends is forwarded (OpenAI-compatible upstreams) or mapped/dropped
    (translating adapters); what changes the bill is priced: ``prediction`` (rejected prediction
    tokens are billed as output) is held at its size on top of the output limit, ``input_audio``
    parts need an audio price (``ModelPrice.audio``), ``prompt_cache_retention``/``prompt_cache_options``
    are billed through the cache prices the hold already counts.
    """
    if req.audio is not None:
        raise BadRequest("Audio output (`audio`) is not supported: it is billed at audio rates this gateway does not "
                         "price. Omit `audio` and use `modalities: [\"text\"]`.", code="unsupported_parameter",
                         param="audio")
    if req.modalities and "audio" in req.modalities:
        raise BadRequest("Audio output (`modalities: [\"audio\"]`) is not supported: it is billed at audio rates this "
                         "gateway does not price. Use `modalities: [\"text\"]`.", code="unsupported_parameter",
                         param="modalities")
    for i, message in enumerate(req.messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else []):
            if isinstance(part, FilePart) and part.file.file_id:
                raise BadRequest("Files by `file_id` are not supported: they would be read from the gateway's own "
                                 "provider account. Send the file as `file_data` (a base64 data URL).",
                                 code="unsupported_parameter", param=f"messages.{i}.content.{j}.file.file_id")
    if req.web_search_options is not None:
        raise BadRequest("`web_search_options` is not supported: web search is billed per search on top of tokens, "
                         "which this gateway does not price. Omit it (or pass search results in the messages).",
                         code="unsupported_parameter", param="web_search_options")
