"""The fake providers' newer API surfaces (mounted by ``fake_providers.create_app``, same state):

    openai      {server}/openai/v1            POST /embeddings, POST /responses (plain and stream)
    openrouter  {server}/openrouter/api/v1    POST /embeddings, GET /embeddings/models
    compat      {server}/compat/v1            POST /embeddings
    gemini      {server}/gemini/v1beta        POST /models/{model}:embedContent, :batchEmbedContents,
                                              :countTokens
    anthropic   {server}/anthropic/v1         POST /messages/count_tokens

Authentication, the request log (``/__fake/requests``) and error bodies are the chat endpoints'
(see ``fake_providers``). Directives (``[[fail:CODE]]``, ``[[sleep:S]]``, …) are read from the text
being embedded and, for Responses, from the last user message of ``input``.

Embeddings: a deterministic unit vector per input (from the SHA-256 of its text, or of its token
ids), 16 dimensions unless ``dimensions`` / ``outputDimensionality`` asks for another size (at most
4096); ``encoding_format: base64`` gives little-endian float32 in base64, as OpenAI does. Usage:
ceil(characters / 4) tokens per text (at least 1), one per token id. Gemini's embed answers carry no
token count (what our gateway must bill without; ``[[embed_usage]]`` in a batch adds Google's
``usageMetadata`` with ``promptTokenCount``, as its reference documents for newer models). At most
2048 inputs (OpenAI) and 100 requests per Gemini batch.

Gemini ``countTokens`` (Google's REST shape: ``{"contents": [Content...]}`` or
``{"generateContentRequest": {"contents": [...]}}``, which makes ``contents`` ignored; answers ``{"totalTokens": N,
"promptTokensDetails": [{"modality": "TEXT", "tokenCount": N}]}``), N the sum of the embeddings rule
over every ``Content``'s text. It obeys only its own directives, read from the texts it counts (so
an embed batch and its count can be driven apart): ``[[count_fail:CODE]]`` (Gemini's error),
``[[count_sleep:S]]`` (answers after S seconds), ``[[count_tokens:N]]`` (reports N, even negative)
and ``[[count_tokens:none]]`` (no ``totalTokens``: what proto3 JSON sends for 0). OpenRouter adds
``usage.cost`` (USD, at the serving endpoint's price: the catalogue's x ``[[endpoint_price:F]]``) and,
as for chat, answers its 404 when that endpoint costs more than the request's ``provider.max_price``.

Responses (``POST /openai/v1/responses``): the chat fake's reply and token rules (``Hello from openai
<model>.``, ``[[words:N]]``, ``[[tool:NAME]]`` when function tools were sent, ``[[reasoning:N]]`` adds
a reasoning item and reasoning tokens, ``[[cached:N]]``, ``[[nousage]]`` → ``usage: null``);
``max_output_tokens`` cuts the words and answers ``status: incomplete``; a top-level field the real API
does not know is a 400. A stream sends the typed
events with ``sequence_number`` (``[[stream_error:N]]``: an ``error`` event after N events;
``[[cut:N]]``, ``[[chunk_delay:S]]``, ``[[ttfb:S]]`` as for chat). ``previous_response_id`` is a 400
"not found" (the fake stores nothing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import time
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infra.local import fake_catalog
from infra.local.fake_providers import (
    BASE_PATHS,
    TOOL_ARGS_JSON,
    Chat,
    Directives,
    FakeResponse,
    Plan,
    _new_id,
    count_prompt_tokens,
    make_plan,
    parse_anthropic_chat,
    parse_directives,
)

if TYPE_CHECKING:
    from infra.local.fake_providers import FakeProviders

DEFAULT_DIMENSIONS = 16
# The top-level fields of OpenAI's Responses request (the openai SDK's ``ResponseCreateParams``);
# any other is refused (400), as the real API does.
RESPONSES_FIELDS = frozenset({
    "access_programs", "background", "background_options", "context_management", "conversation", "image", "include",
    "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation",
    "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream", "stream_options",
    "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user"})
MAX_DIMENSIONS = 4096
MAX_OPENAI_INPUTS = 2048
MAX_GEMINI_BATCH = 100
_JSON = {"content-type": "application/json"}
# The directives of the Gemini embed/countTokens fakes (the chat fake's parse_directives has the rest).
_COUNT_DIRECTIVE_RE = re.compile(r"\[\[(count_fail|count_sleep|count_tokens|embed_usage)(?::([^\]]*))?\]\]")
_SSE = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _id(prefix: str) -> str:
    return prefix + _new_id()


def fake_vector(seed: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``seed``."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    raw = [(digest[i % len(digest)] ^ (i * 37 % 256)) / 127.5 - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


class FakeSurfaces:
    def __init__(self, fake: FakeProviders) -> None:
        self.fake = fake

    async def _start(self, provider: str, request: Request, model: str | None = None
                     ) -> tuple[dict[str, Any], Any, FakeResponse | None]:
        """Log, read the JSON body and check the key: ``(log entry, body, error response or None)``."""
        entry = self.fake._log(provider, request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        entry["body"] = body
        entry["model"] = model if model is not None else (body.get("model") if isinstance(body, dict) else None)
        denied = self.fake._check_auth(provider, request, entry, model=str(entry["model"] or ""))
        if denied is not None:
            return entry, body, denied
        if not isinstance(body, dict):
            return entry, body, self.fake._error(entry, provider, 400,
                                                 message="Could not parse the JSON body of your request.")
        return entry, body, None

    def _fail(self, entry: dict[str, Any], provider: str, d: Directives, model: str) -> FakeResponse | None:
        if d.fail is None:
            return None
        return self.fake._error(entry, provider, d.fail, model=model, key=entry["key"] or "", d=d)

    # -------------------------------------------------------------------------- embeddings (OpenAI)
    async def openai_embeddings(self, provider: str, request: Request) -> FakeResponse:
        entry, body, problem = await self._start(provider, request)
        if problem is not None:
            return problem
        model = str(body.get("model") or "")
        items = _openai_inputs(body.get("input"))
        if not model:
            return self.fake._error(entry, provider, 400, message="you must provide a model parameter")
        if items is None:
            return self.fake._error(entry, provider, 400, model=model,
                                    message="'$.input' is invalid. Please check the API reference.")
        d = parse_directives(" ".join(t for t in items if isinstance(t, str)), model)
        failed = self._fail(entry, provider, d, model)
        if failed is not None:
            return failed
        dims = _dimensions(body.get("dimensions"))
        if dims is None:
            return self.fake._error(entry, provider, 400, model=model, message="Invalid value for 'dimensions'.")
        prices: dict[str, Decimal] = {}
        if provider == "openrouter":  # the endpoint's price, and routing under ``provider.max_price``
            prices = {name: value * d.endpoint_price
                      for name, value in _openrouter_embedding_prices().get(model, {}).items() if value > 0}
            prefs = body.get("provider")
            max_price = prefs.get("max_price") if isinstance(prefs, dict) else None
            if self.fake._over_max_price(prices, max_price if isinstance(max_price, dict) else None):
                return self.fake._error(entry, provider, 404, model=model,
                                        message=f"No endpoints found for {model} matching your max_price.")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for index, item in enumerate(items):
            seed = item if isinstance(item, str) else ",".join(map(str, item))
            tokens += count_prompt_tokens(len(item)) if isinstance(item, str) else len(item)
            vector: Any = fake_vector(seed, dims)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        out: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if not d.nousage:
            out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
            if provider == "openrouter":  # what the call cost at the endpoint that served it (USD)
                cost = tokens * prices.get("prompt", Decimal(0)) + prices.get("request", Decimal(0))
                out["usage"]["cost"] = float(cost)
        entry["status"] = 200
        return FakeResponse(200, _JSON, body=_dumps(out), sleep=d.sleep, ttfb=d.ttfb, cut=d.cut)

    async def openrouter_embedding_models(self, request: Request) -> FakeResponse | Response:
        """OpenRouter's ``GET /embeddings/models`` (public, like ``/models``; fails with it when
        ``/__fake/catalog/openrouter/fail`` is set)."""
        entry = self.fake._log("openrouter", request)
        entry["key"], entry["key_source"] = self.fake._key("openrouter", request)
        fail = self.fake.catalog_fail.get("openrouter")
        if fail is not None:
            return self.fake._error(entry, "openrouter", fail)
        entry["status"] = 200
        return JSONResponse({"data": fake_catalog.openrouter_embedding_models()})

    # -------------------------------------------------------------------------- embeddings (Gemini)
    async def gemini_embed(self, request: Request) -> FakeResponse:
        model = request.path_params["model"]
        batch = request.url.path.endswith(":batchEmbedContents")
        entry, body, problem = await self._start("gemini", request, model)
        if problem is not None:
            return problem
        requests = body.get("requests") if batch else [body]
        if not isinstance(requests, list) or not requests:
            return self.fake._error(entry, "gemini", 400, model=model,
                                    message="* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > MAX_GEMINI_BATCH:
            return self.fake._error(entry, "gemini", 400, model=model,
                                    message=f"* BatchEmbedContentsRequest.requests: at most {MAX_GEMINI_BATCH} "
                                            f"requests can be in one batch")
        texts = []
        for i, item in enumerate(requests):
            if batch and item.get("model") != f"models/{model}":
                return self.fake._error(entry, "gemini", 400, model=model,
                                        message=f"* BatchEmbedContentsRequest.requests[{i}].model: the model must "
                                                f"be models/{model}")
            parts = ((item.get("content") or {}).get("parts") or []) if isinstance(item, dict) else []
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict))
            if not text:
                return self.fake._error(entry, "gemini", 400, model=model,
                                        message="* EmbedContentRequest.content: contents is not specified")
            texts.append((text, _dimensions(item.get("outputDimensionality"))))
        d = parse_directives(" ".join(t for t, _ in texts), model)
        failed = self._fail(entry, "gemini", d, model)
        if failed is not None:
            return failed
        if any(dims is None for _, dims in texts):
            return self.fake._error(entry, "gemini", 400, model=model, message="Invalid outputDimensionality.")
        embeddings = [{"values": fake_vector(text, dims or DEFAULT_DIMENSIONS)} for text, dims in texts]
        out: dict[str, Any] = {"embeddings": embeddings} if batch else {"embedding": embeddings[0]}
        if "embed_usage" in _gemini_directives(" ".join(t for t, _ in texts)):
            tokens = sum(_embedding_tokens(t) for t, _ in texts)
            out["usageMetadata"] = {"promptTokenCount": tokens,
                                    "promptTokenDetails": [{"modality": "TEXT", "tokenCount": tokens}]}
        entry["status"] = 200
        return FakeResponse(200, _JSON, body=_dumps(out), sleep=d.sleep, ttfb=d.ttfb, cut=d.cut)

    async def gemini_count_tokens(self, request: Request) -> FakeResponse:
        """``POST models/{model}:countTokens`` (Google's REST shape; see the module docstring)."""
        model = request.path_params["model"]
        entry, body, problem = await self._start("gemini", request, model)
        if problem is not None:
            return problem
        wrapped = body.get("generateContentRequest")  # when set, ``contents`` is ignored (Google's reference)
        contents = (wrapped.get("contents") if isinstance(wrapped, dict) else None) if wrapped is not None \
            else body.get("contents")
        if not isinstance(contents, list) or not contents or not all(isinstance(c, dict) for c in contents):
            return self.fake._error(entry, "gemini", 400, model=model,
                                    message="* CountTokensRequest.contents: contents is not specified")
        texts = ["".join(p.get("text", "") for p in (c.get("parts") or []) if isinstance(p, dict))
                 for c in contents]
        d = _gemini_directives(" ".join(texts))
        sleep = _float(d.get("count_sleep")) or 0.0
        fail = _arg_int(d.get("count_fail"))
        if fail is not None and 400 <= fail <= 599:
            return self.fake._error(entry, "gemini", fail, model=model, d=Directives(sleep=sleep))
        total: int | None = sum(_embedding_tokens(t) for t in texts)
        if "count_tokens" in d:
            total = _arg_int(d["count_tokens"])
        out: dict[str, Any] = {}
        if total is not None:
            out = {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}
        entry["status"] = 200
        return FakeResponse(200, _JSON, body=_dumps(out), sleep=sleep)

    # -------------------------------------------------------------------------- Anthropic count_tokens
    async def anthropic_count_tokens(self, request: Request) -> FakeResponse:
        entry, body, problem = await self._start("anthropic", request)
        if problem is not None:
            return problem
        chat = parse_anthropic_chat(body)
        if not chat.model or not body.get("messages"):
            return self.fake._error(entry, "anthropic", 400, model=chat.model,
                                    message="messages: Field required" if chat.model else "model: Field required")
        d = parse_directives(chat.last_user_text, chat.model)
        failed = self._fail(entry, "anthropic", d, chat.model)
        if failed is not None:
            return failed
        entry["status"] = 200
        return FakeResponse(200, _JSON, body=_dumps({"input_tokens": count_prompt_tokens(chat.prompt_chars)}))

    # -------------------------------------------------------------------------- Responses (OpenAI)
    async def responses(self, request: Request) -> FakeResponse:
        entry, body, problem = await self._start("openai", request)
        if problem is not None:
            return problem
        model = str(body.get("model") or "")
        if not model:
            return self.fake._error(entry, "openai", 400, message="Missing required parameter: 'model'.")
        extra = sorted(set(body) - RESPONSES_FIELDS)
        if extra:
            return self.fake._error(entry, "openai", 400, model=model, message=f"Unknown parameter: '{extra[0]}'.")
        if body.get("previous_response_id"):
            return self.fake._error(entry, "openai", 400, model=model,
                                    message=f"Previous response with id '{body['previous_response_id']}' not found.")
        chars, last_user = _responses_text(body)
        if body.get("input") in (None, "", []):
            return self.fake._error(entry, "openai", 400, model=model, message="Missing required parameter: 'input'.")
        has_tools = any(isinstance(t, dict) and t.get("type") == "function" for t in body.get("tools") or [])
        chat = Chat("openai", model, bool(body.get("stream")), _int(body.get("max_output_tokens")), chars, last_user,
                    has_tools, True)
        entry["stream"] = chat.stream
        d = parse_directives(last_user, model)
        failed = self._fail(entry, "openai", d, model)
        if failed is not None:
            return failed
        plan = make_plan(chat, d)
        entry["status"] = 200
        builder = _ResponseBuilder(body, model, plan)
        if chat.stream:
            frames = builder.frames()
            if d.stream_error is not None:
                frames = [*frames[: d.stream_error], builder.error_frame(min(d.stream_error, len(frames)))]
            return FakeResponse(200, _SSE, frames=frames, sleep=d.sleep, ttfb=d.ttfb, chunk_delay=d.chunk_delay,
                                cut=d.cut)
        return FakeResponse(200, _JSON, body=_dumps(builder.response(builder.items(), final=True)), sleep=d.sleep,
                            ttfb=d.ttfb, cut=d.cut)


@cache
def _openrouter_embedding_prices() -> dict[str, dict[str, Decimal]]:
    """OpenRouter's embedding models' per-unit prices (its ``/embeddings/models`` list)."""
    return fake_catalog.openrouter_pricing_index(fake_catalog.openrouter_embedding_models())


def _gemini_directives(text: str) -> dict[str, str]:
    """The ``[[count_*]]`` / ``[[embed_usage]]`` directives in ``text`` (name -> argument)."""
    return {name: arg.strip() for name, arg in _COUNT_DIRECTIVE_RE.findall(text)} if "[[" in text else {}


def _embedding_tokens(text: str) -> int:
    """The fake's embedding token rule: ceil(characters / 4), at least 1 (OpenAI-format fakes too)."""
    return max(1, math.ceil(len(text) / 4))


def _arg_int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return min(max(number, 0.0), 30.0) if number == number else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dimensions(value: Any) -> int | None:
    if value is None:
        return DEFAULT_DIMENSIONS
    n = _int(value)
    return n if n is not None and 1 <= n <= MAX_DIMENSIONS else None


def _openai_inputs(value: Any) -> list[Any] | None:
    """OpenAI's input forms as a list of texts or token-id lists; None when invalid."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value or len(value) > MAX_OPENAI_INPUTS:
        return None
    if all(_int(v) is not None for v in value):
        return [value]
    if all(isinstance(v, str) and v for v in value):
        return list(value)
    if all(isinstance(v, list) and v and all(_int(x) is not None for x in v) for v in value):
        return list(value)
    return None


def _responses_text(body: dict[str, Any]) -> tuple[int, str]:
    """(characters of instructions + input text, text of the last user message)."""
    chars = len(body.get("instructions") or "")
    value = body.get("input")
    if isinstance(value, str):
        return chars + len(value), value
    last_user = ""
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("content") if item.get("type", "message") == "message" else item.get("output")
        if isinstance(content, str):
            text = content
        else:
            text = "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
        chars += len(text)
        if item.get("role") == "user":
            last_user = text
    return chars, last_user


class _ResponseBuilder:
    """One fake response: its output items, the Response object and the stream's event frames."""

    def __init__(self, body: dict[str, Any], model: str, plan: Plan) -> None:
        self.body, self.model, self.plan = body, model, plan
        self.id = _id("resp_")
        self.created = int(time.time())
        self.seq = 0

    def items(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.plan.reasoning_tokens:
            out.append({"id": _id("rs_"), "type": "reasoning", "summary": []})
        if self.plan.tool_name is not None:
            out.append({"id": _id("fc_"), "type": "function_call", "status": "completed", "call_id": _id("call_"),
                        "name": self.plan.tool_name, "arguments": TOOL_ARGS_JSON})
        else:
            status = "incomplete" if self.plan.finish == "length" else "completed"
            out.append({"id": _id("msg_"), "type": "message", "status": status, "role": "assistant",
                        "content": [{"type": "output_text", "text": self.plan.text, "annotations": [],
                                     "logprobs": []}]})
        return out

    def response(self, output: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        plan = self.plan
        status = ("incomplete" if plan.finish == "length" else "completed") if final else "in_progress"
        usage = None
        if final and plan.usage:
            usage = {"input_tokens": plan.prompt_tokens,
                     "input_tokens_details": {"cached_tokens": plan.cached_tokens, "cache_write_tokens": 0},
                     "output_tokens": plan.output_tokens,
                     "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
                     "total_tokens": plan.prompt_tokens + plan.output_tokens}
        tools = [t for t in self.body.get("tools") or [] if isinstance(t, dict)]
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "background": False, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
                "instructions": self.body.get("instructions"), "max_output_tokens": self.body.get("max_output_tokens"),
                "model": self.model, "output": output,
                "parallel_tool_calls": self.body.get("parallel_tool_calls", True),
                "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
                "service_tier": "default", "store": self.body.get("store", True),
                "temperature": self.body.get("temperature", 1.0), "text": {"format": {"type": "text"}},
                "tool_choice": self.body.get("tool_choice", "auto"), "tools": tools,
                "top_p": self.body.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
                "user": self.body.get("user"), "metadata": self.body.get("metadata") or {}}

    def _event(self, kind: str, **fields: Any) -> bytes:
        frame = b"event: " + kind.encode() + b"\ndata: " + _dumps({"type": kind, "sequence_number": self.seq,
                                                                    **fields}) + b"\n\n"
        self.seq += 1
        return frame

    def error_frame(self, sequence_number: int) -> bytes:
        self.seq = sequence_number
        return self._event("error", code="server_error", message="The server had an error while processing your "
                                                                   "request. Sorry about that!", param=None)

    def frames(self) -> list[bytes]:
        frames = [self._event("response.created", response=self.response([], final=False)),
                  self._event("response.in_progress", response=self.response([], final=False))]
        items = self.items()
        for index, item in enumerate(items):
            ids = {"item_id": item["id"], "output_index": index}
            if item["type"] == "message":
                started = {**item, "status": "in_progress", "content": []}
                part = item["content"][0]
                frames.append(self._event("response.output_item.added", output_index=index, item=started))
                frames.append(self._event("response.content_part.added", **ids, content_index=0,
                                          part={**part, "text": ""}))
                for i, word in enumerate(self.plan.words):
                    frames.append(self._event("response.output_text.delta", **ids, content_index=0,
                                              delta=word if i == 0 else " " + word, logprobs=[]))
                frames.append(self._event("response.output_text.done", **ids, content_index=0, text=part["text"],
                                          logprobs=[]))
                frames.append(self._event("response.content_part.done", **ids, content_index=0, part=part))
            elif item["type"] == "function_call":
                frames.append(self._event("response.output_item.added", output_index=index,
                                          item={**item, "status": "in_progress", "arguments": ""}))
                mid = len(TOOL_ARGS_JSON) // 2
                for piece in (TOOL_ARGS_JSON[:mid], TOOL_ARGS_JSON[mid:]):
                    frames.append(self._event("response.function_call_arguments.delta", **ids, delta=piece))
                frames.append(self._event("response.function_call_arguments.done", **ids, arguments=TOOL_ARGS_JSON))
            else:
                frames.append(self._event("response.output_item.added", output_index=index, item=item))
            frames.append(self._event("response.output_item.done", output_index=index, item=item))
        final = self.response(items, final=True)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        frames.append(self._event(kind, response=final))
        return frames


def routes(fake: FakeProviders) -> list[Route]:
    """The routes to mount before the chat fake's own (its Gemini ``models/{rest}`` route is a catch-all)."""
    s = FakeSurfaces(fake)

    def embeddings(provider: str) -> Any:
        async def endpoint(request: Request) -> FakeResponse:
            return await s.openai_embeddings(provider, request)
        return endpoint

    gemini = BASE_PATHS["gemini"]
    out = [Route(f"{BASE_PATHS[p]}/embeddings", embeddings(p), methods=["POST"])
           for p in ("openai", "openrouter", "compat")]
    out += [
        Route(f"{BASE_PATHS['openai']}/responses", s.responses, methods=["POST"]),
        Route(f"{BASE_PATHS['openrouter']}/embeddings/models", s.openrouter_embedding_models, methods=["GET"]),
        Route(f"{gemini}/models/{{model}}:embedContent", s.gemini_embed, methods=["POST"]),
        Route(f"{gemini}/models/{{model}}:batchEmbedContents", s.gemini_embed, methods=["POST"]),
        Route(f"{gemini}/models/{{model}}:countTokens", s.gemini_count_tokens, methods=["POST"]),
        Route(f"{BASE_PATHS['anthropic']}/messages/count_tokens", s.anthropic_count_tokens, methods=["POST"]),
    ]
    return out

