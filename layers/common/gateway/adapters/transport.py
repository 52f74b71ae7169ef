"""Sending a request upstream: headers first (the body is read by the caller), one retry on a
stale pooled connection, transport failures and non-200 answers mapped (``upstream_errors``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.adapters.http_client import UpstreamClient, UpstreamRequest, UpstreamResponse

from .upstream_errors import (
    bad_response,
    error_from_status,
    error_from_transport,
    is_stale_connection_error,
    is_transport_error,
)

MAX_ERROR_BODY = 64 * 1024


async def send(client: UpstreamClient, request_factory: Callable[[], UpstreamRequest],
               provider: str) -> UpstreamResponse:
    """Send and return once the response headers arrived (the body is not read yet).

    Retries once when a pooled keep-alive connection turns out to be dead before any response
    (the classic stale-connection race). Transport failures raise mapped errors; non-200
    answers are returned as they are.
    """
    for attempt in (1, 2):
        request = request_factory()
        try:
            return await client.send(request, stream=True)
        except Exception as exc:
            if not is_transport_error(exc):
                raise
            if attempt == 1 and is_stale_connection_error(exc):
                continue
            raise error_from_transport(provider, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def post_json(client: UpstreamClient, request_factory: Callable[[], UpstreamRequest],
                    provider: str, api_key: str) -> Any:
    """Non-streaming call: the parsed JSON of a 200 answer, else the mapped error."""
    response = await send(client, request_factory, provider)
    if response.status_code != 200:
        body = await read_error(response)
        raise error_from_status(provider, response.status_code, body, response.headers, api_key=api_key)
    try:
        raw = await response.aread()
    except Exception as exc:
        if not is_transport_error(exc):
            raise
        raise error_from_transport(provider, exc, mid_stream=True) from exc
    finally:
        await response.aclose()
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_response(provider, "returned invalid JSON") from None


async def read_error(response: UpstreamResponse) -> bytes:
    try:
        data = b""
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) >= MAX_ERROR_BODY:
                break
        return data
    except Exception:
        return b""
    finally:
        await response.aclose()
