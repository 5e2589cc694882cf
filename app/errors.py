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
        """The OpenAI-shaped error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


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
