"""Prompt sizes: the estimate (context check, usage a provider did not report) and the upper bound
the hold is built on -- every forwarded field counts, non-ASCII text and images at their worst."""

from __future__ import annotations

import json
import math

import pytest

from gateway.adapters.tokens import (
    DEFAULT_IMAGE_TOKENS,
    REPLY_PRIMING,
    TOOLS_OVERHEAD,
    estimate_prompt_tokens,
    estimate_tokens,
    image_token_max,
    measure_prompt,
)


def _json(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(("text", "tokens"), [
    ("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100),
    ("héllo wörld", 3 + 2),        # 9 ASCII characters at 4 per token, each non-ASCII character a token
    ("你好世界" * 100, 400),         # CJK: a token per character, not one per 4
    ("🙂🙂", 2),
])
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_the_whole_message_json_counts_including_extra_fields() -> None:
    plain = {"messages": [{"role": "assistant", "content": "ok"}]}
    extra = {"messages": [{"role": "assistant", "content": "ok", "reasoning": "r" * 4000}]}
    size, bigger = measure_prompt(plain), measure_prompt(extra)
    assert size.text_estimate == REPLY_PRIMING + math.ceil(len(_json(plain)) / 4)
    assert bigger.text_estimate - size.text_estimate >= 1000  # forwarded, so counted
    assert size.text_bound == REPLY_PRIMING + len(_json(plain).encode())


def test_bound_is_the_utf8_bytes_and_never_below_the_estimate() -> None:
    for text in ("plain english words", "1234567890" * 50, "}{][" * 100, "naïve café", "日本語のテキスト" * 30,
                 "emoji 🙂🙃" * 20):
        size = measure_prompt({"messages": [{"role": "user", "content": text}]})
        body_json = _json({"messages": [{"role": "user", "content": text}]})
        assert size.text_bound == REPLY_PRIMING + len(body_json.encode("utf-8"))
        assert size.text_bound >= size.text_estimate
    digits = measure_prompt({"messages": [{"role": "user", "content": "7" * 4000}]})
    assert digits.text_bound >= 4000  # a tokenizer that splits digits one by one is still covered


def test_images_count_at_the_serving_models_maximum_never_by_payload() -> None:
    parts = [{"type": "text", "text": "What is in these?"}]
    parts += [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 50_000}}] * 3
    parts += [{"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}]
    size = measure_prompt({"messages": [{"role": "user", "content": parts}]})
    assert size.images == 4
    assert size.text_bound < 300  # the base64 payloads are not text
    assert size.estimate("anthropic/claude-opus-4") == size.text_estimate + 4 * 1_600
    assert size.bound("anthropic/claude-opus-4", 200_000) == size.text_bound + 4 * 1_600
    assert size.bound("openai/gpt-4o-mini", 1_000_000) == size.text_bound + 4 * 48_169
    assert size.bound("openai/gpt-4o-mini", 128_000) == 128_000  # capped at the context length


@pytest.mark.parametrize(("model", "tokens"), [
    ("anthropic/claude-3.5-haiku", 1_600),
    ("anthropic/claude-sonnet-4.5", 1_600),
    ("anthropic/claude-opus-4.6", 1_600),
    ("anthropic/claude-opus-4", 1_600),
    ("anthropic/claude-opus-4.7", 5_000),
    ("anthropic/claude-sonnet-5", 5_000),  # not known to be older: the high-resolution maximum
    ("openai/gpt-5", 85 + 170 * 8),
    ("openai/gpt-5.1", 85 + 170 * 8),
    ("openai/gpt-5-chat", 85 + 170 * 8),
    ("openai/gpt-5.2", math.ceil(1_536 * 2.46)),
    ("openai/gpt-4o", 85 + 170 * 8),
    ("openai/gpt-4.1", 85 + 170 * 8),
    ("openai/gpt-4o-mini", 2_833 + 5_667 * 8),
    ("openai/gpt-4.1-mini", math.ceil(1_536 * 1.62)),
    ("openai/gpt-4.1-nano", math.ceil(1_536 * 2.46)),
    ("openai/o4-mini", math.ceil(1_536 * 1.72)),
    ("openai/o3", 75 + 150 * 8),
    ("openai/some-future-model", math.ceil(1_536 * 2.46)),
    ("google/gemini-2.5-flash", 258 * 16),
    ("meta-llama/llama-4-maverick", DEFAULT_IMAGE_TOKENS),
    ("compat/llava", DEFAULT_IMAGE_TOKENS),
])
def test_image_token_maxima(model: str, tokens: int) -> None:
    assert image_token_max(model) == tokens


def test_files_take_the_whole_context_in_the_bound() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64," + "J" * 900}}]}]}
    size = measure_prompt(body)
    assert size.files == 1
    assert size.bound("anthropic/claude-sonnet-4", 200_000) == 200_000
    assert size.estimate("anthropic/claude-sonnet-4") < 100  # not refused as over the context


def test_tools_and_schemas_count() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    with_tools = {**plain, "tools": tools, "tool_choice": "auto"}
    schema = {**plain, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}
    base = measure_prompt(plain)
    assert measure_prompt(with_tools).text_bound == REPLY_PRIMING + TOOLS_OVERHEAD + len(_json(
        {"messages": plain["messages"], "tools": tools, "tool_choice": "auto"}).encode())
    assert measure_prompt(with_tools).text_estimate > base.text_estimate + TOOLS_OVERHEAD
    assert estimate_prompt_tokens(schema) > estimate_prompt_tokens(plain)
    assert estimate_prompt_tokens({"messages": []}) == REPLY_PRIMING + math.ceil(len('{"messages":[]}') / 4)


# --------------------------------------------------------------------------- issue 13 parts and parameters
def _user(*parts: dict) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


def test_audio_is_bounded_by_its_base64_size_not_as_text() -> None:
    from gateway.adapters.tokens import AUDIO_CHARS_PER_TOKEN, AUDIO_CHARS_PER_TOKEN_BOUND

    data = "A" * 80_000  # ~60 kB of audio: at worst 8 kbit/s mp3, ~1 minute, ~1,920 tokens at 32/s
    size = measure_prompt(_user({"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}}))
    empty = measure_prompt(_user({"type": "input_audio", "input_audio": {"data": "", "format": "mp3"}}))
    assert size.audio == 1
    assert size.text_bound - empty.text_bound == 80_000 // AUDIO_CHARS_PER_TOKEN_BOUND == 10_000
    assert size.text_estimate - empty.text_estimate == 80_000 // AUDIO_CHARS_PER_TOKEN
    # the bound covers a minute of audio at the highest known rate (Gemini, 32 tokens/s) 5 times
    assert size.text_bound - empty.text_bound >= 5 * 60 * 32
    # the data itself is not measured as text (it would refuse a minute of audio as too long)
    assert size.text_estimate < 80_000 // 4


def test_an_original_detail_image_is_bounded_by_the_context() -> None:
    url = {"url": "https://x/y.png"}
    high = measure_prompt(_user({"type": "image_url", "image_url": {**url, "detail": "high"}}))
    original = measure_prompt(_user({"type": "image_url", "image_url": {**url, "detail": "original"}}))
    assert (high.images, high.files) == (1, 0)
    assert (original.images, original.files) == (0, 1)
    assert original.bound("openai/gpt-5", 400_000) == 400_000


def test_a_prediction_is_held_as_extra_output_at_its_byte_size() -> None:
    body = {**_user({"type": "text", "text": "hi"})}
    assert measure_prompt(body).output_extra == 0
    assert measure_prompt({**body, "prediction": {"type": "content", "content": "é" * 10}}).output_extra == 20
    parts = [{"type": "text", "text": "abc"}, {"type": "text", "text": "de"}]
    assert measure_prompt({**body, "prediction": {"type": "content", "content": parts}}).output_extra == 5


def test_legacy_functions_count_like_tools() -> None:
    body = {**_user({"type": "text", "text": "hi"})}
    functions = [{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    with_functions = measure_prompt({**body, "functions": functions, "function_call": "auto"})
    assert with_functions.text_bound - measure_prompt(body).text_bound >= TOOLS_OVERHEAD + len(_json(functions))


@pytest.mark.parametrize(("model", "at_least"), [
    # Claude Opus 4.7 and later read images up to 2,576 px on the long edge, ~3.75 MP, in 28 px
    # patches: a 1,936 px square is 70 x 70 = 4,900 tokens (earlier Claude models: ~1,600)
    ("anthropic/claude-opus-4.7", 4_900),
    # GPT-5.2 and later (5.3, 5.4) are patch models at "high": 2,500 patches x 1.2 = 3,000 tokens
    # (the tile rule `^openai/gpt-5` matches them by prefix and holds 1,445)
    ("openai/gpt-5.4", 3_000),
    ("openai/gpt-5.4-pro", 3_000),
])
def test_newer_models_hold_their_larger_images(model: str, at_least: int) -> None:
    """The per-image maximum must cover what the serving model bills for one image, or a request
    of a few hundred small-file, large-pixel images overruns its hold by hundreds of thousands of
    tokens (gpt-5.4-pro: ~$30 a request past the hold)."""
    assert image_token_max(model) >= at_least


def test_the_prompt_text_is_json_dumps_compact_unicode() -> None:
    from gateway.adapters import tokens

    prompt = {"messages": [{"role": "user", "content": "h\u00e9llo \u2603 \"q\" \\ \n"}],
              "tools": [{"n": 1.5, "b": None}]}
    assert tokens._PROMPT_JSON(prompt) == json.dumps(prompt, separators=(",", ":"), ensure_ascii=False)
    with pytest.raises(TypeError):
        tokens._PROMPT_JSON({"x": object()})
