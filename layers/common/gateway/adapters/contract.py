"""The adapter contract: what the chat pipeline hands an adapter and gets back.

An adapter turns the client's OpenAI ``chat.completions`` request (a plain dict) into one upstream
call and the upstream answer back into OpenAI shapes:

* ``complete`` → an OpenAI ``chat.completion`` dict and the :class:`Usage` to bill;
* ``stream`` → an :class:`UpstreamStream`: ``open()`` sends the request and fails *before any
  output* with :class:`~gateway.errors.UpstreamError` (so the caller may fall back to another
  model); iterating yields OpenAI ``chat.completion.chunk`` dicts; ``usage`` is kept up to date.

Which adapter serves which provider is ``gateway.adapters.registry``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import field, fields
from decimal import Decimal
from typing import Any, Protocol

from gateway.adapters.http_client import UpstreamClient

from ..records import frozen, record


def _count(openai: str | None, doc: str) -> Any:
    """One token count of :class:`Tokens`: ``openai`` is its place in OpenAI's ``usage`` object
    (dotted, e.g. ``prompt_tokens_details.cached_tokens``; None when OpenAI's shape has no such
    count), read by ``shapes.usage_from_openai`` and written by :meth:`Usage.as_openai`."""
    return field(default=0, metadata={"openai": openai, "doc": doc})


@record(kw_only=True)
class Tokens:
    """THE list of usage counts: every field is a count an adapter reports, a ``usage_records``
    column of the same name (``money.ledger.UsageRecord`` inherits them and the settle statement
    lists its columns from its fields), a parameter of ``ModelPrice.provider_cost`` (which bills
    it) and, where ``openai`` is set, a place in the OpenAI ``usage`` object we read and render.

    Adding a count: one field here, a migration adding the column (``layers/common/gateway/
    migrations``), its price rule in ``ModelPrice.provider_cost`` (and, if it has its own price,
    a ``<name>_price`` on ``ModelPrice`` and ``UsageRecord``), and the adapters that report it.
    """

    prompt_tokens: int = _count("prompt_tokens", "every input token, including the parts below")
    completion_tokens: int = _count("completion_tokens", "every output token (reasoning and rejected "
                                    "prediction tokens included)")
    cached_tokens: int = _count("prompt_tokens_details.cached_tokens", "part of prompt_tokens read from the "
                                "provider's prompt cache")
    cache_write_tokens: int = _count("prompt_tokens_details.cache_write_tokens", "part of prompt_tokens written "
                                     "to the provider's prompt cache")
    cache_write_1h_tokens: int = _count(None, "part of cache_write_tokens written with the 1-hour TTL (Anthropic)")
    audio_tokens: int = _count("prompt_tokens_details.audio_tokens", "part of prompt_tokens that is audio input "
                               "(billed at the model's audio price)")


TOKEN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Tokens))
# Always rendered in OpenAI's usage even when 0 (clients read them unconditionally); the other
# details are rendered when non-zero.
ALWAYS_RENDERED = frozenset({"prompt_tokens", "completion_tokens", "cached_tokens"})


def openai_path(name: str) -> str | None:
    """Where OpenAI's ``usage`` object carries the count ``name`` of :class:`Tokens`."""
    return _OPENAI_PATHS[name]


_OPENAI_PATHS: dict[str, str | None] = {f.name: f.metadata["openai"] for f in fields(Tokens)}


@record
class Usage(Tokens):
    """What an adapter reports for one call: the :class:`Tokens` counts, plus whether the provider
    reported them and the cost it says it billed."""

    reported: bool = True  # False when we had to estimate (provider reported none)
    cost: Decimal | None = None  # what the provider says it billed (OpenRouter ``usage.cost``), USD

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def tokens(self) -> dict[str, int]:
        """The counts by name (``TOKEN_FIELDS``)."""
        return {name: getattr(self, name) for name in TOKEN_FIELDS}

    def as_openai(self, *, reasoning_tokens: int | None = None) -> dict[str, Any]:
        """OpenAI's ``usage`` object: every count at its ``openai`` place (the details when non-zero,
        ``cached_tokens`` always), ``total_tokens``, and ``reasoning_tokens`` when given."""
        out: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": self.total_tokens,
                               "prompt_tokens_details": {}}
        for name, value in self.tokens().items():
            path = _OPENAI_PATHS[name]
            if path is None or (not value and name not in ALWAYS_RENDERED):
                continue
            *parents, leaf = path.split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = value
        if reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
        return out


@frozen
class Target:
    """Where one upstream call goes: the provider, its model name, our public id, base URL and key."""

    provider: str  # a name in gateway.adapters.registry
    upstream_model: str  # the provider's own model name
    public_id: str  # our id: the ``model`` of every response/chunk we emit
    base_url: str
    api_key: str

    def __repr__(self) -> str:  # never print the key
        return (f"Target(provider={self.provider!r}, upstream_model={self.upstream_model!r}, "
                f"public_id={self.public_id!r}, base_url={self.base_url!r}, api_key='***')")


class UpstreamStream(Protocol):
    usage: Usage | None
    # False when the consumer assembles the chunks and never sends them (a buffered response):
    # set before iterating; the stream then skips what only a relay uses (the OpenAI-compatible
    # stream's ready-made ``data:`` frames). The chunks are the same dicts either way.
    relay: bool
    # True when the consumer frames every chunk with ``chat.service._sse`` and reads nothing else of
    # them but the first (the chat relay sets it): the OpenAI-compatible stream may then give
    # consecutive plain text deltas as one ``adapters.sse.FramedRun`` (frames, not a dict).
    runs: bool
    # Called once when the stream is complete (its terminal event read, ``usage`` final), before the
    # rest of the body is drained and the connection released: the relay settles from here.
    on_done: Callable[[], None] | None

    async def open(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class Adapter(Protocol):
    provider: str

    async def complete(self, client: UpstreamClient, target: Target, body: dict[str, Any], *,
                       read_timeout: float | None = None) -> tuple[dict[str, Any], Usage]: ...

    def stream(self, client: UpstreamClient, target: Target, body: dict[str, Any]) -> UpstreamStream: ...

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers every call to the provider carries (also its model-list requests)."""
        ...

    def dropped(self, body: dict[str, Any]) -> list[str]:
        """The parameters of ``body`` this adapter does not carry to its provider (OpenAI-compatible
        upstreams get everything; translating adapters map what has an equivalent). The pipeline
        names them in the ``x-dropped-params`` response header and logs them."""
        ...


@frozen
class DirectModel:
    """A model a direct provider lists for our key (no price)."""

    provider: str          # a direct provider of gateway.adapters.registry
    upstream: str          # the provider's own name, e.g. "claude-sonnet-4-20250514"
    display_name: str | None = None


# A GET the catalogue's discovery performs (its timeout, errors and exact JSON decoding):
# (url, headers, query parameters) -> the parsed JSON body.
GetJson = Callable[[str, Mapping[str, str], Mapping[str, Any] | None], Awaitable[Any]]
MAX_MODEL_PAGES = 50  # a model list still paginating after this many pages is cut short


async def list_model_pages(get: GetJson, url: str, headers: Mapping[str, str],
                           parse: Callable[[Any], tuple[list[DirectModel], str | None]], *,
                           page_size: Mapping[str, Any], cursor_param: str, entries: str
                           ) -> tuple[list[DirectModel], int]:
    """Every page of a cursor-paginated model list -> (models, entries listed). ``parse`` turns a
    page into its models and the next page's cursor (None after the last), sent back as
    ``cursor_param``; ``entries`` names the page's list (every entry counts as listed, kept or not)."""
    models: list[DirectModel] = []
    listed = 0
    cursor: str | None = None
    for _ in range(MAX_MODEL_PAGES):
        payload = await get(url, headers, {**page_size, **({cursor_param: cursor} if cursor else {})})
        page, cursor = parse(payload)
        models += page
        listed += len(payload.get(entries) or [])
        if cursor is None:
            break
    return models, listed


# ----------------------------------------------------------------------------- what the pipeline tells the client
# Here rather than in ``gateway.translation`` (which re-exports them for the other surfaces), so that
# the chat path does not import that room (its pydantic bases and stream helpers: ~3.6 M instructions
# of a cold start; BENCHMARKS.md, issue 15, import lane).

# Response header listing the request parameters a surface accepted but could not forward to the
# model that served it (comma separated, e.g. ``top_k, thinking blocks``). Also worth a log line.
DROPPED_PARAMS_HEADER = "x-dropped-params"
MAX_DROPPED_HEADER_CHARS = 1024


def dropped_header(dropped: Iterable[str]) -> dict[str, str]:
    names = list(dict.fromkeys(dropped))
    if not names:
        return {}
    value = ", ".join(names)
    if len(value) > MAX_DROPPED_HEADER_CHARS:
        value = value[: MAX_DROPPED_HEADER_CHARS - 3] + "..."
    return {DROPPED_PARAMS_HEADER: value.encode("ascii", "replace").decode("ascii")}


class _EndOfBody(bytes):
    """The type of :data:`END_OF_BODY` (an empty ``bytes``: a consumer that does not know it
    skips it as it skips any empty chunk)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_BODY"


# What a relay yields after its last bytes when nothing money-related has to happen before the
# response completes (a plain server, not Lambda: ``chat.service._relay``): "the body is complete,
# send its final message now; what I still do (await the settle) comes after". Told apart from
# every other chunk by identity (``chunk is END_OF_BODY``); the surfaces that translate the relay
# pass it on after their own last frames (``translation.translated_stream``). Defined here, below
# ``chat`` and ``translation``, because the chat relay and every surface's stream use it.
END_OF_BODY: bytes = _EndOfBody()
