"""A relayed OpenAI-compatible stream reads its plain text deltas without the JSON parser (runs of
them as one ``FramedRun``, issue 15 stream3): the bytes sent, the usage, the output count and the
errors are those of the event-by-event path (``SSEUpstreamStream._chunks_of``, the reference here)
for every form of event, however the body is cut into reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.adapters import get_adapter
from gateway.adapters.contract import Target
from gateway.adapters.openai_compat import OpenAIStream
from gateway.adapters.sse import FramedRun
from gateway.adapters.stream import SSEUpstreamStream
from gateway.chat.service import _sse
from gateway.errors import UpstreamError

TARGET = Target("openai", "gpt-4o-mini", "openai/gpt-4o-mini", "https://api.openai.com/v1", "sk-test")
SAME_NAME = Target("openai", "gpt-4o-mini", "gpt-4o-mini", "https://api.openai.com/v1", "sk-test")
BODY: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],
                        "stream": True}


class EventByEvent(OpenAIStream):
    """The stream as it reads every event through the decoder and ``_on_event`` (the reference)."""

    _chunks_of = SSEUpstreamStream._chunks_of  # type: ignore[assignment]


class Body(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


async def relay(pieces: list[bytes], stream_class: type[OpenAIStream], target: Target = TARGET
                ) -> tuple[bytes, Any, int, str | None, int]:
    """(the frames sent, the usage, the output characters counted, the error code, FramedRuns)."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Body(pieces))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        stream = stream_class(get_adapter("openai"), client, target, BODY)  # type: ignore[arg-type]
        stream.runs = True  # as the chat relay sets it
        await stream.open()
        sent, error, runs = b"", None, 0
        try:
            async for chunk in stream:
                sent += _sse(chunk)
                runs += type(chunk) is FramedRun
        except UpstreamError as exc:
            error = exc.code
        await stream.aclose()
    return sent, stream.usage, stream._out_chars, error, runs


def event(delta: dict[str, Any] | None = None, *, openai_form: bool = True, text: str | None = None,
          **fields: Any) -> bytes:
    """One ``data:`` event: OpenAI's compact form (``openai_form``) or the fake upstream's order,
    or ``text`` as it is."""
    if text is not None:
        return b"data: " + text.encode() + b"\n\n"
    choice = {"index": 0, "delta": {"content": "x"} if delta is None else delta, "logprobs": None,
              "finish_reason": None}
    if openai_form:
        obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
               "model": "gpt-4o-mini-2024-07-18", "service_tier": "default", "system_fingerprint": "fp_1",
               "choices": [choice], "usage": None, "obfuscation": "ab"}
    else:
        obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000,
               "model": "gpt-4o-mini", "system_fingerprint": "fp_1", "usage": None, "choices": [choice]}
    obj.update(fields)
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


ROLE = event({"role": "assistant", "content": ""})
FINISH = event({}).replace(b'"finish_reason":null', b'"finish_reason":"stop"')
USAGE = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini",'
         b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14}}\n\n')
DONE = b"data: [DONE]\n\n"

PLAIN = [event({"content": w}) for w in ("Hello", " wor", "ld", "!")]
FAKE_FORM = [event({"content": w}, openai_form=False) for w in ("Hi", " there")]
ESCAPES = [event({"content": c}) for c in ('line\nbreak', 'a "quote"', "back\\slash", "tab\there", "é ü 漢字",
                                           "emoji 😀", "\u2028sep", "slash/")]
ESCAPED_TEXT = [event(text='{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
                           '"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"\\u00e9\\ud83d\\ude00'
                           '\\/\\b\\f\\r"},"logprobs":null,"finish_reason":null}],"usage":null}')]
PARSER_ONLY = [
    event({"content": "spaced"}).replace(b'{"content"', b'{ "content"'),             # whitespace
    event({"content": "twice"}).replace(b',"choices"', b',"usage":null,"choices"'),   # "usage" twice
    event({"content": "no usage"}, usage=None).replace(b',"usage":null', b""),       # (plain too)
    event({"content": "fp null"}, system_fingerprint=None),
    event({"content": "model"}, model="gpt-ü"),                                      # non-ASCII model name
    event({"content": "other model"}, model="gpt-4o"),                               # a new run
    event({"reasoning": "think"}),
    event({"content": "tool", "tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
    event({"content": "extra"}, logprobs=None),                                     # another field
    event({"content": "provider"}, provider="OpenAI"),                               # a field we drop
    event({"content": "groq"}, x_groq={"id": "q"}),
    b'data:{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"no space"},"logprobs":null,"finish_reason":null}]}\n\n',
    b": keep-alive\n\n",
    b"event: message\n" + event({"content": "named"}),
    event({"content": "created 0"}, created=0),
    event({"content": "float"}).replace(b'"created":1700000000', b'"created":1.5'),
]

# Plain deltas of one head (the fake's form: "usage":null before the choices) read after the head of
# an earlier match (``OpenAIStream._plain``): one with "usage" after the choices too (twice: the
# parser's path), then a new id (a new head: matched whole again), then the first head again.
SAME_HEAD = [*FAKE_FORM,
             event({"content": "twice"}, openai_form=False).replace(b'}]}\n\n', b'}],"usage":null}\n\n'),
             FAKE_FORM[0], event({"content": "new id"}, openai_form=False, id="chatcmpl-2"), *FAKE_FORM]


def cuts(body: bytes) -> list[list[bytes]]:
    """The body in one read, event by event, in small pieces, and cut at every 37th byte."""
    events = [e + b"\n\n" for e in body.split(b"\n\n") if e]
    return [[body], events, [body[i:i + 5] for i in range(0, len(body), 5)],
            [body[:i] for i in (37,)] + [body[i:i + 37] for i in range(37, len(body), 37)],
            [body.replace(b"\n", b"\r\n")]]


@pytest.mark.parametrize("middle", [PLAIN, FAKE_FORM, ESCAPES, ESCAPED_TEXT, PARSER_ONLY,
                                    [*PLAIN, *PARSER_ONLY, *PLAIN], [PLAIN[0], *PARSER_ONLY[:6], *ESCAPES], SAME_HEAD],
                         ids=["plain", "fake-form", "escapes", "escaped-text", "parser-only", "mixed", "mixed-2",
                              "same-head"])
@pytest.mark.parametrize("tail", [[FINISH, USAGE, DONE], [FINISH, DONE], [FINISH, DONE, event({"content": "late"})]],
                         ids=["usage", "estimated", "after-done"])
@pytest.mark.parametrize("target", [TARGET, SAME_NAME], ids=["renamed", "same-name"])
async def test_the_same_frames_usage_and_count_as_event_by_event(middle: list[bytes], tail: list[bytes],
                                                                 target: Target) -> None:
    body = b"".join([ROLE, *middle, *tail])
    for pieces in cuts(body):
        ours = await relay(pieces, OpenAIStream, target)
        reference = await relay(pieces, EventByEvent, target)
        assert ours[:4] == reference[:4]
        assert ours[3] is None


@pytest.mark.parametrize("lead", [b": OPENROUTER PROCESSING\n\n", b": a\n\n: b\n\n", b"", b"\n\n"],
                         ids=["comment", "two-comments", "none", "blank"])
async def test_the_first_chunk_of_a_read_after_comments_as_event_by_event(lead: bytes) -> None:
    """The stream's first chunk is read on its own, before the rest of its read is split (events
    before it, comments or blank lines, too): the same frames, usage and count as event by event."""
    body = lead + ROLE + b"".join(PLAIN) + FINISH + USAGE + DONE
    for pieces in cuts(body):
        ours = await relay(pieces, OpenAIStream)
        assert ours[:4] == (await relay(pieces, EventByEvent))[:4] and ours[3] is None
    assert (await relay([body], OpenAIStream))[4] == 1  # the deltas after it still as one run


async def test_runs_are_used_and_decode_to_the_parsers_chunks() -> None:
    body = ROLE + b"".join(PLAIN) + FINISH + USAGE + DONE
    sent, usage, chars, error, runs = await relay([body], OpenAIStream)
    assert error is None and runs == 1 and chars == len("Hello world!")
    frames = sent.split(b"\n\n")
    assert frames.pop() == b""
    chunks = [json.loads(f.removeprefix(b"data: ")) for f in frames]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hello", " wor", "ld", "!", None]
    assert all(c["model"] == "openai/gpt-4o-mini" and "usage" not in c for c in chunks)
    assert usage is not None and usage.reported and usage.completion_tokens == 5


@pytest.mark.parametrize("bad", [
    event(text='{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
               '"delta":{"content":"raw\tcontrol"},"logprobs":null,"finish_reason":null}]}'),
    event(text='{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
               '"delta":{"content":"bad \\x escape"},"logprobs":null,"finish_reason":null}]}'),
    event(text='{"id":"c","object":"chat.completion.chunk","created":01,"model":"m","choices":[{"index":0,'
               '"delta":{"content":"leading zero"},"logprobs":null,"finish_reason":null}]}'),
    b"event: error\n" + event({"content": "an error event"}),
    event({"content": "in-band error"}, error={"message": "boom", "code": 500}),
    event({"content": "oops"}).replace(b'"finish_reason":null', b'"finish_reason":"error"'),
])
async def test_a_malformed_or_error_event_fails_as_event_by_event(bad: bytes) -> None:
    body = ROLE + PLAIN[0] + PLAIN[1] + bad + PLAIN[2] + FINISH + USAGE + DONE
    for pieces in cuts(body)[:3]:
        ours = await relay(pieces, OpenAIStream)
        reference = await relay(pieces, EventByEvent)
        assert ours[0] == reference[0] and ours[3] == reference[3] and ours[3] is not None
        assert ours[0].count(b"data: ") == 3  # the role chunk and the two deltas before it were sent


@pytest.mark.parametrize("finish", [b'"finish_reason":"error"', b'"finish_reason":"stop"',
                                    b'"logprobs":{"content":[]}'])
async def test_an_event_with_the_head_of_a_plain_delta_but_more_is_parsed(finish: bytes) -> None:
    """The head of an earlier plain delta does not make an event plain: its tail decides (a finish
    reason, an error, logprobs go through the parser as event by event)."""
    last = event({"content": "end"}, openai_form=False).replace(
        b'"finish_reason":null' if b"finish" in finish else b'"logprobs":null', finish)
    body = ROLE + FAKE_FORM[0] + FAKE_FORM[1] + last + FINISH + USAGE + DONE
    for pieces in cuts(body)[:3]:
        ours = await relay(pieces, OpenAIStream)
        assert ours[:4] == (await relay(pieces, EventByEvent))[:4]
        assert (ours[3] is not None) == (b"error" in finish)


async def test_invalid_utf8_is_replaced_as_event_by_event() -> None:
    body = ROLE + PLAIN[0] + event({"content": "bad"}).replace(b"bad", b"b\xffd") + PLAIN[1] + FINISH + USAGE + DONE
    for pieces in cuts(body)[:4]:
        ours = await relay(pieces, OpenAIStream)
        assert ours[:4] == (await relay(pieces, EventByEvent))[:4]
        assert "b\ufffdd".encode() in ours[0]


@pytest.mark.parametrize("relay", [True, False], ids=["relay", "buffered"])
async def test_a_consumer_that_does_not_ask_for_runs_gets_dicts(relay: bool) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Body([ROLE + b"".join(PLAIN) + FINISH + USAGE + DONE]))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        stream = get_adapter("openai").stream(client, TARGET, BODY)
        assert stream.runs is False  # the default
        stream.relay = relay
        await stream.open()
        chunks = [c async for c in stream]
    assert [type(c).__name__ for c in chunks] == ["FramedChunk" if relay else "dict"] * 6
