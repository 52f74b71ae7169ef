"""Prompt sizes without a tokenizer: an estimate, and an upper bound the hold is built on.

Everything the gateway forwards as prompt is measured as the JSON text of the prompt fields
(``messages`` with every field of every message, ``tools``, ``tool_choice``, ``response_format``),
with media parts taken out and counted per part:

* **estimate** (expected tokens; used to refuse a prompt over the context length and as the usage
  of a call the provider reported none for): ASCII characters at 4 per token, every non-ASCII
  character as a whole token (CJK, emoji, accents are about one token each or more);
* **bound** (the most a provider can bill for the text; the hold uses it): one token per UTF-8
  byte. Byte-level BPE tokenizers (OpenAI, Llama 3, Claude) and SentencePiece with byte fallback
  (Gemini) never produce more tokens than bytes, so this holds for digits, punctuation and
  scripts that the 4-characters rule underestimates up to 4x;
* **images** at the serving model's per-image maximum (``image_token_max``), on top of the text;
* **files** (PDF and other documents) at the model's whole context length in the bound (a page
  costs image and text tokens, a few bytes of PDF can be a page), not in the estimate; so are
  images sent with ``detail: "original"`` (not downscaled: no per-image maximum is documented);
* **audio** (``input_audio`` parts, base64 wav or mp3) by the size of its data: the bound at one
  token per :data:`AUDIO_CHARS_PER_TOKEN_BOUND` base64 characters, the estimate at one per
  :data:`AUDIO_CHARS_PER_TOKEN`. The least data per second of audio is 8 kbit/s mp3 (1,000
  bytes, 1,334 base64 characters) and the most tokens per second a provider bills is Gemini's 32
  (OpenAI fewer): at least ~41 characters per token, so the bound holds with a 5x margin;
* a **prediction** (``prediction.content``, Predicted Outputs) is not prompt: its rejected tokens
  are billed as output, so its bound (one token per UTF-8 byte) is :attr:`PromptSize.output_extra`,
  held at the completion price on top of the output limit.

Both are capped at the model's context length by the caller (a provider refuses a longer prompt,
so it never bills more than that), plus the fixed prompt overheads below.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..records import frozen, record

CHARS_PER_TOKEN = 4
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
# The tool-use system prompt a provider adds when tools are declared (Anthropic: up to 346 tokens
# for Claude 4 models; OpenAI and Gemini fewer).
TOOLS_OVERHEAD = 500
PROMPT_FIELDS = ("messages", "tools", "tool_choice", "response_format", "functions", "function_call")
# the measured prompt text: json.dumps(prompt, separators=(",", ":"), ensure_ascii=False), one shared encoder
_PROMPT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
FILE_PARTS = frozenset({"file", "input_file"})
AUDIO_PARTS = frozenset({"input_audio"})
AUDIO_CHARS_PER_TOKEN = 40        # expected: ~41 base64 characters per token at the worst bitrate/rate
AUDIO_CHARS_PER_TOKEN_BOUND = 8   # the bound: 5x the most tokens per character any provider bills

# The most one image can cost on the model serving it, first match on the catalogue id wins.
# Providers resize large images, so every image has a maximum:
#   Anthropic: (w x h) / 750 after resizing to <= 1.15 MP and <= 1568 px: ~1,600 tokens; Claude
#     Opus 4.7 and later read up to 3.75 MP (2,576 px): ~5,000 tokens (any Claude model not known
#     to be older is held at that);
#   OpenAI tile models: fit 2048 x 2048, shortest side 768 -> at most 2 x 4 tiles of 512 px:
#     base + 8 x tile (gpt-4o / 4.1 / 4-turbo: 85 + 170/tile; o1 / o3: 75 + 150/tile;
#     gpt-4o-mini: 2,833 + 5,667/tile);
#   OpenAI patch models: at most 1,536 patches of 32 px x the model's multiplier
#     (gpt-4.1-mini / gpt-5-mini 1.62, o4-mini 1.72, gpt-4.1-nano / gpt-5-nano 2.46); GPT-5.2 and
#     later are patch models with a larger budget at "high" (2,500 patches x 1.2 = 3,000): held,
#     like any OpenAI model not listed, at the largest known maximum;
#   Gemini: tiles of 768 px at 258 tokens, images scaled to at most 3072 px: 16 x 258.
# (Compiled by the first request with an image, ``_image_token_rules``; not at every cold start: ~1 ms.)
IMAGE_TOKEN_PATTERNS: tuple[tuple[str, int], ...] = (
    (r"^anthropic/claude-(3|(opus|sonnet|haiku)-4(\.[0-6])?($|[^.\d]))", 1_600),
    (r"^anthropic/", 5_000),  # Opus 4.7+ (3.75 MP) and any Claude model not known to be older
    (r"^openai/gpt-4o-mini", 2_833 + 5_667 * 8),
    (r"^openai/(gpt-4\.1-nano|gpt-5-nano)", math.ceil(1_536 * 2.46)),
    (r"^openai/o4-mini", math.ceil(1_536 * 1.72)),
    (r"^openai/(gpt-4\.1-mini|gpt-5-mini)", math.ceil(1_536 * 1.62)),
    (r"^openai/(o1|o3)(-pro)?($|-\d)", 75 + 150 * 8),
    (r"^openai/(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4-turbo|gpt-4\.5|gpt-5(\.1)?($|-))", 85 + 170 * 8),
    (r"^openai/", max(math.ceil(1_536 * 2.46), 3_000)),  # GPT-5.2+ and unknown: the largest known maximum
    (r"^google/", 258 * 16),
)
# Any other model (Llama, Qwen-VL and other dynamic-resolution vision models behind OpenRouter
# or a compatible server): Qwen2.5-VL's default maximum.
DEFAULT_IMAGE_TOKENS = 16_384


_IMAGE_TOKEN_RULES: tuple[tuple[re.Pattern[str], int], ...] | None = None  # IMAGE_TOKEN_PATTERNS compiled


def _image_token_rules() -> tuple[tuple[re.Pattern[str], int], ...]:
    global _IMAGE_TOKEN_RULES
    if _IMAGE_TOKEN_RULES is None:
        _IMAGE_TOKEN_RULES = tuple((re.compile(pattern), tokens) for pattern, tokens in IMAGE_TOKEN_PATTERNS)
    return _IMAGE_TOKEN_RULES


def image_token_max(model_id: str) -> int:
    """The most one input image can cost on ``model_id`` (our catalogue id)."""
    for pattern, tokens in _image_token_rules():
        if pattern.match(model_id):
            return tokens
    return DEFAULT_IMAGE_TOKENS


def estimate_tokens(text: str) -> int:
    """ASCII at 4 characters per token, each other character a token; 0 for empty text."""
    return _text_size(text)[0]


def _text_size(text: str) -> tuple[int, int]:
    """(estimate, bound) of a text: see the module docstring."""
    if not text:
        return 0, 0
    if text.isascii():
        return -(-len(text) // CHARS_PER_TOKEN), len(text)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (-(-ascii_chars // CHARS_PER_TOKEN) + len(text) - ascii_chars,
            len(text.encode("utf-8", "surrogatepass")))


@frozen
class PromptSize:
    """The prompt of one request, before the serving model is known."""

    text_estimate: int
    text_bound: int
    images: int = 0
    files: int = 0                 # files and images without a per-image maximum: the bound is the context
    audio: int = 0                 # input_audio parts (their tokens are in text_estimate / text_bound)
    output_extra: int = 0          # tokens billed as output beyond the output limit (a prediction's bound)

    @classmethod
    def of_text(cls, text: str, overhead: int = 0, *, images: int = 0, files: int = 0) -> PromptSize:
        """The size of a prompt given as one text (the JSON of a native body's prompt fields): its
        estimate and bound (one token per UTF-8 byte) plus ``overhead`` tokens on both."""
        estimate, bound = _text_size(text)
        return cls(text_estimate=estimate + overhead, text_bound=bound + overhead, images=images, files=files)

    def estimate(self, model_id: str) -> int:
        """Expected prompt tokens on ``model_id`` (not capped: compared with the context length).
        Files are not in it: their size is unknown until the provider reads them. (Without images
        the model's image maximum is not looked up: its patterns are not matched per request.)"""
        if not self.images:
            return self.text_estimate
        return self.text_estimate + self.images * image_token_max(model_id)

    def bound(self, model_id: str, context_length: int) -> int:
        """The most ``model_id`` can bill for this prompt: never above its context length."""
        if self.files:
            return context_length
        if not self.images:
            return min(context_length, self.text_bound)
        return min(context_length, self.text_bound + self.images * image_token_max(model_id))


def _audio_chars(part: dict[str, Any]) -> int:
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    return len(data) if isinstance(data, str) else 0


def _unbounded_image(part: dict[str, Any]) -> bool:
    image = part.get("image_url")
    return isinstance(image, dict) and image.get("detail") == "original"


@record(eq=False)
class _Media:
    """The media parts ``_strip_media`` took out of a prompt, counted by kind."""

    images: int = 0
    files: int = 0
    audio: int = 0
    audio_chars: int = 0


def _strip_media(messages: Any, media: _Media) -> Any:
    """``messages`` with image, file and audio parts reduced to their type, counted in ``media``."""
    if not isinstance(messages, list):
        return messages
    out: list[Any] | None = None
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            continue
        parts = []
        changed = False
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                if _unbounded_image(part):
                    media.files += 1
                else:
                    media.images += 1
            elif kind in FILE_PARTS:
                media.files += 1
            elif kind in AUDIO_PARTS:
                media.audio += 1
                media.audio_chars += _audio_chars(part)
            else:
                parts.append(part)
                continue
            parts.append({"type": kind})
            changed = True
        if changed:
            if out is None:
                out = list(messages)
            out[i] = {**msg, "content": parts}
    return messages if out is None else out


def _prediction_bound(prediction: Any) -> int:
    """The most tokens a ``prediction`` can add to the output: one per UTF-8 byte of its content."""
    if not isinstance(prediction, dict):
        return 0
    content = prediction.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return _text_size(content)[1] if isinstance(content, str) else 0


def measure_prompt(body: dict[str, Any]) -> PromptSize:
    """The :class:`PromptSize` of an OpenAI chat request (a plain dict)."""
    media = _Media()
    messages = _strip_media(body.get("messages"), media)
    prompt = {k: body[k] for k in PROMPT_FIELDS if body.get(k) is not None}
    if "messages" in prompt:
        prompt["messages"] = messages
    try:
        text = _PROMPT_JSON(prompt)
    except (TypeError, ValueError):
        text = str(prompt)
    estimate, bound = _text_size(text)
    estimate += -(-media.audio_chars // AUDIO_CHARS_PER_TOKEN)
    bound += -(-media.audio_chars // AUDIO_CHARS_PER_TOKEN_BOUND)
    overhead = REPLY_PRIMING + (TOOLS_OVERHEAD if body.get("tools") or body.get("functions") else 0)
    return PromptSize(text_estimate=estimate + overhead, text_bound=bound + overhead, images=media.images,
                      files=media.files, audio=media.audio, output_extra=_prediction_bound(body.get("prediction")))


def estimate_prompt_tokens(body: dict[str, Any], model_id: str = "") -> int:
    """The expected prompt tokens of a request on ``model_id`` (usage when a provider reports none)."""
    return measure_prompt(body).estimate(model_id)
