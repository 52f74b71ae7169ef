"""Typed domain errors, mapped in ONE place to an HTTP status and the OpenAI error shape.

Every error body is ``{"error": {"message": ..., "type": ..., "code": ..., "param": ...}}`` plus
optional extra fields (e.g. ``balance``/``required`` on 402). The OpenAI SDKs pick the exception
class from the status code, so the status is part of the contract.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base class. Subclasses set ``status``, ``type``, ``code`` and the ``default_message``;
    ``message`` is user-facing."""

    status: int = 500
    type: str = "api_error"
    code: str = "internal_error"
    default_message: str = "An internal error occurred."

    def __init__(self, message: str | None = None, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None, **extra: Any) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers or {}
        self.extra = extra
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param, **self.extra)


class BadRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class Unauthorized(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"
    default_message = "Invalid or missing API key."


class InsufficientCredits(GatewayError):
    status, type, code = 402, "insufficient_quota", "insufficient_credits"
    default_message = "Insufficient credits for this request."


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "forbidden"
    default_message = "You are not allowed to do this."


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"
    default_message = "Not found."


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GatewayError):
    status, type, code = 409, "invalid_request_error", "conflict"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"
    default_message = "Request body is too large."


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"
    default_message = "Rate limit exceeded. Retry later."


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"
    default_message = "Monthly request quota exhausted."


class UpstreamError(GatewayError):
    """The provider answered with an error (or garbage). ``retryable`` drives fallback."""

    status, type, code = 502, "api_error", "upstream_error"
    default_message = "The upstream provider returned an error."
    # The usage of a 200 answer the provider billed although it could not be used (charged).
    billed_usage: Any = None

    def __init__(self, message: str | None = None, *, upstream_status: int | None = None,
                 retryable: bool = False, provider: str | None = None, **kw: Any) -> None:
        self.upstream_status = upstream_status
        self.retryable = retryable
        self.provider = provider
        super().__init__(message, **kw)


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"
    default_message = "The upstream provider did not answer in time."

    def __init__(self, message: str | None = None, **kw: Any) -> None:
        kw.setdefault("retryable", True)
        super().__init__(message, **kw)


class ServiceUnavailable(GatewayError):
    status, type, code = 503, "api_error", "service_unavailable"
    default_message = "Service temporarily unavailable."


class InternalError(GatewayError):
    status, type, code = 500, "api_error", "internal_error"


def error_body(message: str, *, type: str, code: str, param: str | None = None,
               **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message, "type": type, "code": code, "param": param}
    err.update(extra)
    return {"error": err}
