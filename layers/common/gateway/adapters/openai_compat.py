"""OpenAI, OpenRouter and any OpenAI-compatible server (Ollama, vLLM, Groq, Together, …).

The request is forwarded nearly as is (``model`` replaced, ``None`` values and our own routing
fields dropped); responses and chunks get ``model`` = our public id. Streaming always asks for
``stream_options.include_usage`` so the usage arrives in the last chunk; that usage-only chunk is
swallowed into ``.usage`` instead of being yielded.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gateway.adapters.contract import DirectModel, GetJson, Target, Usage
from gateway.adapters.http_client import UpstreamClient, UpstreamRequest, request_json
from gateway.adapters.shapes import THOUGHT_SEP, join_url, new_id, now, plain_call_id, usage_from_openai
from gateway.adapters.sse import FramedChunk, FramedRun, SSEDecoder, SSEEvent
from gateway.adapters.stream import SSEUpstreamStream, TranslatingAdapter, estimated_usage
from gateway.adapters.upstream_errors import bad_response, error_from_event, load_json_event

# Our own request fields, never forwarded: ``models`` is OpenRouter's fallback list (we do our
# own fallback), ``usage`` its deprecated accounting switch.
DROP_ALWAYS = frozenset({"models", "usage"})
# OpenRouter-only request fields that OpenAI and most compat servers reject.
OPENROUTER_ONLY = frozenset({"route", "provider", "transforms", "plugins", "reasoning"})
# Response/chunk fields we do not pass on (OpenRouter's upstream name; its cost accounting).
DROP_FROM_OUTPUT = ("provider",)
# ... and in a chunk, the usage (read into ``.usage``; Groq's under ``x_groq``)
_NOT_IN_CHUNK = (*DROP_FROM_OUTPUT, "usage", "x_groq")
# NOT_STORED: ``store: true`` would keep the customer's prompt and answer among the stored
# completions of OUR provider account (OpenAI's dashboard, evals, distillation), out of the
# customer's reach and out of their account's deletion (docs/surfaces.md): it is sent as false and
# named in x-dropped-params, as the Responses surface never stores either.
# Billing is at the standard (list) price: OpenAI is always asked for its "default" tier (never
# "auto", which follows the project's setting); the gateway refuses other tiers before this.
OPENAI_SERVICE_TIER = "default"

# Nearly every event of an answer is a plain text delta, which OpenAI (and the servers that copy
# its format) write in one compact form. A stream relayed by the chat relay reads such an event without the JSON
# parser (``OpenAIStream._chunks_of``, issue 15 stream3) when this pattern matches its data whole:
# every field is in the pattern, so the match says all that ``_on_event`` would read from the
# event — no error, no usage (``"usage":null`` at most once), one choice without a finish reason,
# a ``content`` string, nothing to drop — and its frame is the text ``_relayed`` would make.
# Strings as the JSON parser takes them (no raw control character, only valid escapes); the
# upstream's model name printable ASCII without quote or backslash (``json.dumps`` writes it as the
# upstream did). Any other event (the role chunk, the finish, the usage, tool calls, reasoning,
# other fields or orders, whitespace) goes through ``_on_event``.
_JSON_STR = r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
# The pattern in two parts: the head, up to the content string (the same text in every plain delta of
# a stream: its id, created, model, fingerprint), and the tail, from the content on. The head's
# parts are each delimited by literal text, so a block that starts with the head of an earlier match
# matches whole exactly when its rest matches the tail (``OpenAIStream._plain``).
_HEAD = (r'\{"id":' + _JSON_STR + r',"object":"chat\.completion\.chunk","created":(?:0|[1-9][0-9]*),'
         r'"model":(?P<model>"[ !#-\[\]-~]*")'
         r'(?:,"service_tier":' + _JSON_STR + r')?'
         r'(?:,"system_fingerprint":(?:' + _JSON_STR + r'|null))?'
         r'(?P<u1>,"usage":null)?'
         r',"choices":\[\{"index":0,"delta":\{"content":')
_TAIL = (r'(?P<content>' + _JSON_STR + r')\},"logprobs":null,"finish_reason":null\}\]'
         r'(?P<u2>,"usage":null)?'
         r'(?:,"obfuscation":' + _JSON_STR + r')?\}')
# Compiled by the first stream that relays runs (``_plain_patterns``), not at every cold start: a cold
# start whose first request is not a stream never needs them (~1.2 ms; issue 15, spawn5).
_PLAIN: tuple[re.Pattern[str], re.Pattern[str]] | None = None  # (_HEAD + _TAIL, _TAIL)


@functools.lru_cache(maxsize=256)
def _model_field(model: str) -> str:
    """``"model":`` and the name as JSON, as the upstream's events and ours write it: per model name,
    not per stream (``json.dumps`` costs a few microseconds on a stream's first chunk)."""
    return f'"model":{json.dumps(model)}'


def _plain_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The plain delta's whole pattern and its tail, compiled once per process."""
    global _PLAIN
    if _PLAIN is None:
        _PLAIN = (re.compile(_HEAD + _TAIL), re.compile(_TAIL))
    return _PLAIN


def _reasoning_within_limit(out: dict[str, Any]) -> None:
    """OpenRouter's ``reasoning.max_tokens`` (a thinking budget, billed as output) kept below the
    output limit sent, which is what the hold counts: the request schema refuses a budget at or
    above the client's own limit; this covers a limit the pipeline clamped to the model's maximum."""
    reasoning = out.get("reasoning")
    limit = out.get("max_completion_tokens") or out.get("max_tokens")
    if isinstance(reasoning, dict) and isinstance(limit, int) and isinstance(reasoning.get("max_tokens"), int) \
            and reasoning["max_tokens"] >= limit:
        out["reasoning"] = {**reasoning, "max_tokens": max(limit - 1, 0)}


class OpenAICompatAdapter(TranslatingAdapter):
    """One OpenAI-compatible provider; its differences are options (set in ``registry``):

    * ``openrouter_fields``: forward OpenRouter's own request fields (``provider``, ``route``...);
    * ``service_tier``: always ask for this tier (OpenAI: ``default``, the list price), else none;
    * ``output_limit_field``: rename the output limit to the field this server knows
      (``max_completion_tokens`` at OpenAI, ``max_tokens`` for Ollama / older vLLM), or keep it;
    * ``lenient_eof``: accept a stream that ends without ``[DONE]`` once a choice has finished;
    * ``extra_headers``: more headers on every call (OpenRouter's app attribution).
    """

    def __init__(self, provider: str, *, openrouter_fields: bool = False, service_tier: str | None = None,
                 output_limit_field: str | None = None, lenient_eof: bool = False,
                 extra_headers: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.provider = provider
        self.openrouter_fields = openrouter_fields
        self.service_tier = service_tier
        self.output_limit_field = output_limit_field
        self.lenient_eof = lenient_eof
        self._extra_headers = extra_headers

    # request ---------------------------------------------------------------------------------
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """What every call carries (completions, model lists): the key and any extra headers."""
        h = {"authorization": f"Bearer {api_key}"} if api_key else {}
        if self._extra_headers is not None:
            h.update(self._extra_headers())
        return h

    def headers(self, target: Target) -> dict[str, str]:
        return {"content-type": "application/json", **self.auth_headers(target.api_key)}

    def build_body(self, target: Target, body: dict[str, Any], *, stream: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in body.items():
            if value is None or key in DROP_ALWAYS:
                continue
            if key in OPENROUTER_ONLY and not self.openrouter_fields:
                continue
            out[key] = value
        out["model"] = target.upstream_model
        if self.service_tier is not None:
            out["service_tier"] = self.service_tier
        else:
            out.pop("service_tier", None)
        if "messages" in out:
            out["messages"] = _plain_call_ids(out["messages"])
        if stream:
            out["stream"] = True
            opts = dict(out.get("stream_options") or {})
            opts["include_usage"] = True
            out["stream_options"] = opts
        else:
            out.pop("stream", None)
            out.pop("stream_options", None)
        if out.get("store"):  # never stored in our provider account (see NOT_STORED)
            out["store"] = False
        _reasoning_within_limit(out)
        if self.output_limit_field == "max_tokens" and "max_completion_tokens" in out and "max_tokens" not in out:
            # Ollama and older vLLM only know max_tokens.
            out["max_tokens"] = out.pop("max_completion_tokens")
        elif self.output_limit_field == "max_completion_tokens" and "max_tokens" in out:
            # max_tokens is deprecated at OpenAI and rejected by reasoning models (o-series, gpt-5).
            limit = out.pop("max_tokens")
            out.setdefault("max_completion_tokens", limit)
        return out

    def dropped(self, body: dict[str, Any]) -> list[str]:
        """Everything is forwarded but OpenRouter's own fields to a server that is not OpenRouter,
        and ``store: true`` (sent as false: see NOT_STORED)."""
        out = ["store"] if body.get("store") else []
        if self.openrouter_fields:
            return out
        return out + [key for key, value in body.items() if key in OPENROUTER_ONLY and value is not None]

    def build_request(self, client: UpstreamClient, target: Target, body: dict[str, Any], *,
                      stream: bool) -> UpstreamRequest:
        return client.build_request(
            "POST", join_url(target.base_url, "chat/completions"),
            content=request_json(self.build_body(target, body, stream=stream)),
            headers=self.headers(target),
        )

    # non-streaming (complete() comes from TranslatingAdapter) ----------------------------------
    def translate_response(self, target: Target, body: dict[str, Any],
                           data: Any) -> tuple[dict[str, Any], Usage]:
        if not isinstance(data, dict):
            raise bad_response(self.provider, "returned an unexpected body")
        if data.get("error") or data.get("object") == "error":
            # OpenRouter reports errors that happen after routing inside a 200 body.
            raise error_from_event(self.provider, data, api_key=target.api_key)
        choices = data.get("choices")
        if not isinstance(choices, list):
            raise bad_response(self.provider, "returned no choices")
        usage = usage_from_openai(data.get("usage"))
        if usage is None and isinstance(data.get("x_groq"), dict):
            usage = usage_from_openai(data["x_groq"].get("usage"))
        if usage is None or (usage.prompt_tokens == 0 and usage.completion_tokens == 0):
            usage = estimated_usage(body, _output_chars(choices), target.public_id)
        out = {k: v for k, v in data.items() if k not in DROP_FROM_OUTPUT}
        if "id" not in out:  # (not setdefault: a uuid4 per answer for nothing)
            out["id"] = new_id()
        out["object"] = "chat.completion"
        if "created" not in out:
            out["created"] = now()
        out["model"] = target.public_id
        out["usage"] = _usage_dict(usage, data.get("usage"))
        return out, usage

    def usage_of(self, data: Any) -> Usage | None:
        return usage_from_openai(data.get("usage")) if isinstance(data, dict) else None

    def stream(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> OpenAIStream:
        return OpenAIStream(self, client, target, body)


class OpenAIStream(SSEUpstreamStream):
    def __init__(self, adapter: OpenAICompatAdapter, client: UpstreamClient, target: Target,
                 body: dict[str, Any]) -> None:
        super().__init__(client, target, body)
        self.provider = adapter.provider
        self._adapter = adapter
        self._finished = False  # saw a finish_reason
        self._model: str | None = None  # the upstream's model name, its "model" field, ours
        self._needle = ""
        self._ours: str | None = None
        self._chunked = False  # a chunk was yielded (the first one always as a dict: the relay reads it)
        # The last plain delta matched whole: its block up to the content string ("data: " and the
        # pattern's head), its model name as written, whether the head holds the "usage":null.
        self._head: str | None = None
        self._head_model = ""
        self._head_usage = False

    def _build_request(self) -> UpstreamRequest:
        return self._adapter.build_request(self._client, self._target, self._body, stream=True)

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:
        data = event.data.strip()
        if not data:
            return []
        if data == "[DONE]":
            self._done = True
            return []
        obj = load_json_event(self.provider, data)
        if not isinstance(obj, dict):
            return []
        if obj.get("error") or obj.get("object") == "error" or event.event == "error":
            raise error_from_event(self.provider, obj, api_key=self._target.api_key)
        usage = obj.get("usage")
        if usage is None:
            groq = obj.get("x_groq")
            if isinstance(groq, dict):
                usage = groq.get("usage")
        if usage is not None:  # (most chunks carry none, or "usage":null)
            parsed = usage_from_openai(usage)
            if parsed is not None:
                self.usage = parsed
                self._final_usage = True
        choices = obj.get("choices")
        if not choices:
            return []  # the usage-only chunk (or a keep-alive object)
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason") == "error":
                failure = {"error": {"message": "generation failed", "code": 502}}
                raise error_from_event(self.provider, failure, api_key=self._target.api_key)
            if choice.get("finish_reason"):
                self._finished = True
            delta = choice.get("delta") or {}
            self._out_chars += len(delta.get("content") or "") + len(delta.get("reasoning") or "")
            for call in delta.get("tool_calls") or []:
                fn = (call or {}).get("function") or {}
                self._out_chars += len(fn.get("name") or "") + len(fn.get("arguments") or "")
        sse = self._relayed(data, obj) if self.relay else None  # a buffered consumer never sends it
        for key in _NOT_IN_CHUNK:  # the parsed event becomes the chunk (it is ours: no copy)
            if key in obj:
                del obj[key]
        obj["object"] = "chat.completion.chunk"
        obj["model"] = self._target.public_id
        return [FramedChunk(obj, sse) if sse is not None else obj]

    def _chunks_of(self, decoder: SSEDecoder, data: bytes) -> Iterator[Any]:
        """A read between events (LF framing, UTF-8) of a stream whose consumer takes runs
        (``runs``: the chat relay): its plain text deltas after the stream's first chunk
        (the plain delta pattern) come as ONE :class:`FramedRun` per run of them —
        the read's own text with the edits of ``_relayed`` — instead of a dict and a frame each;
        the other events go through the decoder and ``_on_event`` in their place. Same frames,
        same usage and output count as event by event."""
        if not self.runs or not decoder.idle or b"\r" in data:
            yield from self._counted(super()._chunks_of(decoder, data))
            return
        while not self._chunked:  # the stream's first chunk: out before the rest of its read is split
            end = data.find(b"\n\n") + 2
            if end < 2:
                break
            yield from self._counted(super()._chunks_of(decoder, data[:end]))
            if self._done:
                return
            data = data[end:]
        try:
            text = data.decode()
        except UnicodeDecodeError:  # the decoder's replacement characters: event by event
            yield from self._counted(super()._chunks_of(decoder, data))
            return
        whole, tail = _plain_patterns()
        blocks = text.split("\n\n")
        rest = blocks.pop()  # after the last blank line: the start of an event still to come
        run: list[str] = []
        run_model = ""
        for block in blocks:
            content = self._plain(block, whole, tail) if self._chunked else None
            if content is not None:
                model = self._head_model
                if run and model != run_model:
                    yield self._run(run, run_model)
                    run = []
                run_model = model
                run.append(block)
                self._out_chars += len(content) - 2 if "\\" not in content else len(json.loads(content))
                continue
            if run:
                yield self._run(run, run_model)
                run = []
            yield from self._counted(super()._chunks_of(decoder, (block + "\n\n").encode()))
            if self._done:
                return
        if run:
            yield self._run(run, run_model)
        if rest:
            decoder.feed(rest.encode())  # no blank line in it: no event, the decoder keeps it

    def _plain(self, block: str, whole: re.Pattern[str], tail: re.Pattern[str]) -> str | None:
        """The content string (JSON, quotes included) of a block that is a plain delta
        (the plain delta pattern whole, or only its tail after the head of the last match), else
        None; "usage" twice is not plain (the parser's path decides)."""
        head = self._head
        if head is not None and block.startswith(head):
            m = tail.fullmatch(block, len(head))
            if m is None or (self._head_usage and m["u2"] is not None):
                return None
            return m["content"]  # type: ignore[no-any-return]
        if block[:6] != "data: ":
            return None
        m = whole.fullmatch(block, 6)
        if m is None or (m["u1"] is not None and m["u2"] is not None):
            return None
        self._head = block[:m.start("content")]
        self._head_model = m["model"]
        self._head_usage = m["u1"] is not None
        return m["content"]  # type: ignore[no-any-return]

    def _counted(self, chunks: Iterator[Any]) -> Iterator[Any]:
        for chunk in chunks:
            self._chunked = True
            yield chunk

    def _run(self, blocks: list[str], model: str) -> FramedRun:
        """The frames of consecutive plain deltas (``data: {...}`` each, the upstream's model name
        ``model``): their text with every ``"usage":null`` cut (one at most per event) and our
        model name in place of the upstream's (once per event), as ``_relayed`` edits each."""
        text = "\n\n".join(blocks) + "\n\n"
        if ',"usage":null' in text:
            text = text.replace(',"usage":null', "")
        if model[1:-1] != self._target.public_id:
            if self._ours is None:
                self._ours = _model_field(self._target.public_id)
            text = text.replace('"model":' + model, self._ours)
        return FramedRun(text.encode())

    def _relayed(self, data: str, obj: dict[str, Any]) -> bytes | None:
        """The upstream's own event as our ``data:`` frame, when it differs from the chunk above
        only by the model name and a ``"usage":null`` (OpenAI's form, compact JSON): those are
        edited in the text, so the chunk is not serialised again. None otherwise (the relay then
        serialises the chunk)."""
        model = obj.get("model")
        if (obj.get("object") != "chat.completion.chunk" or not isinstance(model, str) or "\n" in data
                or "x_groq" in obj or any(k in obj for k in DROP_FROM_OUTPUT)):
            return None
        if "usage" in obj:
            if obj["usage"] is not None or data.count(',"usage":null') != 1:
                return None
            data = data.replace(',"usage":null', "", 1)
        if model != self._model:  # the upstream names one model per stream: built once
            self._model, self._needle = model, _model_field(model)
        needle = self._needle
        if data.count(needle) != 1:
            return None
        if model != self._target.public_id:
            if self._ours is None:
                self._ours = _model_field(self._target.public_id)
            data = data.replace(needle, self._ours, 1)
        return b"data: " + data.encode() + b"\n\n"

    def _on_eof(self) -> None:
        # Some compat servers (older Ollama/llama.cpp builds) end the body without "[DONE]".
        # Accept that only when the generation visibly finished.
        if self._adapter.lenient_eof and self._finished:
            self._done = True


# --------------------------------------------------------------------------------------------


def _signed(call_id: Any) -> bool:
    return isinstance(call_id, str) and THOUGHT_SEP in call_id


def _has_signature(msg: Any) -> bool:
    if not isinstance(msg, dict):
        return False
    return _signed(msg.get("tool_call_id")) or any(
        isinstance(c, dict) and _signed(c.get("id")) for c in msg.get("tool_calls") or ())


def _plain_call_ids(messages: Any) -> Any:
    """Strip Gemini thought signatures from tool-call ids (only copies when there is one)."""
    if not isinstance(messages, list) or not any(_has_signature(m) for m in messages):
        return messages
    out = []
    for msg in messages:
        if isinstance(msg, dict) and (msg.get("tool_calls") or msg.get("tool_call_id")):
            msg = dict(msg)
            if msg.get("tool_call_id"):
                msg["tool_call_id"] = plain_call_id(msg["tool_call_id"])
            if isinstance(msg.get("tool_calls"), list):
                msg["tool_calls"] = [{**c, "id": plain_call_id(c.get("id"))} if isinstance(c, dict) else c
                                     for c in msg["tool_calls"]]
        out.append(msg)
    return out


def _output_chars(choices: list[Any]) -> int:
    chars = 0
    for choice in choices:
        msg = (choice or {}).get("message") or {}
        content = msg.get("content")
        chars += len(content) if isinstance(content, str) else 0
        for call in msg.get("tool_calls") or []:
            fn = (call or {}).get("function") or {}
            chars += len(fn.get("name") or "") + len(fn.get("arguments") or "")
    return chars


def _usage_dict(usage: Usage, raw: Any) -> dict[str, Any]:
    out = usage.as_openai()
    if isinstance(raw, dict) and isinstance(raw.get("completion_tokens_details"), dict):
        out["completion_tokens_details"] = raw["completion_tokens_details"]
    return out


# --------------------------------------------------------------------------------------------
# Model list (``GET {base_url}/models``): which catalogue models we can route here directly
# --------------------------------------------------------------------------------------------
_OPENAI_CHAT_PREFIXES = ("gpt-", "o1", "o3", "o4", "chatgpt-")
_OPENAI_NON_CHAT = ("embedding", "audio", "realtime", "transcribe", "tts", "image", "search", "moderation",
                    "dall-e", "whisper", "instruct")


def openai_chat_model(name: str) -> bool:
    lowered = name.lower()
    return lowered.startswith(_OPENAI_CHAT_PREFIXES) and not any(bad in lowered for bad in _OPENAI_NON_CHAT)


def parse_openai_models(payload: Any) -> list[DirectModel]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("OpenAI /models: expected {\"data\": [...]}")
    return [DirectModel("openai", m["id"]) for m in payload["data"]
            if isinstance(m, dict) and isinstance(m.get("id"), str) and openai_chat_model(m["id"])]


async def list_openai_models(get: GetJson, base_url: str, headers: Mapping[str, str]) -> tuple[list[DirectModel], int]:
    """(chat models OpenAI lists for our key, how many entries it listed)."""
    payload = await get(join_url(base_url, "models"), headers, None)
    return parse_openai_models(payload), len(payload.get("data") or [])
