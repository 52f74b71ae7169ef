-- Audio input billed at its own price (issue 13: chat requests may carry ``input_audio`` parts).
--
-- usage_records.audio_tokens is the part of prompt_tokens that was audio input (OpenAI
-- ``usage.prompt_tokens_details.audio_tokens``), billed at usage_records.audio_price (the model's
-- catalogue ``pricing_extra.audio``; NULL: the model has none and such a request is refused), so
-- every charge still recomputes from its own row.

ALTER TABLE usage_records
    ADD COLUMN audio_tokens integer NOT NULL DEFAULT 0 CHECK (audio_tokens >= 0),
    ADD COLUMN audio_price  numeric(30, 18);
