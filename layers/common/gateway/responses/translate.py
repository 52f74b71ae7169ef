"""The OpenAI Responses API (``POST /v1/responses``, stateless) on top of the internal chat pipeline.

Interface for the route (``gateway/responses/routes.py``, to be wired)::

    req = ResponsesRequest.model_validate_json(body)        # 400 in the OpenAI error shape, as chat
    t = to_chat(req)                                         # t.body: internal chat body; 400 on refusals
    headers = response_headers(t)                            # x-response-stored: false (+ x-dropped-params)
    non-stream: completion, usage = pipeline(t.body)  →  to_response(completion, req, usage=usage)
    stream:     to_events(chat_chunks(pipeline_bytes), req, model=..., final_usage=lambda: upstream.usage)

The translation serves every provider but OpenAI itself (``native.py`` passes OpenAI's own format
through), and an OpenAI model reached through OpenRouter; reasoning items cannot round-trip, see
below.

**Storage.** The API's ``store`` defaults to true and the official SDK sends ``store`` only when
set. We never store a response: ``store`` (any value) is accepted, not forwarded (a chat
``store: true`` would keep the completion in *our* provider account), answered with
``x-response-stored: false`` and echoed as ``"store": false`` in the Response object. Anything that
needs stored state is refused with a 400 that says so: ``previous_response_id``, ``conversation``,
``background: true``, ``prompt`` (stored prompt templates), ``item_reference`` input items.

Mapped: ``input`` (a string → one user message; items: messages with ``input_text`` /
``input_image`` (URL or data URL, ``detail``) / ``input_file`` (``file_data`` → a chat ``file``
part) parts, assistant messages with ``output_text``/``refusal`` parts, ``function_call`` →
assistant ``tool_calls`` (consecutive calls merge into one assistant turn), ``function_call_output``
→ ``tool`` messages; images in an output follow in a user message); ``instructions`` → a leading
system message; function ``tools``; ``tool_choice`` (none/auto/required, a named function,
``allowed_tools`` → the tool list narrowed to those names with mode auto/required);
``text.format`` json_object/json_schema → ``response_format``; ``text.verbosity`` → ``verbosity``;
``reasoning.effort`` → ``reasoning_effort``; ``max_output_tokens`` → ``max_completion_tokens``;
``temperature``, ``top_p``, ``parallel_tool_calls``, ``user``, ``safety_identifier``,
``prompt_cache_key``, ``prompt_cache_retention``, ``service_tier`` unchanged; ``stream`` → ``stream``
+ ``stream_options.include_usage``. ``metadata`` is echoed in the Response, not forwarded.

Refused (400): built-in and hosted tools (``web_search``, ``file_search``, ``code_interpreter``,
``computer_use_preview``, ``image_generation``, ``mcp``, ``shell``, ``custom`` …) and tool choices
naming them, ``file_id`` images/files (they would read *our* provider account's files),
``file_url`` files, input item types other than messages and function calls/outputs.

Dropped (named in ``x-dropped-params``): ``reasoning`` input items (encrypted reasoning cannot be
replayed through chat; the model simply reasons afresh), ``reasoning.summary`` /
``generate_summary`` / ``context`` / ``mode``, ``include``, ``top_logprobs``, ``truncation: auto``,
``max_tool_calls``, ``context_management``, ``moderation``, ``image``, ``access_programs``,
``prompt_cache_options``, ``background_options``, ``prompt_cache_breakpoint`` on parts.

Output: reasoning text a provider returns (OpenRouter ``reasoning``, ``reasoning_content``) becomes a
``reasoning`` item with a summary; text and refusals a ``message``; tool calls ``function_call`` items
(``call_id`` = the chat tool-call id). ``finish_reason: length`` → ``status: incomplete`` with
``incomplete_details.reason: max_output_tokens`` (``content_filter`` likewise). Usage:
``input_tokens`` (cached included) with ``input_tokens_details.cached_tokens``, ``output_tokens`` with
``output_tokens_details.reasoning_tokens``, ``total_tokens``. A stream emits the typed events with a
``sequence_number`` from 0: ``response.created``, ``response.in_progress``, per item
``response.output_item.added`` → content events → ``response.output_item.done``, then
``response.completed`` / ``response.incomplete``; an error mid-stream ends it with ``response.failed``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from gateway.adapters.contract import Usage
from gateway.errors import BadRequest, GatewayError
from gateway.translation import (
    ChunkFolder,
    Translation,
    first_choice,
    message_reasoning,
    new_id,
    reasoning_tokens,
    sse_event,
    usage_numbers,
)

from .schema import (
    FormatJSONObject,
    FormatJSONSchema,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputFile,
    InputImage,
    InputText,
    MessageItem,
    OutputRefusal,
    OutputText,
    ReasoningItem,
    ResponsesRequest,
    ToolChoiceAllowed,
    ToolChoiceFunction,
)

STORED_HEADER = "x-response-stored"
STATEFUL = {
    "previous_response_id": "previous_response_id needs stored responses",
    "conversation": "conversations need stored responses",
    "prompt": "stored prompt templates are not available",
}
DROPPED_IF_SET = ("top_logprobs", "max_tool_calls", "context_management", "moderation", "image", "access_programs",
                  "prompt_cache_options", "background_options")
FORWARDED_AS_IS = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier", "prompt_cache_key",
                   "prompt_cache_retention", "service_tier")
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_headers(t: Translation) -> dict[str, str]:
    return {STORED_HEADER: "false", **t.headers()}


# =============================================================================== request → chat
def to_chat(req: ResponsesRequest) -> Translation:
    t = Translation(body={})
    refuse_stateful(req)
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for i, item in enumerate(req.input):
            _add_item(messages, item, f"input.{i}", t)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    _tools(req, body, t)
    _text(req, body)
    if req.reasoning is not None:
        if req.reasoning.effort is not None:
            body["reasoning_effort"] = req.reasoning.effort
        for name in ("summary", "generate_summary", "context", "mode"):
            if getattr(req.reasoning, name) is not None:
                t.drop(f"reasoning.{name}")
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    for name in FORWARDED_AS_IS:
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    for name in DROPPED_IF_SET:
        if getattr(req, name) is not None:
            t.drop(name)
    if req.include:
        t.drop("include")
    if req.truncation == "auto":
        t.drop("truncation")
    t.body = body
    return t


def refuse_stateful(req: ResponsesRequest) -> None:
    for name, why in STATEFUL.items():
        if getattr(req, name) is not None:
            raise BadRequest(f"`{name}` is not supported: this gateway does not store responses ({why}); send the "
                             f"whole conversation in `input`.", param=name, code="unsupported_parameter")
    if req.background:
        raise BadRequest("`background: true` is not supported: this gateway does not store responses.",
                         param="background", code="unsupported_parameter")


def _add_item(messages: list[dict[str, Any]], item: Any, at: str, t: Translation) -> None:
    if isinstance(item, MessageItem):
        _add_message(messages, item, at, t)
    elif isinstance(item, FunctionCallItem):
        call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif isinstance(item, FunctionCallOutputItem):
        _add_tool_output(messages, item, at, t)
    elif isinstance(item, ReasoningItem):
        t.drop("reasoning items")
    elif item.type == "item_reference":
        raise BadRequest("`item_reference` input items need stored responses, which this gateway does not keep; "
                         "send the items themselves.", param=at, code="unsupported_parameter")
    else:
        raise BadRequest(f"Input items of type `{item.type}` are not supported; only messages, function_call and "
                         f"function_call_output items.", param=at, code="unsupported_parameter")


def _add_message(messages: list[dict[str, Any]], item: MessageItem, at: str, t: Translation) -> None:
    if isinstance(item.content, str):
        messages.append({"role": item.role, "content": item.content})
        return
    parts = [_part(p, f"{at}.content.{j}", t) for j, p in enumerate(item.content)]
    if item.role == "assistant":
        if any(p["type"] != "text" for p in parts):
            raise BadRequest("Assistant messages can only carry text.", param=f"{at}.content")
        messages.append({"role": "assistant", "content": "".join(p["text"] for p in parts)})
    else:
        messages.append({"role": item.role, "content": parts})


def _part(part: Any, at: str, t: Translation) -> dict[str, Any]:
    if getattr(part, "prompt_cache_breakpoint", None) is not None:
        t.drop("prompt_cache_breakpoint")
    if isinstance(part, InputText | OutputText):
        return {"type": "text", "text": part.text}
    if isinstance(part, OutputRefusal):
        return {"type": "text", "text": part.refusal}
    if isinstance(part, InputImage):
        if not part.image_url:
            raise BadRequest("Images by file_id are not supported; send image_url (an http(s) or data URL).",
                             param=at, code="unsupported_parameter")
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, InputFile):
        if not part.file_data:
            raise BadRequest("Files by file_id or file_url are not supported; send file_data (a base64 data URL).",
                             param=at, code="unsupported_parameter")
        file = {"file_data": part.file_data}
        if part.filename:
            file["filename"] = part.filename
        return {"type": "file", "file": file}
    raise BadRequest(f"Content parts of type `{part.type}` are not supported.", param=at,
                     code="unsupported_parameter")


def _add_tool_output(messages: list[dict[str, Any]], item: FunctionCallOutputItem, at: str, t: Translation) -> None:
    if isinstance(item.output, str):
        messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        return
    parts = [_part(p, f"{at}.output.{j}", t) for j, p in enumerate(item.output)]
    texts = [p for p in parts if p["type"] == "text"]
    media = [p for p in parts if p["type"] != "text"]
    messages.append({"role": "tool", "tool_call_id": item.call_id, "content": texts or ""})
    if media:  # most providers take no images in a tool message: they follow as the user's
        messages.append({"role": "user", "content": media})


def _tools(req: ResponsesRequest, body: dict[str, Any], t: Translation) -> None:
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(req.tools or []):
        if not isinstance(tool, FunctionTool):
            raise BadRequest(f"The built-in tool `{tool.type}` is not supported; only function tools.",
                             param=f"tools.{i}", code="unsupported_tool")
        fn: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            fn["description"] = tool.description
        if tool.parameters is not None:
            fn["parameters"] = tool.parameters
        if tool.strict is not None:
            fn["strict"] = tool.strict
        tools.append({"type": "function", "function": fn})
    choice = req.tool_choice
    if isinstance(choice, ToolChoiceAllowed):
        allowed = set()
        for entry in choice.tools:
            if entry.get("type") != "function" or not entry.get("name"):
                raise BadRequest("allowed_tools may only name function tools.", param="tool_choice",
                                 code="unsupported_tool")
            allowed.add(entry["name"])
        tools = [tool for tool in tools if tool["function"]["name"] in allowed]
        if not tools:
            raise BadRequest("allowed_tools names no tool of `tools`.", param="tool_choice")
        body["tools"] = tools
        body["tool_choice"] = choice.mode
        return
    if tools:
        body["tools"] = tools
    if choice is None:
        return
    if not tools:
        t.drop("tool_choice")
    elif isinstance(choice, str):
        body["tool_choice"] = choice
    elif isinstance(choice, ToolChoiceFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        raise BadRequest(f"tool_choice of type `{choice.type}` is not supported; only function tools.",
                         param="tool_choice", code="unsupported_tool")


def _text(req: ResponsesRequest, body: dict[str, Any]) -> None:
    if req.text is None:
        return
    fmt = req.text.format
    if isinstance(fmt, FormatJSONObject):
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, FormatJSONSchema):
        spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.description is not None:
            spec["description"] = fmt.description
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    if req.text.verbosity is not None:
        body["verbosity"] = req.text.verbosity


# =============================================================================== chat → Response
def responses_usage(usage: Any, reasoning: int = 0) -> dict[str, Any]:
    prompt, completion, cached, cache_write, _ = usage_numbers(usage)
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": cache_write},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def build_response(req: ResponsesRequest, *, response_id: str, created_at: int, model: str,
                   output: list[dict[str, Any]], status: str, finish_reason: str | None = None,
                   usage: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Response object, echoing the request's parameters as OpenAI does."""
    incomplete = INCOMPLETE_REASONS.get(finish_reason or "") if status == "incomplete" else None
    reasoning = req.reasoning
    text = {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)
            if req.text is not None and req.text.format is not None else {"type": "text"},
            "verbosity": (req.text.verbosity if req.text is not None else None) or "medium"}
    choice = req.tool_choice
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": error, "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls, "model": model, "output": output,
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": None, "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {"effort": reasoning.effort if reasoning else None,
                      "summary": reasoning.summary if reasoning else None},
        "safety_identifier": req.safety_identifier, "service_tier": req.service_tier or "default", "store": False,
        "temperature": req.temperature if req.temperature is not None else 1.0, "text": text,
        "tool_choice": choice if isinstance(choice, str) else
        (choice.model_dump(exclude_none=True) if choice is not None else "auto"),
        "tools": [_echo_tool(tool) for tool in req.tools or [] if isinstance(tool, FunctionTool)],
        "top_logprobs": req.top_logprobs or 0, "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": req.truncation or "disabled", "usage": usage, "user": req.user,
        "metadata": req.metadata or {},
        "completed_at": int(time.time()) if status == "completed" else None,
    }


def _echo_tool(tool: FunctionTool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description, "parameters": tool.parameters,
            "strict": tool.strict if tool.strict is not None else True}


def to_response(completion: dict[str, Any], req: ResponsesRequest, *, usage: Usage | None = None,
                response_id: str | None = None, created_at: int | None = None,
                model: str | None = None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as a Response object. ``usage`` (the pipeline's) wins over the
    completion's usage dict; reasoning tokens come from the latter's details."""
    choice = first_choice(completion)
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    status = "incomplete" if finish in INCOMPLETE_REASONS else "completed"
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    reasoning = message_reasoning(message)
    if reasoning:
        output.append(_reasoning_item(new_id("rs_"), reasoning))
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    parts: list[dict[str, Any]] = []
    if text or (not message.get("tool_calls") and not message.get("refusal")):
        parts.append(_text_part(text or ""))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": str(message["refusal"])})
    if parts:
        output.append(_message_item(new_id("msg_"), parts, item_status))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        output.append(_function_item(new_id("fc_"), call.get("id") or new_id("call_"), fn.get("name") or "",
                                     fn.get("arguments") or "", "completed"))
    raw_usage = completion.get("usage")
    return build_response(req, response_id=response_id or new_id("resp_"),
                          created_at=created_at or int(completion.get("created") or time.time()),
                          model=model or completion.get("model") or req.model, output=output, status=status,
                          finish_reason=finish,
                          usage=responses_usage(usage if usage is not None else raw_usage, reasoning_tokens(raw_usage)))


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": parts}


def _function_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def _reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]}


# =============================================================================== chunks → events
async def to_events(chunks: AsyncIterable[dict[str, Any]], req: ResponsesRequest, *, model: str,
                    response_id: str | None = None, created_at: int | None = None,
                    final_usage: Callable[[], Usage | None] | None = None) -> AsyncIterator[bytes]:
    """The internal chunk stream as Responses SSE events (module docstring). ``final_usage()``, when
    given, is read after the iterator ended and wins over the stream's usage chunk."""
    s = _StreamState(req, model, response_id or new_id("resp_"), created_at or int(time.time()))
    yield s.event("response.created", response=s.snapshot("in_progress"))
    yield s.event("response.in_progress", response=s.snapshot("in_progress"))
    try:
        async for chunk in chunks:
            if chunk.get("error"):
                for frame in s.fail(chunk["error"]):
                    yield frame
                return
            for frame in s.on_chunk(chunk):
                yield frame
    except GatewayError as err:
        for frame in s.fail({"message": err.message, "code": err.code, "status": err.status}):
            yield frame
        return
    for frame in s.close_item("completed"):
        yield frame
    usage: Any = final_usage() if final_usage is not None else None
    status = "incomplete" if s.finish in INCOMPLETE_REASONS else "completed"
    final = s.snapshot(status, usage=responses_usage(usage if usage is not None else s.usage,
                                                     reasoning_tokens(s.usage)))
    yield s.event("response.completed" if status == "completed" else "response.incomplete", response=final)


class _StreamState(ChunkFolder):
    """The open output item (one at a time, in order) and the finished ones."""

    def __init__(self, req: ResponsesRequest, model: str, response_id: str, created_at: int) -> None:
        super().__init__()
        self.req, self.model, self.response_id, self.created_at = req, model, response_id, created_at
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.item: dict[str, Any] | None = None  # the open item as it will be when done
        self.part: dict[str, Any] | None = None  # the open content part of a message item
        self.calls: dict[int, int] = {}  # chat tool_calls index → output index
        # the text growing in the open item or part (its dict and key), as pieces joined once when it
        # is read: concatenating per delta is quadratic in the answer's length
        self.growing: tuple[dict[str, Any], str, list[str]] | None = None

    def grow(self, target: dict[str, Any], key: str, text: str) -> None:
        """Append ``text`` to ``target[key]`` (joined by ``settle_text``)."""
        growing = self.growing
        if growing is None or growing[0] is not target or growing[1] != key:
            self.settle_text()
            growing = self.growing = (target, key, [target[key]])
        growing[2].append(text)

    def settle_text(self) -> None:
        """Write the growing text into its dict (before anything reads it)."""
        if self.growing is not None:
            target, key, pieces = self.growing
            target[key] = "".join(pieces)
            self.growing = None

    def event(self, kind: str, **fields: Any) -> bytes:
        frame = sse_event(kind, {"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return frame

    def snapshot(self, status: str, *, usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None) -> dict[str, Any]:
        self.settle_text()
        return build_response(self.req, response_id=self.response_id, created_at=self.created_at, model=self.model,
                              output=list(self.output), status=status, finish_reason=self.finish, usage=usage,
                              error=error)

    @property
    def index(self) -> int:
        return len(self.output)

    def _open(self, item: dict[str, Any], started: dict[str, Any]) -> list[bytes]:
        frames = self.close_item("completed")
        self.item = item
        return [*frames, self.event("response.output_item.added", output_index=self.index, item=started)]

    def close_item(self, status: str) -> list[bytes]:
        self.settle_text()
        item, self.item = self.item, None
        if item is None:
            return []
        ids = {"item_id": item["id"], "output_index": self.index}
        frames = self._close_part(item, ids)
        if item["type"] == "reasoning":
            text = item["summary"][0]["text"]
            part = {"type": "summary_text", "text": text}
            frames += [self.event("response.reasoning_summary_text.done", **ids, summary_index=0, text=text),
                       self.event("response.reasoning_summary_part.done", **ids, summary_index=0, part=part)]
        elif item["type"] == "function_call":
            item["status"] = status
            frames.append(self.event("response.function_call_arguments.done", **ids, arguments=item["arguments"],
                                     name=item["name"]))
        else:
            item["status"] = status
        frames.append(self.event("response.output_item.done", output_index=self.index, item=item))
        self.output.append(item)
        return frames

    def _close_part(self, item: dict[str, Any], ids: dict[str, Any]) -> list[bytes]:
        self.settle_text()
        part, self.part = self.part, None
        if part is None:
            return []
        content_index = len(item["content"]) - 1
        if part["type"] == "output_text":
            done = self.event("response.output_text.done", **ids, content_index=content_index, text=part["text"],
                              logprobs=[])
        else:
            done = self.event("response.refusal.done", **ids, content_index=content_index, refusal=part["refusal"])
        return [done, self.event("response.content_part.done", **ids, content_index=content_index, part=part)]

    def on_delta(self, delta: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        reasoning = message_reasoning(delta)
        if reasoning:
            frames += self._reasoning(reasoning)
        for kind, key in (("output_text", "content"), ("refusal", "refusal")):
            text = delta.get(key)
            if isinstance(text, str) and text:
                frames += self._text(kind, text)
        for call in delta.get("tool_calls") or []:
            frames += self._call(call)
        return frames

    def _reasoning(self, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if self.item is None or self.item["type"] != "reasoning":
            item_id = new_id("rs_")
            frames = self._open(_reasoning_item(item_id, ""), {"id": item_id, "type": "reasoning", "summary": []})
            frames.append(self.event("response.reasoning_summary_part.added", item_id=item_id,
                                     output_index=self.index, summary_index=0,
                                     part={"type": "summary_text", "text": ""}))
        assert self.item is not None
        self.grow(self.item["summary"][0], "text", text)
        delta = self.event("response.reasoning_summary_text.delta", item_id=self.item["id"], output_index=self.index,
                           summary_index=0, delta=text)
        return [*frames, delta]

    def _text(self, kind: str, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if self.item is None or self.item["type"] != "message":
            item_id = new_id("msg_")
            frames = self._open(_message_item(item_id, [], "completed"),
                                _message_item(item_id, [], "in_progress"))
        item = self.item
        assert item is not None
        ids = {"item_id": item["id"], "output_index": self.index}
        if self.part is None or self.part["type"] != kind:
            frames += self._close_part(item, ids)
            self.part = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            item["content"].append(self.part)
            frames.append(self.event("response.content_part.added", **ids, content_index=len(item["content"]) - 1,
                                     part=dict(self.part)))
        content_index = len(item["content"]) - 1
        if kind == "output_text":
            self.grow(self.part, "text", text)
            return [*frames, self.event("response.output_text.delta", **ids, content_index=content_index,
                                        delta=text, logprobs=[])]
        self.grow(self.part, "refusal", text)
        return [*frames, self.event("response.refusal.delta", **ids, content_index=content_index, delta=text)]

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        position = call.get("index", len(self.calls))
        fn = call.get("function") or {}
        if position not in self.calls:
            item_id = new_id("fc_")
            call_id = call.get("id") or new_id("call_")
            name = fn.get("name") or ""
            frames = self._open(_function_item(item_id, call_id, name, "", "completed"),
                                _function_item(item_id, call_id, name, "", "in_progress"))
            self.calls[position] = self.index
        arguments = fn.get("arguments")
        if not isinstance(arguments, str) or not arguments:
            return frames
        if self.calls[position] != self.index or self.item is None:
            # arguments for a call already closed (providers stream calls one after the other, so this
            # is only defensive): no event can carry them any more, the final Response does
            self.grow(self.output[self.calls[position]], "arguments", arguments)
            return frames
        self.grow(self.item, "arguments", arguments)
        return [*frames, self.event("response.function_call_arguments.delta", item_id=self.item["id"],
                                    output_index=self.index, delta=arguments)]

    def fail(self, error: dict[str, Any]) -> list[bytes]:
        frames = self.close_item("incomplete")
        code = str(error.get("code") or "")
        status = error.get("status")
        failure = {"code": "rate_limit_exceeded" if status == 429 or "rate_limit" in code else "server_error",
                   "message": str(error.get("message") or "The response failed.")}
        return [*frames, self.event("response.failed", response=self.snapshot("failed", error=failure))]

