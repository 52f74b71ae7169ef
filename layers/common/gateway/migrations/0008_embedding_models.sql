-- Embedding models (issue 13, POST /v1/embeddings): a model whose output_modalities is
-- {embeddings} is served by the embeddings surface only (chat refuses it, and the embeddings
-- surface refuses every other model). Billed per input token: prompt_price; completion_price 0.
-- context_length is the model's input limit per item (a longer input is refused with a 400);
-- max_completion_tokens is 0 (an embedding has no output tokens).
--
-- Seeded like 0001's models: discovery keeps their prices current from OpenRouter's
-- GET /embeddings/models (its embedding models; GET /models lists chat models only) and routes
-- stay as seeded (OpenAI and Gemini direct). Prices: public list prices, USD per token.
INSERT INTO model_pricing (id, name, provider, upstream_model, owned_by, context_length, max_completion_tokens,
                           prompt_price, completion_price, input_modalities, output_modalities, architecture,
                           supported_parameters, description, source) VALUES
 ('openai/text-embedding-3-small', 'OpenAI: Text Embedding 3 Small', 'openai', 'text-embedding-3-small', 'openai',
  8192, 0, 0.00000002, 0, ARRAY['text'], ARRAY['embeddings'],
  '{"modality": "text->embeddings", "tokenizer": "GPT", "instruct_type": null}',
  ARRAY['dimensions', 'encoding_format'], 'OpenAI text embedding model, 1536 dimensions (shortened with dimensions).',
  'seed'),
 ('openai/text-embedding-3-large', 'OpenAI: Text Embedding 3 Large', 'openai', 'text-embedding-3-large', 'openai',
  8192, 0, 0.00000013, 0, ARRAY['text'], ARRAY['embeddings'],
  '{"modality": "text->embeddings", "tokenizer": "GPT", "instruct_type": null}',
  ARRAY['dimensions', 'encoding_format'], 'OpenAI text embedding model, 3072 dimensions (shortened with dimensions).',
  'seed'),
 ('google/gemini-embedding-001', 'Google: Gemini Embedding 001', 'gemini', 'gemini-embedding-001', 'google',
  2048, 0, 0.00000015, 0, ARRAY['text'], ARRAY['embeddings'],
  '{"modality": "text->embeddings", "tokenizer": "Gemini", "instruct_type": null}',
  ARRAY['dimensions', 'encoding_format'], 'Google Gemini embedding model, 3072 dimensions (shortened with dimensions).',
  'seed'),
 ('mistralai/mistral-embed-2312', 'Mistral: Mistral Embed 2312', 'openrouter', 'mistralai/mistral-embed-2312',
  'mistralai', 8192, 0, 0.0000001, 0, ARRAY['text'], ARRAY['embeddings'],
  '{"modality": "text->embeddings", "tokenizer": "Mistral", "instruct_type": null}',
  ARRAY['encoding_format'], 'Mistral embedding model, 1024 dimensions (through OpenRouter).', 'seed')
ON CONFLICT (id) DO NOTHING;
