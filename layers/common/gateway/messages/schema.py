"""The Anthropic Messages request (``POST /v1/messages``) and ``count_tokens`` request, validated.

Top-level fields are strict (an unknown one is a 400, as Anthropic answers "Extra inputs are not
permitted"), so a typo or a new price-changing option never slips through unnoticed. Content blocks
keep the fields Anthropic adds over time (``extra="allow"``): the known ones are typed, the rest
travel unchanged on the native path and are ignored by the translation. Block types this module
does not know (``server_tool_use``, ``web_search_tool_result``, ``search_result``, …) are kept as
:class:`OtherBlock` so the native path can forward them; the translation refuses or maps them.

Field list as of the anthropic SDK 2.x ``MessageCreateParams`` plus the sampling parameters older
clients still send (``temperature``, ``top_p``, ``top_k``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from gateway.translation import OpenModel, StrictModel

MODEL_ID = Annotated[str, Field(min_length=1, max_length=200)]
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


class CacheControl(StrictModel):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


# ------------------------------------------------------------------------------------ sources
class Base64Source(StrictModel):
    type: Literal["base64"]
    media_type: str = Field(min_length=1, max_length=100)
    data: str = Field(min_length=1)


class URLSource(StrictModel):
    type: Literal["url"]
    url: str = Field(min_length=1, max_length=8192)


class FileSource(StrictModel):
    type: Literal["file"]
    file_id: str = Field(min_length=1)


class TextSource(StrictModel):
    type: Literal["text"]
    media_type: Literal["text/plain"] = "text/plain"
    data: str


class ContentSource(StrictModel):
    type: Literal["content"]
    content: str | list[dict[str, Any]]


# ------------------------------------------------------------------------------------- blocks
class TextBlock(OpenModel):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ImageBlock(OpenModel):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource | FileSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None

    @model_validator(mode="after")
    def _media(self) -> ImageBlock:
        if isinstance(self.source, Base64Source) and self.source.media_type not in IMAGE_MEDIA_TYPES:
            raise ValueError(f"image media_type must be one of {', '.join(IMAGE_MEDIA_TYPES)}")
        return self


class DocumentBlock(OpenModel):
    type: Literal["document"]
    source: Annotated[Base64Source | URLSource | FileSource | TextSource | ContentSource,
                      Field(discriminator="type")]
    cache_control: CacheControl | None = None
    title: str | None = None
    context: str | None = None


class ToolUseBlock(OpenModel):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=256)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class OtherBlock(OpenModel):
    """A block type this module does not model (server tool blocks, search results, …)."""

    type: str = Field(min_length=1, max_length=100)
    cache_control: CacheControl | None = None


def _block_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _KNOWN_BLOCKS else "other"


ToolResultContent = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")] | Annotated[OtherBlock, Tag("other")],
    Discriminator(lambda v: _block_tag(v) if _block_tag(v) in ("text", "image", "document") else "other"),
]


class ToolResultBlock(OpenModel):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(OpenModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(OpenModel):
    type: Literal["redacted_thinking"]
    data: str


_KNOWN_BLOCKS = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")

ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")] | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")] | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")] | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_tag),
]


class Message(StrictModel):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# -------------------------------------------------------------------------------------- tools
class Tool(OpenModel):
    """A custom tool (``type`` absent or ``"custom"``, with ``input_schema``) or an Anthropic-defined
    one (``type`` like ``bash_20250124`` or ``web_search_20250305``, its own parameters)."""

    name: str = Field(min_length=1, max_length=128)
    type: str | None = Field(default=None, max_length=100)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    cache_control: CacheControl | None = None
    strict: bool | None = None

    @property
    def is_custom(self) -> bool:
        return self.type in (None, "custom")

    @model_validator(mode="after")
    def _schema(self) -> Tool:
        if self.is_custom and self.input_schema is None:
            raise ValueError(f"tool `{self.name}` needs an input_schema")
        return self


class ToolChoice(StrictModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("tool_choice of type `tool` needs a name")
        return self


class Thinking(StrictModel):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(default=None, ge=1)
    display: Literal["summarized", "omitted"] | None = None

    @model_validator(mode="after")
    def _budget(self) -> Thinking:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking of type `enabled` needs budget_tokens")
        return self


class OutputFormat(StrictModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(StrictModel):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(StrictModel):
    user_id: str | None = Field(default=None, max_length=256)


# ------------------------------------------------------------------------------------ requests
class _Common(StrictModel):
    """Fields shared by ``/v1/messages`` and ``/v1/messages/count_tokens``."""

    model: MODEL_ID
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl | None = None  # automatic caching: the last cacheable block
    output_config: OutputConfig | None = None
    speed: Literal["standard", "fast"] | None = None
    context_management: dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None

    @model_validator(mode="after")
    def _tools_unique(self) -> _Common:
        names = [t.name for t in self.tools or []]
        if len(names) != len(set(names)):
            raise ValueError("tool names must be unique")
        return self


class MessagesRequest(_Common):
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    inference_geo: str | None = Field(default=None, max_length=64)
    container: str | dict[str, Any] | None = None
    diagnostics: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _thinking_budget(self) -> MessagesRequest:
        t = self.thinking
        if t is not None and t.type == "enabled" and t.budget_tokens is not None and t.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self


class CountTokensRequest(_Common):
    """``POST /v1/messages/count_tokens``: the prompt part of a Messages request."""
