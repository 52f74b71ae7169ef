"""Google Gemini API (``models/{model}:generateContent`` / ``:streamGenerateContent?alt=sse``).

Request: system/developer → ``systemInstruction``; user → ``user``, assistant → ``model``; images
→ ``inlineData`` (data URLs) or ``fileData`` (URLs); tools → ``functionDeclarations`` (JSON Schema
reduced to Gemini's OpenAPI subset); assistant ``tool_calls`` → ``functionCall`` parts; ``tool``
messages → ``functionResponse`` parts in a ``user`` turn; sampling → ``generationConfig``.

Thought signatures: Gemini 2.5+/3 attach an opaque ``thoughtSignature`` to ``functionCall`` parts
that must be sent back with the call in the next turn. OpenAI has no field for it, so it rides in
the tool-call id we hand out (``call_<hex>__thought__<signature>``) and is restored from there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from gateway.adapters.contract import DirectModel, GetJson, Target, Usage, list_model_pages
from gateway.adapters.http_client import UpstreamClient, UpstreamRequest, request_json
from gateway.adapters.reasoning import EFFORT_BUDGETS, budget_for_effort
from gateway.adapters.shapes import (
    THOUGHT_SEP,
    as_int,
    completion_dict,
    content_text,
    guess_mime,
    join_url,
    legacy_tool_calls,
    legacy_tools,
    new_id,
    now,
    parse_data_url,
    parse_tool_arguments,
    stop_list,
    unmapped,
)
from gateway.adapters.sse import SSEEvent
from gateway.adapters.stream import SSEUpstreamStream, TranslatingAdapter, estimated_usage
from gateway.adapters.upstream_errors import bad_response, error_from_event, load_json_event
from gateway.errors import BadRequest

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}

# Keys of Gemini's Schema object (an OpenAPI 3.0 subset); anything else is rejected upstream.
SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties",
    "required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example",
    "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})


def map_finish_reason(reason: str | None, has_tool_calls: bool = False) -> str | None:
    if not reason or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    mapped = FINISH_REASONS.get(reason, "stop")
    if mapped == "stop" and has_tool_calls:
        return "tool_calls"
    return mapped


# --------------------------------------------------------------------------------------------
# Schema reduction
# --------------------------------------------------------------------------------------------


def to_gemini_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """JSON Schema → Gemini Schema (best effort): inline local ``$ref``, ``type: [x, "null"]`` →
    ``nullable``, ``oneOf`` → ``anyOf``, ``const`` → ``enum``; unknown keywords dropped."""
    if not isinstance(schema, dict) or depth > 32:
        return schema
    if defs is None:
        defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target = defs.get(ref.rsplit("/", 1)[-1])
        if isinstance(target, dict):
            merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
            return to_gemini_schema(merged, defs, depth + 1)
    src = dict(schema)
    if "oneOf" in src and "anyOf" not in src:
        src["anyOf"] = src.pop("oneOf")
    all_of = src.pop("allOf", None)
    if isinstance(all_of, list):
        for sub in all_of:
            if isinstance(sub, dict):
                for k, v in sub.items():
                    src.setdefault(k, v)
    if "const" in src and "enum" not in src:
        src["enum"] = [src["const"]]
    out: dict[str, Any] = {}
    kind = src.get("type")
    if isinstance(kind, list):
        non_null = [t for t in kind if t != "null"]
        if len(non_null) < len(kind):
            out["nullable"] = True
        kind = non_null[0] if non_null else "string"
    if kind is not None:
        out["type"] = kind
    for key, value in src.items():
        if key not in SCHEMA_KEYS or key in ("type",):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: to_gemini_schema(sub, defs, depth + 1) for name, sub in value.items()}
        elif key == "items":
            out[key] = to_gemini_schema(value, defs, depth + 1)
        elif key == "anyOf" and isinstance(value, list):
            subs = [s for s in value if not (isinstance(s, dict) and s.get("type") == "null")]
            if len(subs) < len(value):
                out["nullable"] = True
            if len(subs) == 1:
                out.update({k: v for k, v in to_gemini_schema(subs[0], defs, depth + 1).items()
                            if k not in out or k == "nullable"})
            else:
                out[key] = [to_gemini_schema(s, defs, depth + 1) for s in subs]
        elif key == "enum" and isinstance(value, list):
            out[key] = [str(v) for v in value if v is not None]
            if out.get("type") in (None, "integer", "number", "boolean"):
                out["type"] = "string"
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Request translation
# --------------------------------------------------------------------------------------------


def split_call_id(call_id: str | None) -> tuple[str | None, str | None]:
    """``call_x__thought__SIG`` → ``("call_x", "SIG")``."""
    if not call_id:
        return None, None
    if THOUGHT_SEP in call_id:
        base, sig = call_id.split(THOUGHT_SEP, 1)
        return base, sig or None
    return call_id, None


def make_call_id(fc: dict[str, Any], signature: str | None) -> str:
    base = fc.get("id") or new_id("call_")
    return f"{base}{THOUGHT_SEP}{signature}" if signature else str(base)


def _media_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise BadRequest("image_url.url is required", param="messages")
        parsed = parse_data_url(url)
        if parsed is not None:
            return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
        if url.startswith(("http://", "https://", "gs://")):
            return {"fileData": {"mimeType": guess_mime(url), "fileUri": url}}
        raise BadRequest("image_url.url must be an http(s) URL or a base64 data URL", param="messages")
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        fmt = str(audio.get("format") or "wav")
        return {"inlineData": {"mimeType": f"audio/{fmt}", "data": audio.get("data") or ""}}
    if kind == "file":
        file = part.get("file") or {}
        parsed = parse_data_url(str(file.get("file_data") or ""))
        if parsed is None:
            raise BadRequest("file parts must carry file_data as a base64 data URL for this model",
                             param="messages")
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    raise BadRequest(f"unsupported content part type {kind!r}", param="messages")


def content_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            if part:
                parts.append({"text": part})
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text"):
                if part.get("text"):
                    parts.append({"text": part["text"]})
            elif kind == "refusal":
                if part.get("refusal"):
                    parts.append({"text": part["refusal"]})
            else:
                parts.append(_media_part(part))
    return parts


def _function_response(content: Any) -> dict[str, Any]:
    text = content_text(content)
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def translate_messages(messages: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """``(system_texts, contents)``; consecutive same-role turns are merged."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name (tool messages only carry the id)

    def push(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": list(parts)})

    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        content = msg.get("content")
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                system.append(text)
        elif role == "user":
            push("user", content_parts(content))
        elif role == "assistant":
            parts = [p for p in content_parts(content) if "text" in p]
            for call in legacy_tool_calls(msg):
                fn = call.get("function") or {}
                name = fn.get("name") or ""
                call_id = call.get("id") or ""
                names[call_id] = name
                _, signature = split_call_id(call_id)
                part: dict[str, Any] = {"functionCall": {"name": name,
                                                         "args": parse_tool_arguments(fn.get("arguments"))}}
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            push("model", parts)
        elif role in ("tool", "function"):
            call_id = msg.get("tool_call_id") or ""
            name = names.get(call_id) or msg.get("name") or split_call_id(call_id)[0] or "tool"
            push("user", [{"functionResponse": {"name": name, "response": _function_response(content)}}])
    return system, contents


def translate_tools(tools: Any) -> list[dict[str, Any]]:
    decls = []
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        fn = tool.get("function") or {}
        decl: dict[str, Any] = {"name": fn.get("name") or ""}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, dict) and params.get("properties"):
            decl["parameters"] = to_gemini_schema(params)
        decls.append(decl)
    return [{"functionDeclarations": decls}] if decls else []


def translate_tool_choice(tool_choice: Any) -> dict[str, Any] | None:
    if tool_choice is None:
        return None
    if tool_choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if tool_choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if tool_choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


# The chat parameters this adapter carries to generateContent (the rest: ``dropped``).
MAPPED = frozenset({"max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
                    "frequency_penalty", "n", "response_format", "tools", "tool_choice", "functions", "function_call",
                    "reasoning_effort"})
# Gemini 3 takes a thinking level (Pro: low/high; Flash: minimal/low/medium/high), not a budget.
_LEVELS_PRO = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high",
               "max": "high"}
_LEVELS_FLASH = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
                 "xhigh": "high", "max": "high"}
# Gemini 2.5 thinking budgets: (smallest, largest, 0 allowed = thinking can be turned off).
_BUDGETS = ((re.compile(r"^gemini-2\.5-pro"), (128, 32_768, False)),
            (re.compile(r"^gemini-2\.5-flash-lite"), (512, 24_576, True)),
            (re.compile(r"^gemini-2\.5-flash"), (1, 24_576, True)))


def thinking_config(model: str, effort: Any) -> dict[str, Any] | None:
    """``generationConfig.thinkingConfig`` for an OpenAI ``reasoning_effort`` on ``model`` (the
    provider's name): Gemini 3 a ``thinkingLevel``, Gemini 2.5 a ``thinkingBudget`` from
    ``adapters.reasoning`` within the model's range (``none`` → 0 where thinking can be turned
    off, else the smallest budget); None for a model without thinking controls. Thoughts are
    spent from ``maxOutputTokens`` (always sent), so the hold is unchanged."""
    if not isinstance(effort, str) or effort not in EFFORT_BUDGETS:
        return None
    name = model.rsplit("/", 1)[-1]
    if name.startswith("gemini-3"):
        return {"thinkingLevel": (_LEVELS_FLASH if "flash" in name else _LEVELS_PRO)[effort]}
    for pattern, (low, high, off) in _BUDGETS:
        if pattern.match(name):
            budget = budget_for_effort(effort)
            if budget == 0 and off:
                return {"thinkingBudget": 0}
            return {"thinkingBudget": max(low, min(budget, high))}
    return None


def dropped(body: dict[str, Any]) -> list[str]:
    """What ``build_body`` does not carry (``shapes.unmapped``), and ``reasoning_effort`` on a model
    without thinking controls."""
    names = unmapped(body, MAPPED)
    effort = body.get("reasoning_effort")
    if effort is not None and thinking_config(str(body.get("model") or ""), effort) is None:
        names.append("reasoning_effort")
    return names


def build_body(target: Target, body: dict[str, Any]) -> dict[str, Any]:
    system, contents = translate_messages(body.get("messages") or [])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    tools, tool_choice = legacy_tools(body)
    tools = translate_tools(tools)
    if tools:
        out["tools"] = tools
        tool_config = translate_tool_choice(tool_choice)
        if tool_config:
            out["toolConfig"] = tool_config
    gen: dict[str, Any] = {}
    if body.get("temperature") is not None:
        gen["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        gen["topP"] = body["top_p"]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        gen["maxOutputTokens"] = max_tokens
    stops = stop_list(body.get("stop"))
    if stops:
        gen["stopSequences"] = stops
    if body.get("seed") is not None:
        gen["seed"] = body["seed"]
    if body.get("presence_penalty") is not None:
        gen["presencePenalty"] = body["presence_penalty"]
    if body.get("frequency_penalty") is not None:
        gen["frequencyPenalty"] = body["frequency_penalty"]
    if (body.get("n") or 1) > 1:
        gen["candidateCount"] = body["n"]
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
        if isinstance(schema, dict):
            gen["responseSchema"] = to_gemini_schema(schema)
    thinking = thinking_config(target.upstream_model, body.get("reasoning_effort"))
    if thinking is not None:
        gen["thinkingConfig"] = thinking
    if gen:
        out["generationConfig"] = gen
    return out


def auth_headers(api_key: str) -> dict[str, str]:
    """What every Gemini call carries (generation, model lists)."""
    return {"x-goog-api-key": api_key}


def model_path(model: str) -> str:
    if model.startswith("models/"):
        model = model[len("models/"):]
    return "models/" + quote(model, safe="-._~")


def build_request(client: UpstreamClient, target: Target, body: dict[str, Any], *,
                  stream: bool) -> UpstreamRequest:
    path = model_path(target.upstream_model)
    url = join_url(target.base_url, f"{path}:streamGenerateContent" if stream else f"{path}:generateContent")
    return client.build_request(
        "POST", url, params={"alt": "sse"} if stream else None,
        headers={**auth_headers(target.api_key), "content-type": "application/json"},
        content=request_json(build_body(target, body)),
    )


# --------------------------------------------------------------------------------------------
# Response translation
# --------------------------------------------------------------------------------------------


def usage_from_gemini(meta: Any) -> tuple[Usage | None, int]:
    """``(Usage, reasoning_tokens)``; thoughts count as completion, tool-use prompt as prompt."""
    if not isinstance(meta, dict) or not meta:
        return None, 0
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    details = meta.get("promptTokensDetails")
    audio = sum(as_int(d.get("tokenCount")) for d in details if isinstance(d, dict) and d.get("modality") == "AUDIO"
                ) if isinstance(details, list) else 0
    usage = Usage(
        prompt_tokens=as_int(meta.get("promptTokenCount")) + as_int(meta.get("toolUsePromptTokenCount")),
        completion_tokens=as_int(meta.get("candidatesTokenCount")) + thoughts,
        cached_tokens=as_int(meta.get("cachedContentTokenCount")),
        audio_tokens=audio,
        reported=True,
    )
    return usage, thoughts


def _candidate_output(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if "text" in part:
            texts.append(part.get("text") or "")
        elif isinstance(part.get("functionCall"), dict):
            fc = part["functionCall"]
            calls.append({
                "id": make_call_id(fc, part.get("thoughtSignature")),
                "type": "function",
                "function": {"name": fc.get("name") or "",
                             "arguments": json.dumps(fc.get("args") or {}, ensure_ascii=False)},
            })
    return "".join(texts), calls


def translate_response(target: Target, body: dict[str, Any], data: Any) -> tuple[dict[str, Any], Usage]:
    if not isinstance(data, dict):
        raise bad_response("gemini", "returned an unexpected body")
    if data.get("error"):
        raise error_from_event("gemini", data, api_key=target.api_key)
    choices = []
    out_chars = 0
    for pos, candidate in enumerate(data.get("candidates") or []):
        text, calls = _candidate_output(candidate)
        out_chars += len(text) + sum(len(c["function"]["arguments"]) for c in calls)
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None,
                                   "refusal": None}
        if calls:
            message["tool_calls"] = calls
        finish = map_finish_reason(candidate.get("finishReason"), bool(calls)) or "stop"
        choices.append({"index": as_int(candidate.get("index", pos)), "message": message,
                        "finish_reason": finish, "logprobs": None})
    if not choices:
        blocked = (data.get("promptFeedback") or {}).get("blockReason")
        choices.append({"index": 0, "message": {"role": "assistant", "content": "", "refusal": None},
                        "finish_reason": "content_filter" if blocked else "stop", "logprobs": None})
    usage, thoughts = usage_from_gemini(data.get("usageMetadata"))
    if usage is None:
        usage = estimated_usage(body, out_chars, target.public_id)
    out = completion_dict(id=data.get("responseId") or new_id(), created=now(), model=target.public_id,
                          choices=choices, usage=usage.as_openai(reasoning_tokens=thoughts or None))
    return out, usage


class GeminiStream(SSEUpstreamStream):
    """Each SSE ``data:`` is a GenerateContentResponse fragment; usageMetadata is cumulative.

    Gemini sends no terminator: the stream is complete when the body ends after every candidate
    reported a ``finishReason`` (or the prompt was blocked).
    """

    provider = "gemini"

    def __init__(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> None:
        super().__init__(client, target, body)
        self._id: str | None = None
        self._created = now()
        self._candidates = max(1, int(body.get("n") or 1))
        self._role_sent: set[int] = set()
        self._tool_count: dict[int, int] = {}
        self._finished: set[int] = set()
        self._blocked = False

    def _build_request(self) -> UpstreamRequest:
        return build_request(self._client, self._target, self._body, stream=True)

    def _chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        if index not in self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent.add(index)
        return {
            "id": self._id or new_id(), "object": "chat.completion.chunk", "created": self._created,
            "model": self._target.public_id,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    def _on_event(self, event: SSEEvent) -> list[dict[str, Any]]:
        if not event.data.strip():
            return []
        obj = load_json_event(self.provider, event.data)
        if isinstance(obj, list):  # a JSON-array framed fragment
            obj = obj[0] if obj else {}
        if not isinstance(obj, dict):
            return []
        if obj.get("error"):
            raise error_from_event(self.provider, obj, api_key=self._target.api_key)
        if self._id is None:
            self._id = obj.get("responseId") or new_id()
        usage, _ = usage_from_gemini(obj.get("usageMetadata"))
        # usageMetadata is cumulative: while every fragment carries it, usage is exact even if
        # the stream breaks later.
        self._usage_is_cumulative = usage is not None
        if usage is not None:
            self.usage = usage
        chunks = []
        candidates = obj.get("candidates") or []
        for pos, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            index = as_int(candidate.get("index", pos))
            text, calls = _candidate_output(candidate)
            delta: dict[str, Any] = {}
            if text:
                delta["content"] = text
                self._out_chars += len(text)
            if calls:
                base = self._tool_count.get(index, 0)
                delta["tool_calls"] = [{"index": base + i, **call} for i, call in enumerate(calls)]
                self._tool_count[index] = base + len(calls)
                self._out_chars += sum(len(c["function"]["arguments"]) + len(c["function"]["name"])
                                       for c in calls)
            finish = map_finish_reason(candidate.get("finishReason"), self._tool_count.get(index, 0) > 0)
            if finish:
                self._finished.add(index)
            if delta or finish:
                chunks.append(self._chunk(index, delta, finish))
        if not candidates and (obj.get("promptFeedback") or {}).get("blockReason"):
            self._blocked = True
            chunks.append(self._chunk(0, {}, "content_filter"))
        return chunks

    def _on_eof(self) -> None:
        if self._blocked or len(self._finished) >= self._candidates:
            self._done = True
            self._final_usage = self.usage is not None


def usage_of(data: Any) -> Usage | None:
    return usage_from_gemini(data.get("usageMetadata") if isinstance(data, dict) else None)[0]


class GeminiAdapter(TranslatingAdapter):
    provider = "gemini"
    auth_headers = staticmethod(auth_headers)
    build_request = staticmethod(build_request)
    translate_response = staticmethod(translate_response)
    usage_of = staticmethod(usage_of)
    dropped = staticmethod(dropped)
    stream_class = GeminiStream


# --------------------------------------------------------------------------------------------
# Model list (``models.list``, paginated)
# --------------------------------------------------------------------------------------------
def parse_gemini_page(payload: Any) -> tuple[list[DirectModel], str | None]:
    if not isinstance(payload, dict):
        raise ValueError("Gemini models.list: expected an object")
    entries = payload.get("models", [])
    if not isinstance(entries, list):
        raise ValueError("Gemini models.list: `models` is not a list")
    models = []
    for m in entries:
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            continue
        methods = m.get("supportedGenerationMethods") or []
        if "generateContent" not in methods:
            continue  # embeddings, predict-only image models, ...
        models.append(DirectModel("gemini", m["name"].removeprefix("models/"), m.get("displayName")))
    token = payload.get("nextPageToken")
    return models, token if isinstance(token, str) and token else None


async def list_gemini_models(get: GetJson, base_url: str, headers: Mapping[str, str]) -> tuple[list[DirectModel], int]:
    return await list_model_pages(get, join_url(base_url, "models"), headers, parse_gemini_page,
                                  page_size={"pageSize": 1000}, cursor_param="pageToken", entries="models")
