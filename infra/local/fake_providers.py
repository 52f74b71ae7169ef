"""Fake LLM providers: one Starlette app that impersonates every upstream the gateway talks to.

Used by the local stack, the integration/e2e tests and as the "upstream" of the latency
benchmarks, so the product runs with no internet. Start it with::

    python -m infra.local.fake_providers --host 127.0.0.1 --port 9100

or in-process with ``infra.local.servers.start_in_thread(create_app())``. SDK clients: the
``openai`` SDK takes the base URLs below as they are; the ``anthropic`` SDK wants
``{server}/anthropic`` (it adds ``/v1`` itself).

Base URLs (configure the gateway's provider base URLs with these; ``base_urls(server_url)``
returns them as a dict)::

    openai      {server}/openai/v1          POST /chat/completions, GET /models, GET /models/{id}
    openrouter  {server}/openrouter/api/v1  POST /chat/completions, GET /models
    anthropic   {server}/anthropic/v1       POST /messages, GET /models, GET /models/{id}
    gemini      {server}/gemini/v1beta      POST /models/{model}:generateContent,
                                            POST /models/{model}:streamGenerateContent?alt=sse
                                            (without alt=sse: a streamed JSON array, as the real one),
                                            GET /models, GET /models/{model}
    compat      {server}/compat/v1          POST /chat/completions, GET /models  (Ollama/vLLM style)

plus embeddings, the OpenAI Responses API and Anthropic count_tokens (``fake_surfaces``).

Authentication is checked as the real services do, and any key is accepted except keys that
start with ``invalid`` (those get the provider's "invalid key" error):

* openai / openrouter / compat: ``Authorization: Bearer KEY``. Missing -> 401 with the provider's
  body (OpenRouter: ``{"error": {"message": "No auth credentials found", "code": 401}}``;
  compat: vLLM's ``{"error": "Unauthorized"}``). OpenRouter's ``GET /models`` is public, as the
  real one.
* anthropic: ``x-api-key`` (or ``Authorization: Bearer``, which recent Anthropic SDKs send; missing
  -> 401 ``authentication_error``) and ``anthropic-version`` (missing -> 400
  ``invalid_request_error``, as the real API).
* gemini: ``x-goog-api-key`` header or ``?key=``. Missing -> 403 ``PERMISSION_DENIED`` (that is
  what Google really returns); an ``invalid...`` key -> 400 ``INVALID_ARGUMENT`` / ``API_KEY_INVALID``.

Deterministic replies
---------------------
The reply text is the sentence ``"Hello from <provider> <model>."`` (provider = openai,
openrouter, anthropic, gemini or compat) repeated word by word and cut to the number of words
asked for (4 words by default, ``[[words:N]]`` to change it). Token accounting:

* prompt tokens = ceil(ASCII characters of all message text / 4) + 1 per non-ASCII character (CJK,
  accents, emoji: about a token each, as real tokenizers), at least 1; the system prompt and
  Anthropic ``tool_result`` text count, tool definitions do not, and directives do (they are text);
  plus, per input image (the fake never looks at the pixels), what the provider bills for a large
  2048 x 2048 photo: Anthropic 1,590 (resized to 1092 x 1092, w x h / 750), OpenAI 765 (85 + 4 tiles
  x 170; gpt-4o-mini 25,501: 2,833 + 4 x 5,667), Gemini 2,322 (9 tiles of 768 px x 258), OpenRouter
  and compatible servers by the model's vendor (other vendors 1,601);
* completion tokens = number of words emitted (a tool call counts
  ceil((len(name) + len(arguments_json)) / 4));
* the output limit (OpenAI ``max_completion_tokens`` or ``max_tokens``, Anthropic ``max_tokens``,
  Gemini ``generationConfig.maxOutputTokens``) bounds reasoning plus words, as the real providers
  count both in it; hitting it makes the finish reason ``length`` / ``max_tokens`` / ``MAX_TOKENS``.

Prices the real providers bill on top of the tokens, reported the way they report them:

* OpenRouter's ``usage.cost`` is the USD the call cost at the endpoint that served it (prompt,
  cached reads, cache writes at ``input_cache_write``, completion incl. reasoning, request fee);
  ``usage.prompt_tokens_details.cache_write_tokens`` counts the writes. A request's
  ``provider.max_price`` (USD per million tokens; ``request`` / ``image`` per unit) excludes
  endpoints that cost more: with none left the answer is OpenRouter's 404;
* Anthropic reports ``usage.cache_creation.ephemeral_5m_input_tokens`` /
  ``ephemeral_1h_input_tokens``: the writes go to the 1-hour bucket when the request marks a block
  ``cache_control: {"ttl": "1h"}``;
* OpenAI answers with the ``service_tier`` it served (the one requested, else ``default``).

Streaming sends one word per chunk. OpenAI and compat send a final usage chunk (``choices: []``)
only when ``stream_options.include_usage`` is true; OpenRouter always does, and starts its
streams with a ``: OPENROUTER PROCESSING`` SSE comment like the real one. Anthropic's
``message_start`` carries the input usage (``output_tokens: 1``, as the real API) and
``message_delta`` the final ``output_tokens``. Gemini chunks each carry ``usageMetadata`` with a
running ``candidatesTokenCount``; the last one is final. OpenRouter's usage includes ``cost``
computed from the fake catalogue's prices.

Test directives
---------------
Put them anywhere in the text of the LAST user message (so any client can trigger them):

``[[fail:CODE]]``        answer with that provider's real error body and status (400, 401, 402,
                         403, 404, 408, 413, 429, 500, 502, 503, 504, 529 ... any 4xx/5xx code);
                         429 carries a ``retry-after`` header.
``[[retry_after:S]]``    value of ``retry-after`` on a 429 (default ``1``).
``[[sleep:SECONDS]]``    wait before sending the response headers (for timeouts).
``[[ttfb:SECONDS]]``     after the headers, wait before the first chunk / the body.
``[[words:N]]``          emit N words (still capped by the request's max tokens).
``[[chunk_delay:S]]``    wait S seconds between stream chunks.
``[[cut:N]]``            stream: send N chunks (SSE events) then close the connection without the
                         terminator; non-stream: send half of the body (with a full
                         Content-Length) then close.
``[[stream_error:N]]``   stream: after N chunks send the provider's in-stream error event (OpenAI
                         ``data: {"error": ...}``, OpenRouter chunk with ``error`` and
                         ``finish_reason: "error"``, Anthropic ``event: error``, Gemini
                         ``{"error": ...}``) and end the response cleanly.
``[[nousage]]``          omit usage / usageMetadata entirely (the gateway must estimate).
``[[tool:NAME]]``        if the request declared tools, answer with a call to NAME with arguments
                         ``{"x": 1}`` in the provider's format (finish ``tool_calls`` /
                         ``tool_use`` / ``STOP``).
``[[cached:N]]``         report N cached prompt tokens (OpenAI ``prompt_tokens_details.cached_tokens``
                         and Gemini ``cachedContentTokenCount``, both included in the prompt count;
                         Anthropic ``cache_read_input_tokens``, excluded from ``input_tokens``).
``[[cache_write:N]]``    Anthropic only: ``cache_creation_input_tokens`` (excluded from ``input_tokens``).
``[[reasoning:N]]``      add N reasoning tokens (OpenAI ``completion_tokens_details.reasoning_tokens``,
                         included in ``completion_tokens``; Anthropic: added to ``output_tokens``;
                         Gemini ``thoughtsTokenCount``, not in ``candidatesTokenCount`` but in the total).
                         They count in the output limit, before the words. Streams send them only in
                         the final usage, so a client that leaves early never sees them.
``[[endpoint_price:F]]`` OpenRouter: the endpoint that serves costs F x the catalogue price (routing
                         with ``provider.order`` / ``sort`` can pick one); ``provider.max_price`` below
                         that refuses it (404).
``[[cost:X]]``           OpenRouter: report ``usage.cost`` = X USD whatever the tokens (surcharges).
``[[zero_usage]]``       report every token count as 0 (usage present, nothing counted).
``[[malformed]]``        non-stream, OpenAI family and Anthropic: a 200 whose ``choices`` / ``content``
                         is an object instead of a list, usage included (billed, but unusable).
``[[nan]]``              non-stream, OpenAI family: a ``NaN`` logprob in the answer (valid to Python's
                         JSON parser, not renderable as strict JSON).

Model-name triggers (for fallback tests): a model id containing ``fail-CODE`` (e.g.
``fail-500``, ``fail-429``) always fails with that code; one containing ``timeout`` waits up to
120 s before sending anything (it stops early when the client goes away), then answers 504.

Introspection and control (not under any provider prefix)
---------------------------------------------------------
``GET /__fake/health``                     ``{"ok": true}``
``GET /__fake/requests[?provider=P&limit=N]``  the last 200 provider requests, oldest first:
    ``{"id", "ts", "provider", "method", "path", "query", "model", "key", "key_source", "headers",
    "body", "stream", "status"}``. ``key`` is the credential the request carried (Bearer token,
    x-api-key, x-goog-api-key or ?key=) so tests can check that BYOK keys reach the provider;
    ``headers`` holds every other header with secrets (authorization, x-api-key, x-goog-api-key,
    cookie) removed.
``DELETE /__fake/requests``                clear the log.
``GET /__fake/catalog/{provider}``         that provider's current model list.
``PUT /__fake/catalog/{provider}``         JSON list replaces it; items are provider-shaped dicts
                                           (served as they are) or bare ids (expanded).
``POST /__fake/catalog/{provider}/fail``   ``{"status": 500}``: the models endpoint fails with that
                                           status until ``DELETE /__fake/catalog/{provider}/fail``.
``POST /__fake/reset``                     default catalogues, no failures, empty request log.

All state lives in the app returned by :func:`create_app` (each call gives fresh state).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from infra.local import fake_catalog

PROVIDERS = fake_catalog.PROVIDERS

BASE_PATHS: dict[str, str] = {
    "openai": "/openai/v1",
    "openrouter": "/openrouter/api/v1",
    "anthropic": "/anthropic/v1",
    "gemini": "/gemini/v1beta",
    "compat": "/compat/v1",
}

REQUEST_LOG_SIZE = 200
TIMEOUT_MODEL_SLEEP = 120.0
MAX_DELAY = 600.0  # cap for [[sleep]] / [[ttfb]] / [[chunk_delay]]
DEFAULT_WORDS = 4
TOOL_ARGS = {"x": 1}
TOOL_ARGS_JSON = json.dumps(TOOL_ARGS)  # '{"x": 1}'

SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "cookie", "proxy-authorization"})

_OPENROUTER_UPSTREAM = {
    "openai": "OpenAI", "anthropic": "Anthropic", "google": "Google", "meta-llama": "DeepInfra",
    "mistralai": "Mistral", "deepseek": "DeepSeek", "qwen": "Together", "x-ai": "xAI",
    "cohere": "Cohere", "perplexity": "Perplexity",
}

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


def base_urls(server_url: str) -> dict[str, str]:
    """Provider -> base URL for a fake server running at ``server_url``."""
    root = server_url.rstrip("/")
    return {provider: root + path for provider, path in BASE_PATHS.items()}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _new_id(n: int = 24) -> str:
    return uuid.uuid4().hex[:n]


# ---------------------------------------------------------------------------------------------
# Directives
# ---------------------------------------------------------------------------------------------

_DIRECTIVE_RE = re.compile(r"\[\[([a-z_]+)(?::([^\]]*))?\]\]")
_MODEL_FAIL_RE = re.compile(r"fail-(\d{3})")


@dataclass(slots=True)
class Directives:
    fail: int | None = None
    retry_after: str = "1"
    sleep: float = 0.0
    ttfb: float = 0.0
    words: int | None = None
    chunk_delay: float = 0.0
    cut: int | None = None
    stream_error: int | None = None
    nousage: bool = False
    tool: str | None = None
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0
    endpoint_price: Decimal = Decimal(1)
    cost: Decimal | None = None
    zero_usage: bool = False
    malformed: bool = False
    nan: bool = False


def _seconds(arg: str) -> float:
    value = float(arg)
    return min(max(value, 0.0), MAX_DELAY) if value == value else 0.0  # NaN -> 0


def parse_directives(text: str, model: str = "") -> Directives:
    """Directives found in ``text`` plus the model-name triggers (``fail-CODE``, ``timeout``)."""
    d = Directives()
    if "[[" in text:
        for name, arg in _DIRECTIVE_RE.findall(text):
            arg = arg.strip()
            try:
                if name == "fail":
                    code = int(arg)
                    if 400 <= code <= 599:
                        d.fail = code
                elif name == "retry_after":
                    d.retry_after = arg or "1"
                elif name == "sleep":
                    d.sleep = _seconds(arg)
                elif name == "ttfb":
                    d.ttfb = _seconds(arg)
                elif name == "words":
                    d.words = max(0, int(arg))
                elif name == "chunk_delay":
                    d.chunk_delay = _seconds(arg)
                elif name == "cut":
                    d.cut = max(0, int(arg or 0))
                elif name == "stream_error":
                    d.stream_error = max(0, int(arg or 0))
                elif name == "nousage":
                    d.nousage = True
                elif name == "tool" and arg:
                    d.tool = arg
                elif name == "cached":
                    d.cached = max(0, int(arg))
                elif name == "cache_write":
                    d.cache_write = max(0, int(arg))
                elif name == "reasoning":
                    d.reasoning = max(0, int(arg))
                elif name == "endpoint_price":
                    d.endpoint_price = max(Decimal(arg), Decimal(0))
                elif name == "cost":
                    d.cost = max(Decimal(arg), Decimal(0))
                elif name == "zero_usage":
                    d.zero_usage = True
                elif name == "malformed":
                    d.malformed = True
                elif name == "nan":
                    d.nan = True
            except (ValueError, ArithmeticError):
                continue
    if model:
        m = _MODEL_FAIL_RE.search(model)
        if m:
            d.fail = int(m.group(1))
        elif "timeout" in model:
            d.sleep = max(d.sleep, TIMEOUT_MODEL_SLEEP)
            d.fail = 504
    return d


# ---------------------------------------------------------------------------------------------
# Normalised chat request and the reply plan
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Chat:
    provider: str
    model: str
    stream: bool
    max_tokens: int | None
    prompt_chars: int
    last_user_text: str
    has_tools: bool
    include_usage: bool
    images: int = 0
    cache_ttl_1h: bool = False      # a block asked for the 1-hour prompt cache (Anthropic)
    max_price: dict[str, Any] | None = None  # OpenRouter provider.max_price
    service_tier: str | None = None
    audio_chars: int = 0            # base64 characters of input_audio parts (OpenAI wire format)
    prediction_chars: int = 0       # characters of a Predicted Outputs ``prediction`` (OpenAI)


@dataclass(slots=True)
class Plan:
    words: list[str]
    finish: str  # "stop" | "length" | "tool"
    tool_name: str | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    usage: bool
    cache_write_1h: bool = False
    audio_tokens: int = 0           # part of prompt_tokens that was audio input
    rejected_prediction_tokens: int = 0  # billed as output on top of the words (Predicted Outputs)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def output_tokens(self) -> int:
        return self.completion_tokens + self.reasoning_tokens + self.rejected_prediction_tokens


def count_prompt_tokens(chars: int) -> int:
    """The fake's prompt-token rule: ceil(chars / 4), at least 1 (``chars`` weighted by ``_weight``)."""
    return max(1, math.ceil(chars / 4))


def _weight(text: str) -> int:
    """Characters of ``text`` with each non-ASCII one counted 4 times (a token each)."""
    if text.isascii():
        return len(text)
    return len(text) + 3 * (len(text) - len(text.encode("ascii", "ignore")))


def image_tokens(provider: str, model: str) -> int:
    """What the provider bills for one large (2048 x 2048) input image; see the module docstring."""
    vendor = provider
    if provider in ("openrouter", "compat"):
        vendor = {"anthropic": "anthropic", "openai": "openai", "google": "gemini"}.get(model.split("/", 1)[0], "")
        model = model.split("/", 1)[-1]
    if vendor == "anthropic":
        return 1_590
    if vendor == "openai":
        return 2_833 + 4 * 5_667 if model.startswith("gpt-4o-mini") else 85 + 4 * 170
    if vendor == "gemini":
        return 9 * 258
    return 1_601


AUDIO_CHARS_PER_TOKEN = 64  # the fake's audio rule: a token per 64 base64 characters (48 bytes)


def make_plan(chat: Chat, d: Directives) -> Plan:
    plan = _make_plan(chat, d)
    if chat.audio_chars and plan.prompt_tokens:
        plan.audio_tokens = math.ceil(chat.audio_chars / AUDIO_CHARS_PER_TOKEN)
        plan.prompt_tokens += plan.audio_tokens
    if chat.prediction_chars and plan.prompt_tokens:
        # every predicted token rejected: the worst case, billed as completion tokens
        plan.rejected_prediction_tokens = count_prompt_tokens(chat.prediction_chars)
    return plan


def _make_plan(chat: Chat, d: Directives) -> Plan:
    prompt = count_prompt_tokens(chat.prompt_chars) + chat.images * image_tokens(chat.provider, chat.model)
    cached = min(d.cached, prompt)
    cache_write = min(d.cache_write, prompt - cached)
    reasoning = d.reasoning if chat.max_tokens is None else min(d.reasoning, max(0, chat.max_tokens))
    room = None if chat.max_tokens is None else max(0, chat.max_tokens - reasoning)
    usage = not d.nousage
    if d.tool and chat.has_tools:
        tool_tokens = math.ceil((len(d.tool) + len(TOOL_ARGS_JSON)) / 4)
        return Plan([], "tool", d.tool, prompt, tool_tokens, reasoning, cached, cache_write, usage, chat.cache_ttl_1h)
    base = ["Hello", "from", chat.provider, f"{chat.model}."]
    n = DEFAULT_WORDS if d.words is None else d.words
    finish = "stop"
    if room is not None and (n > room or (reasoning and room == 0)):
        n = min(n, room)
        finish = "length"
    words = [base[i % len(base)] for i in range(n)]
    if d.zero_usage:
        return Plan(words, finish, None, 0, 0, 0, 0, 0, usage)
    return Plan(words, finish, None, prompt, n, reasoning, cached, cache_write, usage, chat.cache_ttl_1h)


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return ""


def _count_parts(content: Any, kinds: tuple[str, ...]) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for part in content if isinstance(part, dict) and part.get("type") in kinds)


def parse_openai_chat(provider: str, body: dict[str, Any]) -> Chat:
    messages = body.get("messages") or []
    chars = 0
    images = 0
    last_user = ""
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        text = _openai_text(msg.get("content"))
        chars += _weight(text)
        images += _count_parts(msg.get("content"), ("image_url",))
        if msg.get("role") == "user":
            last_user = text
    max_tokens = _int_or_none(body.get("max_completion_tokens"))
    if max_tokens is None:
        max_tokens = _int_or_none(body.get("max_tokens"))
    stream = bool(body.get("stream"))
    opts = body.get("stream_options") or {}
    include_usage = provider == "openrouter" or (isinstance(opts, dict) and bool(opts.get("include_usage")))
    prefs = body.get("provider")
    max_price = prefs.get("max_price") if provider == "openrouter" and isinstance(prefs, dict) else None
    tier = body.get("service_tier")
    audio_chars = sum(len(str((part.get("input_audio") or {}).get("data") or ""))
                      for msg in messages if isinstance(msg, dict) and isinstance(msg.get("content"), list)
                      for part in msg["content"] if isinstance(part, dict) and part.get("type") == "input_audio")
    prediction = body.get("prediction")
    predicted = _openai_text(prediction.get("content")) if isinstance(prediction, dict) else ""
    return Chat(provider, str(body.get("model") or ""), stream, max_tokens, chars, last_user,
                bool(body.get("tools") or body.get("functions")), include_usage, images=images,
                max_price=max_price if isinstance(max_price, dict) else None,
                service_tier=tier if isinstance(tier, str) else None, audio_chars=audio_chars,
                prediction_chars=len(predicted))


def _anthropic_text(content: Any, *, tool_results: bool) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif tool_results and block.get("type") == "tool_result":
            parts.append(_anthropic_text(block.get("content"), tool_results=False))
    return "".join(parts)


def _asks_1h_cache(blocks: Any) -> bool:
    return isinstance(blocks, list) and any(
        isinstance(b, dict) and isinstance(b.get("cache_control"), dict) and b["cache_control"].get("ttl") == "1h"
        for b in blocks)


# The top-level request fields the real APIs know; any other is refused (400), as they do, so an
# adapter that forwards a parameter the provider does not take fails here as it would there.
ANTHROPIC_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
                              "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
                              "container", "mcp_servers", "context_management", "output_config", "output_format"})
GEMINI_FIELDS = frozenset({"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                           "safetySettings", "cachedContent", "labels"})


def anthropic_thinking_problem(body: dict[str, Any]) -> str:
    """Anthropic's refusals of an extended-thinking request ("" when it is valid): a budget of at
    least 1,024 below ``max_tokens``, no temperature other than 1 and no ``top_k``, ``top_p`` within
    0.95..1, ``tool_choice`` auto or none, and a final assistant turn with tool use starting with
    its thinking block."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return ""
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= (body.get("max_tokens") or 0):
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    if body.get("temperature") not in (None, 1, 1.0):
        return "`temperature` may only be set to 1 when thinking is enabled."
    if body.get("top_k") is not None:
        return "`top_k` must be unset when thinking is enabled."
    if body.get("top_p") is not None and not 0.95 <= float(body["top_p"]) <= 1:
        return "`top_p` must be between 0.95 and 1 when thinking is enabled."
    if isinstance(body.get("tool_choice"), dict) and body["tool_choice"].get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    assistants = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    content = assistants[-1].get("content") if assistants else None
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content) \
            and not (isinstance(content[0], dict) and content[0].get("type") in ("thinking", "redacted_thinking")):
        return ("messages: Expected `thinking` or `redacted_thinking`, but found `tool_use`. When `thinking` is "
                "enabled, a final `assistant` message must start with a thinking block.")
    return ""


def gemini_thinking_problem(model: str, body: dict[str, Any]) -> str:
    """Gemini's refusals of a ``thinkingConfig`` ("" when valid): a level or a budget, not both;
    levels on Gemini 3 only, budgets on 2.5 only, and 2.5 Pro cannot turn thinking off."""
    config = body.get("generationConfig")
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    if not isinstance(thinking, dict):
        return ""
    level, budget = thinking.get("thinkingLevel"), thinking.get("thinkingBudget")
    if level is not None and budget is not None:
        return "You can only set only one of thinking budget and thinking level."
    if level is not None and not model.startswith("gemini-3"):
        return "Thinking level is not supported for this model."
    if budget is not None:
        if not model.startswith("gemini-2.5"):
            return "Thinking budget is not supported for this model."
        if budget == 0 and model.startswith("gemini-2.5-pro"):
            return "Budget 0 is invalid. This model only works in thinking mode."
    return ""


def parse_anthropic_chat(body: dict[str, Any]) -> Chat:
    chars = _weight(_anthropic_text(body.get("system"), tool_results=False))
    last_user = ""
    images = 0
    ttl_1h = _asks_1h_cache(body.get("system"))
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        chars += _weight(_anthropic_text(msg.get("content"), tool_results=True))
        images += _count_parts(msg.get("content"), ("image",))
        ttl_1h = ttl_1h or _asks_1h_cache(msg.get("content"))
        if msg.get("role") == "user":
            last_user = _anthropic_text(msg.get("content"), tool_results=False)
    return Chat("anthropic", str(body.get("model") or ""), bool(body.get("stream")),
                _int_or_none(body.get("max_tokens")), chars, last_user, bool(body.get("tools")), True,
                images=images, cache_ttl_1h=ttl_1h)


def _gemini_text(content: Any) -> str:
    if not isinstance(content, dict):
        return ""
    return "".join(p["text"] for p in content.get("parts") or []
                   if isinstance(p, dict) and isinstance(p.get("text"), str))


def parse_gemini_chat(model: str, body: dict[str, Any], stream: bool) -> Chat:
    chars = _weight(_gemini_text(body.get("systemInstruction") or body.get("system_instruction")))
    last_user = ""
    images = 0
    for content in body.get("contents") or []:
        text = _gemini_text(content)
        chars += _weight(text)
        if isinstance(content, dict):
            images += sum(1 for p in content.get("parts") or [] if isinstance(p, dict) and str(
                (p.get("inlineData") or p.get("fileData") or {}).get("mimeType", "")).startswith("image/"))
        if isinstance(content, dict) and content.get("role", "user") == "user":
            last_user = text
    config = body.get("generationConfig") or body.get("generation_config") or {}
    max_tokens = _int_or_none(config.get("maxOutputTokens", config.get("max_output_tokens"))) \
        if isinstance(config, dict) else None
    has_tools = any(isinstance(t, dict) and (t.get("functionDeclarations") or t.get("function_declarations"))
                    for t in body.get("tools") or [])
    return Chat("gemini", model, stream, max_tokens, chars, last_user, has_tools, True, images=images)


# ---------------------------------------------------------------------------------------------
# Error bodies, per provider
# ---------------------------------------------------------------------------------------------


def _mask_key(key: str) -> str:
    return key[:3] + "*" * max(0, min(len(key), 12) - 7) + key[-4:] if len(key) > 7 else "****"


def error_payload(provider: str, status: int, *, model: str = "", kind: str = "",
                  key: str = "", message: str = "", retry_after: str = "1"
                  ) -> tuple[int, dict[str, str], Any]:
    """``(status, headers, body)`` of ``provider``'s real error for ``status`` (or ``kind``).

    ``kind``: ``missing_key``, ``invalid_key``, ``missing_version`` (Anthropic) or ``bad_request``.
    """
    headers: dict[str, str] = {}
    if status == 429:
        headers["retry-after"] = retry_after
    if provider in ("openai", "compat"):
        return _openai_error(provider, status, model, kind, key, message, headers)
    if provider == "openrouter":
        return _openrouter_error(status, model, kind, message, headers)
    if provider == "anthropic":
        return _anthropic_error(status, model, kind, message, headers)
    return _gemini_error(status, model, kind, message, headers)


def _openai_error(provider: str, status: int, model: str, kind: str, key: str, message: str,
                  headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    if provider == "compat" and kind == "missing_key":
        return 401, headers, {"error": "Unauthorized"}
    etype = "server_error" if status >= 500 else "invalid_request_error"
    code: str | int | None = None
    param: str | None = None
    if kind == "missing_key":
        msg = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
               "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with "
               "blank username) if you're accessing the API from your browser and are prompted for a "
               "username. You can obtain an API key from https://platform.openai.com/account/api-keys.")
    elif kind == "invalid_key" or status == 401:
        msg = (f"Incorrect API key provided: {_mask_key(key or 'sk-unknown')}. You can find your API key "
               "at https://platform.openai.com/account/api-keys.")
        code = "invalid_api_key"
    elif status == 400:
        msg = message or "Invalid request: the fake provider was asked to reject it."
    elif status == 403:
        msg = f"Project does not have access to model `{model}`."
        code = "model_not_found"
    elif status == 404:
        msg = f"The model `{model}` does not exist or you do not have access to it."
        code = "model_not_found"
    elif status == 429:
        msg = (f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
               "Limit 3, Used 3, Requested 1. Please try again in 1s. Visit "
               "https://platform.openai.com/account/rate-limits to learn more.")
        etype, code = "requests", "rate_limit_exceeded"
        headers.update({"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": "1s"})
    elif status == 503:
        msg = "The engine is currently overloaded, please try again later."
    elif status == 504:
        msg = "Gateway timeout. The request took too long to complete."
    elif status >= 500:
        msg = "The server had an error while processing your request. Sorry about that!"
    else:
        msg = message or f"Request failed with status {status}."
    if provider == "compat" and status != 401:
        etype = {400: "BadRequestError", 404: "NotFoundError"}.get(status, etype)
        code = status  # vLLM puts the HTTP status in "code"
    return status, headers, {"error": {"message": msg, "type": etype, "param": param, "code": code}}


def _openrouter_error(status: int, model: str, kind: str, message: str,
                      headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    upstream = _OPENROUTER_UPSTREAM.get(model.split("/", 1)[0], "Fake")
    metadata: dict[str, Any] | None = None
    if kind == "missing_key":
        msg = "No auth credentials found"
    elif kind == "invalid_key" or status == 401:
        msg = "User not found."
    elif status == 400:
        msg = message or f"{model} is not a valid model ID"
    elif status == 402:
        msg = ("This request requires more credits, or fewer max_tokens. You requested up to 4096 tokens, "
               "but can only afford 10. To increase, visit https://openrouter.ai/settings/credits and add "
               "more credits")
    elif status == 403:
        msg = f"{model} requires moderation on OpenAI. Your input was flagged for \"harassment\"."
        metadata = {"reasons": ["harassment"], "flagged_input": "...", "provider_name": upstream,
                    "model_slug": model}
    elif status == 404:
        msg = message or f"No endpoints found for {model}."
    elif status == 408:
        msg = "Request timed out"
    elif status == 429:
        msg = "Provider returned error"
        metadata = {"raw": f"{model} is temporarily rate-limited upstream. Please retry shortly.",
                    "provider_name": upstream}
    elif status == 503:
        msg = "No allowed providers are available for the selected model."
    elif status == 504:
        msg = "Upstream timed out"
    elif status >= 500:
        msg = "Internal Server Error" if status == 500 else "Provider returned error"
        if status != 500:
            metadata = {"raw": "upstream error", "provider_name": upstream}
    else:
        msg = message or f"Request failed with status {status}."
    err: dict[str, Any] = {"message": msg, "code": status}
    if metadata is not None:
        err["metadata"] = metadata
    body: dict[str, Any] = {"error": err}
    if 400 <= status < 500 and kind != "missing_key":
        body["user_id"] = "user_fake"
    return status, headers, body


def _anthropic_error(status: int, model: str, kind: str, message: str,
                     headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    request_id = "req_" + _new_id()
    headers["request-id"] = request_id
    etype = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if kind == "missing_key":
        msg = "x-api-key header is required"
    elif kind == "invalid_key":
        msg = "invalid x-api-key"
    elif kind == "missing_version":
        msg = "anthropic-version: header is required"
    elif status == 400:
        msg = message or "messages: at least one message is required"
    elif status == 401:
        msg = "invalid x-api-key"
    elif status == 403:
        msg = "Your API key does not have permission to use the specified resource."
    elif status == 404:
        msg = f"model: {model}"
    elif status == 429:
        msg = ("Number of request tokens has exceeded your per-minute rate limit "
               "(https://docs.anthropic.com/en/api/rate-limits); see the response headers for current "
               "usage. Please reduce the prompt length or the maximum tokens requested, or try again later.")
        headers["anthropic-ratelimit-requests-remaining"] = "0"
    elif etype == "overloaded_error":
        msg = "Overloaded"
    elif status >= 500:
        msg = "Internal server error"
    else:
        msg = message or f"Request failed with status {status}."
    return status, headers, {"type": "error", "error": {"type": etype, "message": msg},
                             "request_id": request_id}


def _gemini_error(status: int, model: str, kind: str, message: str,
                  headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    details: list[dict[str, Any]] | None = None
    if kind == "missing_key":
        status = 403
        msg = ("Method doesn't allow unregistered callers (callers without established identity). "
               "Please use API Key or other form of API consumer identity to call this API.")
    elif kind == "invalid_key":
        status = 400
        msg = "API key not valid. Please pass a valid API key."
        details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}}]
    elif status == 400:
        msg = message or "Request contains an invalid argument."
    elif status == 401:
        msg = ("Request had invalid authentication credentials. Expected OAuth 2 access token, login "
               "cookie or other valid authentication credential.")
    elif status == 403:
        msg = "The caller does not have permission"
    elif status == 404:
        msg = (f"models/{model} is not found for API version v1beta, or is not supported for "
               "generateContent. Call ListModels to see the list of available models and their "
               "supported methods.")
    elif status == 429:
        msg = ("You exceeded your current quota, please check your plan and billing details. For more "
               "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")
        details = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                             "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                             "quotaDimensions": {"location": "global", "model": model},
                             "quotaValue": "10"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{headers['retry-after']}s"},
        ]
    elif status == 503:
        msg = "The model is overloaded. Please try again later."
    elif status == 504:
        msg = "Deadline expired before operation could complete."
    elif status >= 500:
        msg = ("An internal error has occurred. Please retry or report in "
               "https://developers.generativeai.google/guide/troubleshooting")
    else:
        msg = message or f"Request failed with status {status}."
    err: dict[str, Any] = {"code": status, "message": msg,
                           "status": _GEMINI_STATUS.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")}
    if details is not None:
        err["details"] = details
    return status, headers, {"error": err}


def stream_error_frame(provider: str, chat: Chat, chunk_id: str, created: int) -> bytes:
    """The provider's in-stream error event (after a 200 response has started)."""
    if provider == "anthropic":
        return b"event: error\ndata: " + _dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}) + b"\n\n"
    if provider == "gemini":
        return b"data: " + _dumps({"error": {"code": 500, "message": "An internal error has occurred.",
                                             "status": "INTERNAL"}}) + b"\r\n\r\n"
    if provider == "openrouter":
        return b"data: " + _dumps({
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
            "provider": _OPENROUTER_UPSTREAM.get(chat.model.split("/", 1)[0], "Fake"),
            "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                         "native_finish_reason": "error"}],
        }) + b"\n\n"
    return b"data: " + _dumps({"error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": None, "code": None}}) + b"\n\n"


# ---------------------------------------------------------------------------------------------
# Response bodies and stream frames, per provider
# ---------------------------------------------------------------------------------------------


def _split_args(args: str) -> list[str]:
    mid = len(args) // 2
    return [args[:mid], args[mid:]]


def _openai_usage(plan: Plan, provider: str, cost: float | None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.output_tokens,
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
    }
    if provider == "openrouter":
        usage["cost"] = cost if cost is not None else 0
        usage["is_byok"] = False
        usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens,
                                          "cache_write_tokens": plan.cache_write_tokens}
        usage["cost_details"] = {"upstream_inference_cost": None}
        usage["completion_tokens_details"] = {"reasoning_tokens": plan.reasoning_tokens}
    else:
        usage["prompt_tokens_details"] = {"cached_tokens": plan.cached_tokens, "audio_tokens": plan.audio_tokens}
        usage["completion_tokens_details"] = {"reasoning_tokens": plan.reasoning_tokens, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": plan.rejected_prediction_tokens}
    return usage


def _openai_finish(plan: Plan) -> str:
    return {"stop": "stop", "length": "length", "tool": "tool_calls"}[plan.finish]


def openai_body(chat: Chat, plan: Plan, cost: float | None) -> dict[str, Any]:
    provider = chat.provider
    created = int(time.time())
    message: dict[str, Any] = {"role": "assistant", "content": plan.text if plan.tool_name is None else None,
                               "refusal": None}
    if plan.tool_name is not None:
        message["tool_calls"] = [{"id": "call_" + _new_id(), "type": "function",
                                  "function": {"name": plan.tool_name, "arguments": TOOL_ARGS_JSON}}]
    finish = _openai_finish(plan)
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    body: dict[str, Any]
    if provider == "openrouter":
        message["reasoning"] = None
        choice["native_finish_reason"] = finish
        body = {"id": f"gen-{created}-{_new_id(20)}", "provider": _openrouter_name(chat.model),
                "model": chat.model, "object": "chat.completion", "created": created, "choices": [choice],
                "system_fingerprint": None}
    else:
        message["annotations"] = []
        body = {"id": "chatcmpl-" + _new_id(), "object": "chat.completion", "created": created,
                "model": chat.model, "choices": [choice],
                "system_fingerprint": "fp_ollama" if provider == "compat" else "fp_fake0001"}
        if provider == "openai":
            body["service_tier"] = chat.service_tier if chat.service_tier not in (None, "auto") else "default"
    if plan.usage:
        body["usage"] = _openai_usage(plan, provider, cost)
    return body


def _openrouter_name(model: str) -> str:
    return _OPENROUTER_UPSTREAM.get(model.split("/", 1)[0], "Fake")


def openai_frames(chat: Chat, plan: Plan, cost: float | None, d: Directives) -> list[bytes]:
    provider = chat.provider
    created = int(time.time())
    if provider == "openrouter":
        chunk_id = f"gen-{created}-{_new_id(20)}"
    else:
        chunk_id = "chatcmpl-" + _new_id()
    head: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                            "model": chat.model}
    if provider == "openrouter":
        head["provider"] = _openrouter_name(chat.model)
    else:
        head["system_fingerprint"] = "fp_ollama" if provider == "compat" else "fp_fake0001"
    send_usage = chat.include_usage and plan.usage
    if send_usage and provider != "openrouter":
        head["usage"] = None  # OpenAI sets "usage": null on every chunk when include_usage is on

    def frame(delta: dict[str, Any], finish: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if provider == "openrouter":
            choice["native_finish_reason"] = finish
        return b"data: " + _dumps({**head, "choices": [choice]}) + b"\n\n"

    frames: list[bytes] = []
    if plan.tool_name is not None:
        frames.append(frame({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_" + _new_id(), "type": "function",
             "function": {"name": plan.tool_name, "arguments": ""}}]}, None))
        for piece in _split_args(TOOL_ARGS_JSON):
            frames.append(frame({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None))
    else:
        frames.append(frame({"role": "assistant", "content": ""}, None))
        for i, word in enumerate(plan.words):
            frames.append(frame({"content": word if i == 0 else " " + word}, None))
    frames.append(frame({}, _openai_finish(plan)))
    if send_usage:
        last = {**head, "choices": [], "usage": _openai_usage(plan, provider, cost)}
        frames.append(b"data: " + _dumps(last) + b"\n\n")
    return _with_stream_error(frames, d, stream_error_frame(provider, chat, chunk_id, created),
                              b"data: [DONE]\n\n")


def _with_stream_error(frames: list[bytes], d: Directives, error_frame: bytes,
                       terminator: bytes) -> list[bytes]:
    if d.stream_error is not None:
        return [*frames[: d.stream_error], error_frame]
    if terminator:
        frames.append(terminator)
    return frames


def _anthropic_stop(plan: Plan) -> str:
    return {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}[plan.finish]


def _anthropic_usage(plan: Plan) -> dict[str, Any]:
    writes_1h = plan.cache_write_tokens if plan.cache_write_1h else 0
    return {
        "input_tokens": plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens,
        "cache_creation_input_tokens": plan.cache_write_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": plan.cache_write_tokens - writes_1h,
                           "ephemeral_1h_input_tokens": writes_1h},
        "output_tokens": plan.output_tokens,
        "service_tier": "standard",
    }


def anthropic_body(chat: Chat, plan: Plan) -> dict[str, Any]:
    content: list[dict[str, Any]]
    if plan.tool_name is not None:
        content = [{"type": "tool_use", "id": "toolu_" + _new_id(), "name": plan.tool_name,
                    "input": dict(TOOL_ARGS)}]
    else:
        content = [{"type": "text", "text": plan.text}] if plan.words else []
    body: dict[str, Any] = {"id": "msg_" + _new_id(), "type": "message", "role": "assistant",
                            "model": chat.model, "content": content, "stop_reason": _anthropic_stop(plan),
                            "stop_sequence": None}
    if plan.usage:
        body["usage"] = _anthropic_usage(plan)
    return body


def _sse_event(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def anthropic_frames(chat: Chat, plan: Plan, d: Directives) -> list[bytes]:
    message: dict[str, Any] = {"id": "msg_" + _new_id(), "type": "message", "role": "assistant",
                               "model": chat.model, "content": [], "stop_reason": None, "stop_sequence": None}
    if plan.usage:
        start_usage = _anthropic_usage(plan)
        start_usage["output_tokens"] = 1
        message["usage"] = start_usage
    frames = [_sse_event("message_start", {"type": "message_start", "message": message})]
    if plan.tool_name is not None:
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_" + _new_id(), "name": plan.tool_name,
                                 "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece}
                  for piece in _split_args(TOOL_ARGS_JSON)]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": word if i == 0 else " " + word}
                  for i, word in enumerate(plan.words)]
    frames.append(_sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                                     "content_block": block}))
    frames.append(_sse_event("ping", {"type": "ping"}))
    for delta in deltas:
        frames.append(_sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": delta}))
    frames.append(_sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    message_delta: dict[str, Any] = {"type": "message_delta",
                                     "delta": {"stop_reason": _anthropic_stop(plan), "stop_sequence": None}}
    if plan.usage:
        message_delta["usage"] = {"output_tokens": plan.output_tokens}
    frames.append(_sse_event("message_delta", message_delta))
    frames.append(_sse_event("message_stop", {"type": "message_stop"}))
    return _with_stream_error(frames, d, stream_error_frame("anthropic", chat, "", 0), b"")


def _gemini_usage(plan: Plan, candidates: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": plan.prompt_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": plan.prompt_tokens + candidates + plan.reasoning_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}],
    }
    if plan.cached_tokens:
        usage["cachedContentTokenCount"] = plan.cached_tokens
    if plan.reasoning_tokens:
        usage["thoughtsTokenCount"] = plan.reasoning_tokens
    return usage


def _gemini_finish(plan: Plan) -> str:
    return "MAX_TOKENS" if plan.finish == "length" else "STOP"


def _gemini_chunk(chat: Chat, plan: Plan, parts: list[dict[str, Any]], finish: str | None,
                  candidates: int, response_id: str) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    chunk: dict[str, Any] = {"candidates": [candidate]}
    if plan.usage:
        chunk["usageMetadata"] = _gemini_usage(plan, candidates)
    chunk["modelVersion"] = chat.model
    chunk["responseId"] = response_id
    return chunk


def gemini_body(chat: Chat, plan: Plan) -> dict[str, Any]:
    if plan.tool_name is not None:
        parts: list[dict[str, Any]] = [{"functionCall": {"name": plan.tool_name, "args": dict(TOOL_ARGS)}}]
    else:
        parts = [{"text": plan.text}]
    return _gemini_chunk(chat, plan, parts, _gemini_finish(plan), plan.completion_tokens, _new_id(22))


def gemini_frames(chat: Chat, plan: Plan, d: Directives, sse: bool) -> list[bytes]:
    response_id = _new_id(22)
    finish = _gemini_finish(plan)
    objs: list[dict[str, Any]] = []
    if plan.tool_name is not None:
        objs.append(_gemini_chunk(chat, plan, [{"functionCall": {"name": plan.tool_name,
                                                                 "args": dict(TOOL_ARGS)}}],
                                  finish, plan.completion_tokens, response_id))
    elif not plan.words:
        objs.append(_gemini_chunk(chat, plan, [{"text": ""}], finish, 0, response_id))
    else:
        last = len(plan.words) - 1
        for i, word in enumerate(plan.words):
            objs.append(_gemini_chunk(chat, plan, [{"text": word if i == 0 else " " + word}],
                                      finish if i == last else None, i + 1, response_id))
    error = stream_error_frame("gemini", chat, "", 0)
    if sse:
        frames = [b"data: " + _dumps(o) + b"\r\n\r\n" for o in objs]
        return _with_stream_error(frames, d, error, b"")
    # Without alt=sse Gemini streams one JSON array.
    frames = [(b"[" if i == 0 else b",\r\n") + _dumps(o) for i, o in enumerate(objs)]
    if d.stream_error is not None:
        frames = frames[: d.stream_error]
        frames.append((b"," if frames else b"[") + error[len(b"data: "):-4] + b"]")
        return frames
    frames.append(b"]")
    return frames


# ---------------------------------------------------------------------------------------------
# The ASGI response that implements sleep / ttfb / chunk_delay / cut
# ---------------------------------------------------------------------------------------------


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _pause(seconds: float, watcher: asyncio.Future[None] | None) -> bool:
    """Sleep ``seconds``; return True (early) when the client has gone away."""
    if seconds <= 0:
        return bool(watcher and watcher.done())
    if watcher is None:
        await asyncio.sleep(seconds)
        return False
    done, _ = await asyncio.wait({watcher}, timeout=seconds)
    return bool(done)


class FakeResponse:
    """Either a full ``body`` or a list of stream ``frames``, with the timing directives applied."""

    __slots__ = ("body", "chunk_delay", "cut", "frames", "headers", "preamble", "sleep", "status", "ttfb")

    def __init__(self, status: int, headers: dict[str, str], *, body: bytes | None = None,
                 frames: list[bytes] | None = None, preamble: bytes = b"", sleep: float = 0.0,
                 ttfb: float = 0.0, chunk_delay: float = 0.0, cut: int | None = None) -> None:
        self.status = status
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.body = body
        self.frames = frames
        self.preamble = preamble
        self.sleep = sleep
        self.ttfb = ttfb
        self.chunk_delay = chunk_delay
        self.cut = cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher: asyncio.Future[None] | None = None
        if self.sleep or self.ttfb or self.chunk_delay:
            watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await self._send(send, watcher)
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _send(self, send: Send, watcher: asyncio.Future[None] | None) -> None:
        if self.sleep and await _pause(self.sleep, watcher):
            return
        headers = self.headers
        if self.body is not None:
            body = self.body
            await send({"type": "http.response.start", "status": self.status,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            if self.ttfb and await _pause(self.ttfb, watcher):
                return
            if self.cut is not None:
                # Half the body, then return without finishing: uvicorn closes the connection.
                await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
                return
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if self.preamble:
            await send({"type": "http.response.body", "body": self.preamble, "more_body": True})
        if self.ttfb and await _pause(self.ttfb, watcher):
            return
        for i, frame in enumerate(self.frames or ()):
            if self.cut is not None and i >= self.cut:
                return  # abrupt close, no terminator
            if i and self.chunk_delay and await _pause(self.chunk_delay, watcher):
                return
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _DropIncompleteResponseLog(logging.Filter):
    """``[[cut:N]]`` closes responses on purpose; hide uvicorn's error line about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropIncompleteResponseLog) for f in logger.filters):
        logger.addFilter(_DropIncompleteResponseLog())


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
_JSON_HEADERS = {"content-type": "application/json"}


class FakeProviders:
    """State (catalogues, failures, request log) and handlers of one fake-provider app."""

    def __init__(self) -> None:
        self.catalog: dict[str, list[Any]] = fake_catalog.default_catalog()
        self.catalog_fail: dict[str, int] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._seq = 0
        self._or_prices: dict[str, dict[str, Decimal]] | None = None

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        self.catalog = fake_catalog.default_catalog()
        self.catalog_fail.clear()
        self.requests.clear()
        self._or_prices = None

    def _log(self, provider: str, request: Request) -> dict[str, Any]:
        self._seq += 1
        headers = {k: v for k, v in request.headers.items() if k not in SECRET_HEADERS}
        query = {k: v for k, v in request.query_params.items() if k != "key"}
        entry: dict[str, Any] = {"id": self._seq, "ts": time.time(), "provider": provider,
                                 "method": request.method, "path": request.url.path, "query": query,
                                 "model": None, "key": None, "key_source": None, "headers": headers,
                                 "body": None, "stream": False, "status": None}
        self.requests.append(entry)
        return entry

    @staticmethod
    def _key(provider: str, request: Request) -> tuple[str | None, str | None]:
        h = request.headers
        if provider == "anthropic":
            key = h.get("x-api-key")
            if key:
                return key, "x-api-key"
            # Newer Anthropic SDKs send the API key as "Authorization: Bearer"; accept both.
        if provider == "gemini":
            key = h.get("x-goog-api-key")
            if key:
                return key, "x-goog-api-key"
            key = request.query_params.get("key")
            return (key, "query") if key else (None, None)
        auth = h.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip(), "authorization"
        return None, None

    def _check_auth(self, provider: str, request: Request, entry: dict[str, Any],
                    model: str = "") -> FakeResponse | None:
        key, source = self._key(provider, request)
        entry["key"], entry["key_source"] = key, source
        if key is None:
            return self._error(entry, provider, 401, model=model, kind="missing_key")
        if key.startswith("invalid"):
            return self._error(entry, provider, 401, model=model, kind="invalid_key", key=key)
        if provider == "anthropic" and not request.headers.get("anthropic-version"):
            return self._error(entry, provider, 400, model=model, kind="missing_version")
        return None

    def _error(self, entry: dict[str, Any], provider: str, status: int, *, model: str = "", kind: str = "",
               key: str = "", message: str = "", d: Directives | None = None) -> FakeResponse:
        status, headers, body = error_payload(provider, status, model=model, kind=kind, key=key,
                                              message=message, retry_after=d.retry_after if d else "1")
        entry["status"] = status
        return FakeResponse(status, {**_JSON_HEADERS, **headers}, body=_dumps(body),
                            sleep=d.sleep if d else 0.0, ttfb=d.ttfb if d else 0.0)

    def _openrouter_prices(self, model: str, d: Directives) -> dict[str, Decimal]:
        """The per-unit prices of the endpoint that serves ``model`` (``[[endpoint_price:F]]``)."""
        if self._or_prices is None:
            self._or_prices = fake_catalog.openrouter_pricing_index(self.catalog["openrouter"])
        listed = self._or_prices.get(model) or {}
        return {name: value * d.endpoint_price for name, value in listed.items() if value > 0}

    @staticmethod
    def _over_max_price(prices: dict[str, Decimal], max_price: dict[str, Any] | None) -> bool:
        if not max_price:
            return False
        per_million = {"prompt", "completion"}
        for name, cap in max_price.items():
            try:
                limit = Decimal(str(cap))
            except ArithmeticError:
                continue
            price = prices.get(name, Decimal(0)) * (1_000_000 if name in per_million else 1)
            if price > limit:
                return True
        return False

    @staticmethod
    def _openrouter_cost(prices: dict[str, Decimal], plan: Plan, d: Directives) -> float:
        if d.cost is not None:
            return float(d.cost)

        def price(name: str, fallback: str | None = None) -> Decimal:
            value = prices.get(name)
            if value is None and fallback is not None:
                value = prices.get(fallback)
            return value if value is not None else Decimal(0)

        cost = (Decimal(plan.prompt_tokens - plan.cached_tokens - plan.cache_write_tokens) * price("prompt")
                + Decimal(plan.cached_tokens) * price("input_cache_read", "prompt")
                + Decimal(plan.cache_write_tokens) * price("input_cache_write", "prompt")
                + Decimal(plan.output_tokens) * price("completion")
                + price("request"))
        return float(cost)  # OpenRouter reports a JSON number

    # -- chat --------------------------------------------------------------------------------

    async def chat(self, provider: str, request: Request, gemini_model: str = "",
                   gemini_stream: bool = False) -> FakeResponse:
        entry = self._log(provider, request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        entry["body"] = body
        if provider == "gemini":
            entry["model"] = gemini_model
        elif isinstance(body, dict):
            entry["model"] = body.get("model")
        denied = self._check_auth(provider, request, entry, model=str(entry["model"] or ""))
        if denied is not None:
            return denied
        if not isinstance(body, dict):
            return self._error(entry, provider, 400, message="Could not parse the JSON body of your request.")
        if provider == "anthropic":
            chat = parse_anthropic_chat(body)
            extra = sorted(set(body) - ANTHROPIC_FIELDS)
            problem = ("model: Field required" if not chat.model else
                       "messages: Field required" if not body.get("messages") else
                       "max_tokens: Field required" if chat.max_tokens is None else
                       f"{extra[0]}: Extra inputs are not permitted" if extra else anthropic_thinking_problem(body))
        elif provider == "gemini":
            chat = parse_gemini_chat(gemini_model, body, gemini_stream)
            extra = sorted(set(body) - GEMINI_FIELDS)
            problem = ("* GenerateContentRequest.contents: contents is not specified" if not body.get("contents") else
                       f'Invalid JSON payload received. Unknown name "{extra[0]}": Cannot find field.' if extra
                       else gemini_thinking_problem(gemini_model, body))
        else:
            chat = parse_openai_chat(provider, body)
            problem = ("you must provide a model parameter" if not chat.model else
                       "Missing required parameter: 'messages'." if not body.get("messages") else "")
        entry["stream"] = chat.stream
        if problem:
            return self._error(entry, provider, 400, model=chat.model, message=problem)
        d = parse_directives(chat.last_user_text, chat.model)
        if d.fail is not None:
            return self._error(entry, provider, d.fail, model=chat.model, key=entry["key"] or "", d=d)
        cost: float | None = None
        if provider == "openrouter":
            prices = self._openrouter_prices(chat.model, d)
            if self._over_max_price(prices, chat.max_price):
                return self._error(entry, provider, 404, model=chat.model,
                                   message=f"No endpoints found for {chat.model} matching your max_price.")
        plan = make_plan(chat, d)
        if provider == "openrouter":
            cost = self._openrouter_cost(prices, plan, d)
        entry["status"] = 200

        def respond(headers: dict[str, str], **kw: Any) -> FakeResponse:
            return FakeResponse(200, headers, sleep=d.sleep, ttfb=d.ttfb, chunk_delay=d.chunk_delay, cut=d.cut,
                                **kw)

        if provider in ("openai", "openrouter", "compat"):
            if chat.stream:
                preamble = b": OPENROUTER PROCESSING\n\n" if provider == "openrouter" else b""
                return respond(_SSE_HEADERS, frames=openai_frames(chat, plan, cost, d), preamble=preamble)
            body_out = openai_body(chat, plan, cost)
            if d.malformed:
                body_out["choices"] = {"unexpected": True}
            if d.nan:
                body_out["choices"][0]["logprobs"] = {"content": [
                    {"token": "Hello", "logprob": float("nan"), "bytes": None, "top_logprobs": []}]}
            return respond(_JSON_HEADERS, body=_dumps(body_out))
        if provider == "anthropic":
            headers = {"request-id": "req_" + _new_id()}
            if chat.stream:
                return respond({**_SSE_HEADERS, **headers}, frames=anthropic_frames(chat, plan, d))
            message = anthropic_body(chat, plan)
            if d.malformed:
                message["content"] = {"unexpected": True}
            return respond({**_JSON_HEADERS, **headers}, body=_dumps(message))
        if chat.stream:
            sse = request.query_params.get("alt") == "sse"
            headers = {"content-type": "text/event-stream"} if sse else _JSON_HEADERS
            return respond(headers, frames=gemini_frames(chat, plan, d, sse))
        return respond(_JSON_HEADERS, body=_dumps(gemini_body(chat, plan)))

    async def gemini_models_route(self, request: Request) -> FakeResponse | Response:
        rest = request.path_params["rest"]
        if request.method == "GET":
            return await self.get_model("gemini", request, rest)
        model, _, method = rest.partition(":")
        if method in ("generateContent", "streamGenerateContent"):
            return await self.chat("gemini", request, gemini_model=model,
                                   gemini_stream=method == "streamGenerateContent")
        entry = self._log("gemini", request)
        entry["model"] = model
        return self._error(entry, "gemini", 404, model=model)

    # -- models ------------------------------------------------------------------------------

    async def list_models(self, provider: str, request: Request) -> FakeResponse | Response:
        entry = self._log(provider, request)
        if provider == "openrouter":  # public endpoint on the real service
            entry["key"], entry["key_source"] = self._key(provider, request)
        else:
            denied = self._check_auth(provider, request, entry)
            if denied is not None:
                return denied
        fail = self.catalog_fail.get(provider)
        if fail is not None:
            return self._error(entry, provider, fail)
        entry["status"] = 200
        models = self.catalog[provider]
        if provider == "anthropic":
            return JSONResponse(self._anthropic_page(models, request))
        if provider == "gemini":
            return JSONResponse(self._gemini_page(models, request))
        if provider == "openrouter":
            return JSONResponse({"data": models})
        return JSONResponse({"object": "list", "data": models})

    @staticmethod
    def _anthropic_page(models: list[Any], request: Request) -> dict[str, Any]:
        q = request.query_params
        limit = min(max(_int_or_none(q.get("limit")) or 20, 1), 1000)
        ids = [m.get("id") if isinstance(m, dict) else None for m in models]
        after, before = q.get("after_id"), q.get("before_id")
        if after in ids:
            window = models[ids.index(after) + 1:]
            page, has_more = window[:limit], len(window) > limit
        elif before in ids:
            window = models[: ids.index(before)]
            page, has_more = window[-limit:], len(window) > limit
        else:
            page, has_more = models[:limit], len(models) > limit
        first = page[0].get("id") if page and isinstance(page[0], dict) else None
        last = page[-1].get("id") if page and isinstance(page[-1], dict) else None
        return {"data": page, "has_more": has_more, "first_id": first, "last_id": last}

    @staticmethod
    def _gemini_page(models: list[Any], request: Request) -> dict[str, Any]:
        q = request.query_params
        size = min(max(_int_or_none(q.get("pageSize")) or 50, 1), 1000)
        token = q.get("pageToken") or ""
        start = (_int_or_none(token.removeprefix("fake-page-")) or 0) if token.startswith("fake-page-") else 0
        page = models[start:start + size]
        out: dict[str, Any] = {"models": page}
        if start + size < len(models):
            out["nextPageToken"] = f"fake-page-{start + size}"
        return out

    async def get_model(self, provider: str, request: Request, model_id: str = "") -> FakeResponse | Response:
        model_id = model_id or request.path_params["model_id"]
        entry = self._log(provider, request)
        entry["model"] = model_id
        denied = self._check_auth(provider, request, entry, model=model_id)
        if denied is not None:
            return denied
        key_field = "name" if provider == "gemini" else "id"
        wanted = f"models/{model_id}" if provider == "gemini" and not model_id.startswith("models/") \
            else model_id
        for m in self.catalog[provider]:
            if isinstance(m, dict) and m.get(key_field) == wanted:
                entry["status"] = 200
                return JSONResponse(m)
        return self._error(entry, provider, 404, model=model_id)

    # -- control endpoints -------------------------------------------------------------------

    async def get_requests(self, request: Request) -> Response:
        provider = request.query_params.get("provider")
        items = [e for e in self.requests if provider is None or e["provider"] == provider]
        limit = _int_or_none(request.query_params.get("limit"))
        if limit is not None and limit >= 0:
            items = items[len(items) - limit:] if limit else []
        return JSONResponse(items)

    async def clear_requests(self, request: Request) -> Response:
        self.requests.clear()
        return JSONResponse({"ok": True})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def reset_route(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    @staticmethod
    def _catalog_provider(request: Request) -> str | None:
        provider = request.path_params["provider"]
        return provider if provider in PROVIDERS else None

    async def catalog_get(self, request: Request) -> Response:
        provider = self._catalog_provider(request)
        if provider is None:
            return JSONResponse({"error": "unknown provider"}, status_code=404)
        return JSONResponse(self.catalog[provider])

    async def catalog_put(self, request: Request) -> Response:
        provider = self._catalog_provider(request)
        if provider is None:
            return JSONResponse({"error": "unknown provider"}, status_code=404)
        try:
            models = await request.json()
        except ValueError:
            models = None
        if not isinstance(models, list):
            return JSONResponse({"error": "expected a JSON list of models"}, status_code=400)
        self.catalog[provider] = [fake_catalog.expand_model(provider, m) for m in models]
        if provider == "openrouter":
            self._or_prices = None
        return JSONResponse({"ok": True, "count": len(self.catalog[provider])})

    async def catalog_fail_set(self, request: Request) -> Response:
        provider = self._catalog_provider(request)
        if provider is None:
            return JSONResponse({"error": "unknown provider"}, status_code=404)
        try:
            payload = await request.json()
        except ValueError:
            payload = {}
        status = _int_or_none(payload.get("status") if isinstance(payload, dict) else None) or 500
        self.catalog_fail[provider] = status
        return JSONResponse({"ok": True, "status": status})

    async def catalog_fail_clear(self, request: Request) -> Response:
        provider = self._catalog_provider(request)
        if provider is None:
            return JSONResponse({"error": "unknown provider"}, status_code=404)
        self.catalog_fail.pop(provider, None)
        return JSONResponse({"ok": True})

    # -- routing -----------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        def chat_endpoint(provider: str) -> Any:
            async def endpoint(request: Request) -> FakeResponse:
                return await self.chat(provider, request)
            return endpoint

        def models_endpoint(provider: str) -> Any:
            async def endpoint(request: Request) -> FakeResponse | Response:
                return await self.list_models(provider, request)
            return endpoint

        def model_endpoint(provider: str) -> Any:
            async def endpoint(request: Request) -> FakeResponse | Response:
                return await self.get_model(provider, request)
            return endpoint

        routes = []
        for provider in ("openai", "openrouter", "compat"):
            base = BASE_PATHS[provider]
            routes.append(Route(f"{base}/chat/completions", chat_endpoint(provider), methods=["POST"]))
            routes.append(Route(f"{base}/models", models_endpoint(provider), methods=["GET"]))
            if provider != "openrouter":
                routes.append(Route(f"{base}/models/{{model_id:path}}", model_endpoint(provider),
                                    methods=["GET"]))
        anthropic = BASE_PATHS["anthropic"]
        routes += [
            Route(f"{anthropic}/messages", chat_endpoint("anthropic"), methods=["POST"]),
            Route(f"{anthropic}/models", models_endpoint("anthropic"), methods=["GET"]),
            Route(f"{anthropic}/models/{{model_id}}", model_endpoint("anthropic"), methods=["GET"]),
            Route(f"{BASE_PATHS['gemini']}/models", models_endpoint("gemini"), methods=["GET"]),
            Route(f"{BASE_PATHS['gemini']}/models/{{rest:path}}", self.gemini_models_route,
                  methods=["GET", "POST"]),
            Route("/__fake/health", self.health, methods=["GET"]),
            Route("/__fake/requests", self.get_requests, methods=["GET"]),
            Route("/__fake/requests", self.clear_requests, methods=["DELETE"]),
            Route("/__fake/reset", self.reset_route, methods=["POST"]),
            Route("/__fake/catalog/{provider}", self.catalog_get, methods=["GET"]),
            Route("/__fake/catalog/{provider}", self.catalog_put, methods=["PUT"]),
            Route("/__fake/catalog/{provider}/fail", self.catalog_fail_set, methods=["POST"]),
            Route("/__fake/catalog/{provider}/fail", self.catalog_fail_clear, methods=["DELETE"]),
        ]
        return routes


def create_app() -> Starlette:
    """A fresh fake-provider app (its state is ``app.state.fake``, a :class:`FakeProviders`)."""
    from infra.local import fake_surfaces  # embeddings, Responses, count_tokens (same state)

    _install_log_filter()
    fake = FakeProviders()
    app = Starlette(routes=fake_surfaces.routes(fake) + fake.routes())
    app.state.fake = fake
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Fake OpenAI/OpenRouter/Anthropic/Gemini/compat providers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    url = f"http://{args.host}:{args.port}"
    for provider, base in base_urls(url).items():
        print(f"fake {provider:<10} {base}", flush=True)
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
