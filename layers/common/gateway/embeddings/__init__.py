"""The embeddings surface (``POST /v1/embeddings``): the OpenAI request/response shapes, the input
token estimate for the hold, and the per-provider translations (see ``translate``)."""
