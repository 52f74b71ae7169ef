"""The OpenAI embeddings request (``POST /v1/embeddings``), its response shape, the input-token upper
bound the hold is computed from (:func:`hold_tokens`) and the realistic estimate billed when a
provider reports no usage (:func:`estimate_input_tokens`). Pure functions; the provider
translations are in ``translate``.

Limits are OpenAI's: at most 2048 inputs per request, no empty string, token-id inputs as lists of
non-negative integers. ``encoding_format`` defaults to ``float`` on the wire (the openai SDK sends
``base64`` unless told otherwise and decodes it: little-endian float32, base64).
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.adapters.tokens import CHARS_PER_TOKEN

MAX_INPUTS = 2048
MAX_TOKEN_ID = 2**31 - 1
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1, max_length=200)]
    input: (Annotated[str, Field(min_length=1)]
            | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_INPUTS)]
            | TokenIds
            | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _no_bools(cls, v: Any) -> Any:
        # JSON true/false would pass as token ids 1/0 otherwise
        if isinstance(v, list) and any(isinstance(x, bool) or (isinstance(x, list) and any(
                isinstance(y, bool) for y in x)) for x in v):
            raise ValueError("input must be a string, a list of strings or token ids")
        return v

    def items(self) -> list[str] | list[list[int]]:
        """The inputs as a list: strings, or token-id lists."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[return-value]

    @property
    def token_ids(self) -> bool:
        items = self.items()
        return bool(items) and not isinstance(items[0], str)

    def upstream_body(self, upstream_model: str, *, encoding_format: str | None = None) -> dict[str, Any]:
        """The body for an OpenAI-compatible embeddings endpoint (OpenAI, OpenRouter, compat)."""
        body: dict[str, Any] = {"model": upstream_model, "input": self.input,
                                "encoding_format": encoding_format or self.encoding_format}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if self.user is not None:
            body["user"] = self.user
        return body


# --------------------------------------------------------------------------------- token estimate
def text_tokens(text: str) -> int:
    """An upper-bound style estimate for one text: 4 ASCII characters per token, every other
    character a token of its own (CJK text is about one token per character)."""
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return math.ceil(ascii_chars / CHARS_PER_TOKEN) + (len(text) - ascii_chars)


def estimate_input_tokens(req: EmbeddingsRequest, *, per_item_cap: int | None = None) -> int:
    """Input tokens to hold for: token-id inputs count exactly, texts by :func:`text_tokens`, each
    item at least 1 and at most ``per_item_cap`` (the model's input limit: a provider refuses or
    truncates a longer item, so it never bills more than that per item)."""
    total = 0
    for item in req.items():
        n = len(item) if isinstance(item, list) else text_tokens(item)
        n = max(n, 1)
        if per_item_cap is not None:
            n = min(n, per_item_cap)
        total += n
    return total


def hold_tokens(req: EmbeddingsRequest, *, per_item_cap: int) -> int:
    """An upper bound of the input tokens a provider can bill, for the hold: a byte-level tokenizer
    never makes more tokens than UTF-8 bytes, so each text counts its byte length (token ids count
    exactly), each item at most ``per_item_cap`` (the model's input limit). :func:`estimate_input_tokens`
    is the realistic count, used to bill when a provider reports none."""
    total = 0
    for item in req.items():
        n = len(item) if isinstance(item, list) else len(item.encode("utf-8"))
        total += min(max(n, 1), per_item_cap)
    return total


# ------------------------------------------------------------------------------------- response
def encode(values: Sequence[float], encoding_format: str) -> list[float] | str:
    """An embedding as the client asked: the floats, or base64 of little-endian float32 (OpenAI's)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return [float(v) for v in values]


def decode(value: list[float] | str) -> list[float]:
    """The inverse of :func:`encode` (a base64 embedding back to floats)."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return [float(v) for v in value]


def embeddings_response(vectors: Sequence[list[float] | str], *, model: str, prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's ``CreateEmbeddingResponse``: ``{"object": "list", "data": [...], "model", "usage"}``."""
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
