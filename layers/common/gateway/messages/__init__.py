"""The Anthropic Messages surface (``POST /v1/messages``, ``/v1/messages/count_tokens``): the request
schema and the pure translations to and from the internal chat pipeline (see ``translate``)."""
