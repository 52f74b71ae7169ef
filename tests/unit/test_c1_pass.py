"""Issue 15, c1 lane: the non-streaming request's per-request work made cheaper answers exactly as
before (no I/O)."""

from __future__ import annotations

import pytest

from gateway.adapters.tokens import PromptSize, image_token_max

MODEL_IDS = ["openai/gpt-4o-mini", "openai/gpt-5.2", "anthropic/claude-3.5-haiku", "anthropic/claude-opus-4.7",
             "google/gemini-2.5-flash", "meta-llama/llama-3.1-8b-instruct", ""]


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("images", [0, 1, 3])
@pytest.mark.parametrize("files", [0, 2])
def test_a_prompt_size_answers_as_the_image_formula(model_id: str, images: int, files: int) -> None:
    size = PromptSize(text_estimate=1_000, text_bound=4_000, images=images, files=files)
    assert size.estimate(model_id) == 1_000 + images * image_token_max(model_id)
    for context in (100, 4_000, 4_001, 10_000_000):
        expected = context if files else min(context, 4_000 + images * image_token_max(model_id))
        assert size.bound(model_id, context) == expected


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 22\r\n\r\n"
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\xcf\x06\x00G\xdd\xdc\x79\x02\x00\x00\x00",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart",  # closed before its end (a deadline)
])
async def test_a_closed_upstream_response_is_freed_without_the_cycle_collector(answer: bytes) -> None:
    import gc

    from gateway import upstream_http

    client = upstream_http.create_http_client()

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is upstream_http.UpstreamResponse)

    gc.collect()
    before = alive()
    gc.disable()
    try:
        conn = upstream_http._Connection()
        client._in_use += 1
        response = upstream_http.UpstreamResponse(client, conn, 30.0)
        conn.response = response
        conn.data_received(answer)
        assert response.status_code == 200
        if response._done:
            assert await response.aread() == b"ok"
        await response.aclose()
        assert conn.response is None and response.is_closed
        del response
        assert alive() == before  # freed by its reference count: no cycle left for gc
    finally:
        gc.enable()
        await client.aclose()
