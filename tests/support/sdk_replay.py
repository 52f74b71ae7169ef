"""The official SDKs reading bytes we produced: an httpx2 ``MockTransport`` (httpx2 is the SDKs' HTTP
library) answers every request of an ``openai``/``anthropic`` client with the given body, so the
SDK's own parsing (and its streaming accumulators) judge our wire format. Nothing of ours is mocked:
the bytes are our real output."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai


def _transport(body: bytes | dict[str, Any], status: int, seen: list[httpx2.Request] | None) -> httpx2.MockTransport:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    content_type = "application/json" if isinstance(body, dict) else "text/event-stream"

    def handler(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        return httpx2.Response(status, content=raw, headers={"content-type": content_type, "request-id": "req_test"})

    return httpx2.MockTransport(handler)


def anthropic_client(body: bytes | dict[str, Any], status: int = 200,
                     seen: list[httpx2.Request] | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-mlp-test", base_url="http://gateway.test", max_retries=0,
                               http_client=httpx2.Client(transport=_transport(body, status, seen)))


def openai_client(body: bytes | dict[str, Any], status: int = 200,
                  seen: list[httpx2.Request] | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-mlp-test", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=_transport(body, status, seen)))


async def collect(stream: AsyncIterable[bytes]) -> bytes:
    return b"".join([piece async for piece in stream])


async def aiter_list(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def sse_json(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """``(event name, data)`` of every SSE event in ``raw``."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        out.append((event, json.loads("\n".join(data))))
    return out


def chat_stream(*deltas: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None,
                chunk_id: str = "chatcmpl-test", model: str = "openai/gpt-4o-mini") -> list[dict[str, Any]]:
    """An internal chat chunk stream: one chunk per delta, the finish chunk, the usage chunk."""
    head = {"id": chunk_id, "object": "chat.completion.chunk", "created": 1, "model": model}
    chunks = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage is not None:
        chunks.append({**head, "choices": [], "usage": usage})
    return chunks


# Two streamed tool calls as the pipeline emits them: the first in pieces, the second in one chunk.
TWO_TOOL_CALLS: list[dict[str, Any]] = [
    {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                                   "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
]
