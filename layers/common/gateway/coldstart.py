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
- **The upstream TLS context's CA store loaded beside the imports.** Every Upstash and upstream
  connection verifies with one context (``upstream_http.shared_ssl_context``: what aiohttp's
  ``_make_ssl_context(True)`` built, ``ssl.create_default_context()`` offering HTTP/1.1 by ALPN).
  It is built here, its system CA store (~140 certificates) loaded in a thread: OpenSSL reads them
  (15-60 ms) without the GIL while the rest of the function imports, and :func:`done` waits for it
  (and raises its error, if any), so the context is complete before anything can use it
  (:func:`verified_ssl_context` waits too, for a process that never calls ``done``, and so does the
  interpreter's exit: OpenSSL's exit handlers would free the store under the thread). Until issue
  15's spawn pass the context was aiohttp's, built by its import here; the functions no longer
  import aiohttp (``gateway.upstream_http`` does without it).
- **The layer's modules read from one file (in a serving process whose environment names it:
  ``GATEWAY_IMPORT_BUNDLE``, the query functions').** ``gateway.import_bundle``: their bytecode from
  the bundle the layer build wrote, instead of ~5 system calls per module, and the code of the texts
  the import compiles while classes are created (dataclass methods, string annotations), until
  :func:`done`.
- **No scan for pydantic plugins (in a serving process, as above).** pydantic looks for plugins
  once per process, at the first model built, by reading the entry points of every installed
  distribution (~5-10 ms over the dev environment's ~110, about half of that over the layer's); none
  is installed (the layer's locked requirements have none; ``tests/unit/test_coldstart.py`` checks
  the environment). ``PYDANTIC_DISABLE_PLUGINS=__all__`` is set for the process unless the
  environment sets it.

This module imports nothing but the standard library.
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
    if os.environ.get("GATEWAY_IMPORT_BUNDLE"):  # the layer's modules read from one file (until done())
        from gateway import import_bundle

        import_bundle.install()

import atexit  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402


def done() -> None:
    """The function's app is built: wait for the CA store (loaded in a thread meanwhile), freeze
    what the cold start's imports created and resume the garbage collector, if this module paused
    it (a second function module imported in the same process finds it running, and leaves it so)."""
    global _paused
    _wait_for_store()
    if "gateway.import_bundle" in sys.modules:
        sys.modules["gateway.import_bundle"].uninstall()
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def verified_ssl_context() -> ssl.SSLContext:
    """The upstream connections' TLS context, its CA store loaded."""
    _wait_for_store()
    return _verified


def _wait_for_store() -> None:
    global _store_error
    if _store_loader.ident is not None:
        _store_loader.join()
    if _store_error is not None:
        error, _store_error = _store_error, None
        raise error


_store_error: BaseException | None = None


def _build_verified() -> tuple[ssl.SSLContext, list[ssl.SSLContext]]:
    """aiohttp's verified context (``ssl.create_default_context()`` + ALPN http/1.1) without its CA
    store, which the thread loads: ``create_default_context`` asks for it through
    ``set_default_verify_paths``, deferred while it runs (then ``ssl`` as before)."""
    deferred: list[ssl.SSLContext] = []

    def defer(context: ssl.SSLContext) -> None:
        deferred.append(context)

    ssl.SSLContext.set_default_verify_paths = defer  # type: ignore[method-assign,assignment]
    try:
        context = ssl.create_default_context()
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the method _ssl._SSLContext defines, as before
    context.set_alpn_protocols(("http/1.1",))
    return context, deferred


def _load_ca_stores(contexts: list[ssl.SSLContext]) -> None:
    global _store_error
    try:
        for context in contexts:
            context.set_default_verify_paths()  # OpenSSL reads the store without the GIL: the imports go on
    except BaseException as exc:  # raised by done(), as the import itself would have
        _store_error = exc
    finally:
        contexts.clear()


def _finish_loading() -> None:
    """At the interpreter's exit: the store's thread is let finish first (60 ms at most, bounded at
    1 s), as OpenSSL's own exit handlers would free what it is still reading: a process ending
    within ~50 ms of this import (a failed start) crashed with SIGSEGV instead (BENCHMARKS.md, issue
    15, spawn6)."""
    if _store_loader.ident is not None:
        _store_loader.join(1.0)


sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
_verified, _to_load = _build_verified()
_store_loader = threading.Thread(target=_load_ca_stores, args=(_to_load,), name="ca-store", daemon=True)
if _to_load:
    _store_loader.start()
    atexit.register(_finish_loading)
