"""A function's cold start, before its imports: ``functions/<name>/app.py`` imports this module FIRST
and calls :func:`done` once its app is built (BENCHMARKS.md, issue 15 third and fifth passes).

- **The garbage collector waits for the imports (in a process started to serve the function).**
  Importing a function creates ~100,000 objects that live as long as the process (modules, classes,
  pydantic validators); the cyclic collector ran 115-140 times during the query function's import,
  once over all of them. In a serving process — Lambda (``AWS_LAMBDA_FUNCTION_NAME`` set), or
  ``functions/query/run.sh`` (which sets ``GATEWAY_COLD_START=serve``, so that it starts the same
  way outside Lambda: locally, in the benchmarks) — it is paused from here to :func:`done`, which
  moves what the imports built into the permanent generation (``gc.freeze``: never scanned again)
  and resumes it. The imports' own cyclic garbage (~1,500 objects, ~0.4 MiB) is frozen with them: a
  fixed cost per process, not a growing one. Elsewhere (tests, the dev server) the collector is left
  alone.
- **httpx without its command-line client.** httpx (under upstash-redis and the adapters) imports
  ``httpx._main`` when click is installed, which it is in the layer (and rich/pygments in a dev
  environment); blocked, httpx defines its stub ``main`` instead (its own ImportError fallback).
- **aiohttp's unverified TLS context without the CA store.** aiohttp builds two TLS contexts at
  import and loads the system CA store (~140 certificates) into both, the second being its
  ``ssl=False`` context (CERT_NONE: it never verifies, and the gateway never uses it). aiohttp is
  imported here with ``SSLContext.set_default_verify_paths`` skipping CERT_NONE contexts, then the
  override is removed (``ssl`` as before). The verified context, which every Upstash and upstream
  connection uses (``adapters.http_client.shared_ssl_context``), loads the same store, but in a
  thread started once aiohttp is imported (nothing else touches that context until the app is
  built): OpenSSL reads the ~140 certificates (15-60 ms) without the GIL while the rest of the
  function imports, and :func:`done` waits for it (and raises its error, if any), so the context is
  complete before anything can use it.
- **No scan for pydantic plugins (in a serving process, as above).** pydantic looks for plugins
  once per process, at the first model built, by reading the entry points of every installed
  distribution (~5-10 ms over the dev environment's ~110, about half of that over the layer's); none
  is installed (the layer's locked requirements have none; ``tests/unit/test_coldstart.py`` checks
  the environment). ``PYDANTIC_DISABLE_PLUGINS=__all__`` is set for the process unless the
  environment sets it.

Every function imports aiohttp at cold start anyway (the adapters' HTTP client, the Upstash client),
so importing it here adds nothing to any of them. This room imports no other.
"""

from __future__ import annotations

import gc
import os

# First, before this module's other imports: paused when the Lambda runtime (or run.sh) imports the function.
_serving = "AWS_LAMBDA_FUNCTION_NAME" in os.environ or os.environ.get("GATEWAY_COLD_START") == "serve"
_paused = _serving and gc.isenabled()
if _paused:
    gc.disable()
if _serving:  # no pydantic plugin is installed: skip the scan for them (unless set otherwise)
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import ssl  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402


def done() -> None:
    """The function's app is built: wait for the CA store (loaded in a thread meanwhile), freeze
    what the cold start's imports created and resume the garbage collector, if this module paused
    it (a second function module imported in the same process finds it running, and leaves it so)."""
    global _paused, _store_error
    if _store_loader.ident is not None:  # started (by _import_aiohttp)
        _store_loader.join()
    if _store_error is not None:
        error, _store_error = _store_error, None
        raise error
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


_load_ca_store = ssl.SSLContext.set_default_verify_paths
_to_load: list[ssl.SSLContext] = []  # verifying contexts aiohttp built, their CA store not loaded yet
_store_error: BaseException | None = None


def _unless_unverified(context: ssl.SSLContext) -> None:
    if context.verify_mode != ssl.CERT_NONE:
        _to_load.append(context)  # loaded by _store_loader once aiohttp is imported


def _load_ca_stores() -> None:
    global _store_error
    try:
        for context in _to_load:
            _load_ca_store(context)  # OpenSSL reads the store without the GIL: the imports go on
    except BaseException as exc:  # raised by done(), as the import itself would have
        _store_error = exc
    finally:
        _to_load.clear()


_store_loader = threading.Thread(target=_load_ca_stores, name="ca-store", daemon=True)


def _import_aiohttp() -> None:
    if "aiohttp.connector" in sys.modules or "set_default_verify_paths" in vars(ssl.SSLContext):
        return
    ssl.SSLContext.set_default_verify_paths = _unless_unverified  # type: ignore[method-assign,assignment]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the method _ssl._SSLContext defines, as before
    if _to_load:  # aiohttp is done with its contexts: nothing else touches them before done()
        _store_loader.start()


sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
_import_aiohttp()
