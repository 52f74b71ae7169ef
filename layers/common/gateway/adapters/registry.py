"""The providers: ONE entry each. Everything that differs between providers is here or in the
adapter module an entry names; nothing else in the code lists providers.

An entry says which adapter serves the provider (and its options), where its key and base URL are
in the settings (attributes, so a typo fails type checking), whether a user may bring their own
key (BYOK), whether it serves without a key (a local OpenAI-compatible server), whether its
output limit shares the context window with the prompt, and — for a *direct* provider whose
model list tells discovery what we can route there — the catalogue vendor prefix of its models
and the function that fetches that list.

Adding a provider:

* OpenAI-compatible: one entry below (``OpenAICompatAdapter`` with its options) plus its two
  settings (``<name>_api_key``, ``<name>_base_url``) in ``gateway.config``;
* native: one adapter module (``build_request``/``translate_response``/stream class, see
  ``anthropic.py``) plus one entry. docs/architecture.md walks through both.

The native adapters (``anthropic``, ``gemini``) are imported on the first use of their provider
(``get_adapter``, its model list, its catalogue names), not with this module: a cold start whose
requests go to OpenAI-compatible providers never loads their translations (issue 15, fourth pass).
The concrete adapters import only the shared pieces
(``contract``, ``shapes``, ``sse``, ``stream``, ``transport``, ``upstream_errors``), never this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from ..config import Settings, get_settings
from ..records import frozen
from . import openai_compat
from .contract import Adapter, DirectModel, GetJson

ModelLister = Callable[[GetJson, str, Mapping[str, str]], Any]  # -> Awaitable[(models, entries listed)]


def openrouter_attribution(settings: Settings | None = None) -> dict[str, str]:
    """OpenRouter's app attribution headers, from ``OPENROUTER_HTTP_REFERER`` / ``OPENROUTER_APP_TITLE``."""
    settings = settings or get_settings()
    out = {}
    if settings.openrouter_http_referer:
        out["HTTP-Referer"] = settings.openrouter_http_referer
    if settings.openrouter_app_title:
        out["X-Title"] = settings.openrouter_app_title
    return out


@frozen
class Provider:
    """A provider we call: how to build its adapter, where its key and base URL come from, its catalogue."""

    name: str
    make_adapter: Callable[[], Adapter]
    api_key: Callable[[Settings], str]
    base_url: Callable[[Settings], str]
    byok: bool = True                       # users may store their own key for it
    keyless: bool = False                   # serves without a key (a local OpenAI-compatible server)
    shares_context: bool = True             # the output limit counts against the context window
    vendor: str | None = None               # a direct model source: the catalogue id prefix of its models
    list_models: ModelLister | None = None  # ... and how to fetch its list
    names: Callable[[str], list[str]] = field(default=lambda upstream: [upstream])  # catalogue names, best first

    def catalogue_ids(self, upstream: str) -> list[str]:
        """Catalogue ids (OpenRouter style) this provider's model name may appear under, best first."""
        return list(dict.fromkeys(f"{self.vendor}/{name}" for name in self.names(upstream)))


OPENROUTER = "openrouter"


# The native adapters, imported on first use of their provider. The OpenAI-compatible one is
# imported with this module: it serves three providers (OpenRouter among them), and what it imports
# (``stream``, ``transport``, ``upstream_errors``) every adapter needs; a cold start pays it during
# the init phase instead of the first request.
def _anthropic() -> Adapter:
    from .anthropic import AnthropicAdapter
    return AnthropicAdapter()


def _gemini() -> Adapter:
    from .gemini import GeminiAdapter
    return GeminiAdapter()


async def _list_anthropic(get: GetJson, base_url: str, headers: Mapping[str, str]) -> tuple[list[DirectModel], int]:
    from .anthropic import list_anthropic_models
    return await list_anthropic_models(get, base_url, headers)


async def _list_gemini(get: GetJson, base_url: str, headers: Mapping[str, str]) -> tuple[list[DirectModel], int]:
    from .gemini import list_gemini_models
    return await list_gemini_models(get, base_url, headers)


def _anthropic_names(upstream: str) -> list[str]:
    from .anthropic import anthropic_names
    return anthropic_names(upstream)


_ENTRIES = (
    Provider("openai", lambda: openai_compat.OpenAICompatAdapter(
                 "openai", service_tier=openai_compat.OPENAI_SERVICE_TIER, output_limit_field="max_completion_tokens"),
             api_key=lambda s: s.openai_api_key, base_url=lambda s: s.openai_base_url,
             vendor="openai", list_models=openai_compat.list_openai_models),
    Provider(OPENROUTER, lambda: openai_compat.OpenAICompatAdapter(
                 OPENROUTER, openrouter_fields=True, extra_headers=openrouter_attribution),
             api_key=lambda s: s.openrouter_api_key, base_url=lambda s: s.openrouter_base_url),
    Provider("anthropic", _anthropic,
             api_key=lambda s: s.anthropic_api_key, base_url=lambda s: s.anthropic_base_url,
             vendor="anthropic", list_models=_list_anthropic, names=_anthropic_names),
    Provider("gemini", _gemini,
             api_key=lambda s: s.gemini_api_key, base_url=lambda s: s.gemini_base_url,
             shares_context=False, vendor="google", list_models=_list_gemini),
    Provider("compat", lambda: openai_compat.OpenAICompatAdapter(
                 "compat", output_limit_field="max_tokens", lenient_eof=True),
             api_key=lambda s: s.compat_api_key, base_url=lambda s: s.compat_base_url,
             byok=False, keyless=True),
)

REGISTRY: dict[str, Provider] = {p.name: p for p in _ENTRIES}
PROVIDERS: tuple[str, ...] = tuple(REGISTRY)
BYOK_PROVIDERS: tuple[str, ...] = tuple(p.name for p in _ENTRIES if p.byok)
DIRECT_PROVIDERS: tuple[str, ...] = tuple(p.name for p in _ENTRIES if p.list_models is not None)

_adapters: dict[str, Adapter] = {}


def provider(name: str) -> Provider:
    """The entry of ``name``; ``ValueError`` if unknown."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}") from None


def get_adapter(name: str) -> Adapter:
    """The (stateless, shared) adapter for ``name``; ``ValueError`` if unknown."""
    adapter = _adapters.get(name)
    if adapter is None:
        adapter = _adapters[name] = provider(name).make_adapter()
    return adapter


def catalogue_ids(name: str, upstream: str) -> list[str]:
    return provider(name).catalogue_ids(upstream)


__all__ = ["BYOK_PROVIDERS", "DIRECT_PROVIDERS", "OPENROUTER", "PROVIDERS", "REGISTRY", "DirectModel", "Provider",
           "catalogue_ids", "get_adapter", "openrouter_attribution", "provider"]
