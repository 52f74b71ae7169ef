"""The OpenAI Responses surface (``POST /v1/responses``, stateless): the request schema and the pure
translations to and from the internal chat pipeline (see ``translate``)."""
