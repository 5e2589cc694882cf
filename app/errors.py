"""cascade's one error hierarchy.

Every error a client can see is a `CascadeError` carrying an HTTP status, an OpenAI error `type`,
a stable `code` and a message written for the client. `app.api.errors` is the only place that
turns them into responses. Messages never contain upstream error text, exception strings or
secrets: whatever detail is useful to an operator goes to the log as structured fields.
"""

from __future__ import annotations

from typing import Any


class CascadeError(Exception):
    """Base of all errors cascade reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    # Extra data for the client, sent as the error's `cascade` field (never exception text).
    detail: dict[str, Any] | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-shaped error body (with `cascade` when the error carries a detail)."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.detail is not None:
            error["cascade"] = self.detail
        return {"error": error}


class ConfigError(CascadeError):
    """Configuration is invalid; raised at start, never sent to a client."""

    code = "invalid_configuration"


class InvalidRequestError(CascadeError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(CascadeError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(CascadeError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ConflictError(CascadeError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(CascadeError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnprocessableError(CascadeError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable"


class UpstreamError(CascadeError):
    """The runtime answered with an error cascade cannot turn into a result."""

    status = 502
    type = "server_error"
    code = "runtime_error"


class InvalidJsonAnswerError(UpstreamError):
    """The model's answer did not meet the requested JSON format, also after one retry.

    The raw answer (and its reasoning) is kept in the error's `cascade` detail, so a client
    (or a batch's error line) still has what the model said.
    """

    code = "invalid_json_answer"

    def __init__(self, message: str, *, answer: str, reasoning: str | None) -> None:
        super().__init__(message)
        self.detail = {"answer": answer, "reasoning": reasoning}


class RuntimeUnavailableError(CascadeError):
    """The runtime cannot be reached, is overloaded, or is not ready; retry later."""

    status = 503
    type = "server_error"
    code = "runtime_unavailable"

    def __init__(self, message: str, *, retry_after: float = 5.0, code: str | None = None) -> None:
        seconds = max(1, round(retry_after))
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after = retry_after


class UpstreamTimeoutError(CascadeError):
    status = 504
    type = "server_error"
    code = "runtime_timeout"


class InternalError(CascadeError):
    status = 500
    type = "server_error"
    code = "internal_error"


class ForbiddenError(CascadeError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class RequestTimeoutError(CascadeError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UnsupportedMediaTypeError(CascadeError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"
