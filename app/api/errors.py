"""The one place where errors become HTTP responses: OpenAI-shaped JSON, except under the
Ollama API (`/api/*`), where the body is Ollama's `{"error": "message"}` with the same status.

Unknown exceptions are logged with their traceback and answered with a generic 500: their text
never reaches the client.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from app import metrics
from app.api.error_ring import ERROR_CODE_STATE
from app.api.responses import JSONResponse
from app.errors import (
    CascadeError,
    InternalError,
    InvalidRequestError,
    RuntimeUnavailableError,
)

log = structlog.get_logger(__name__)


OLLAMA_PREFIX = "/api/"


def error_response(error: CascadeError, scope: Scope | None = None) -> JSONResponse:
    """The error's JSON response (Ollama's shape for a request under `/api/`, with the
    error's `cascade` detail beside the message when it has one); with the request's `scope`,
    its code is also left where the recent-errors ring reads it (`app.api.error_ring`)."""
    path = scope.get("path", "") if scope is not None else ""
    if scope is not None:
        scope.setdefault("state", {})[ERROR_CODE_STATE] = error.code
    body: dict[str, Any]
    if path.startswith(OLLAMA_PREFIX):
        body = {"error": error.message}
        if error.detail is not None:
            body["cascade"] = error.detail
    else:
        body = error.to_body()
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    where = f" at {param}" if param else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{first.get('msg', 'invalid value')}{where}{more}", param


def _storage_error(exc: RedisError) -> CascadeError:
    log.warning("redis_unavailable", exc_type=type(exc).__name__)
    metrics.REDIS_ERRORS.labels("request").inc()
    return RuntimeUnavailableError(
        "cascade's storage (Redis) is not answering; retry shortly",
        retry_after=2,
        code="storage_unavailable",
    )


def exception_response(exc: Exception, scope: Scope) -> JSONResponse:
    """The response for an exception a door raised: the same mapping FastAPI's handlers
    (`install_error_handlers`) apply, for the doors dispatched ahead of FastAPI's router
    (`app.api.hot_routes`). Their bodies are parsed by the door, so no validation error of
    FastAPI's reaches here."""
    if isinstance(exc, CascadeError):
        if exc.status >= 500:
            log.warning("request_failed", status=exc.status, code=exc.code)
        return error_response(exc, scope)
    if isinstance(exc, RedisError):
        return error_response(_storage_error(exc), scope)
    log.error("unhandled_exception", exc_type=type(exc).__name__, exc_info=exc)
    return error_response(
        InternalError("internal error; the operator can find it in the log"), scope
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CascadeError)
    async def _cascade(request: Request, exc: CascadeError) -> JSONResponse:
        return exception_response(exc, request.scope)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequestError(message, param=param), request.scope)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = CascadeError(
            "not found" if exc.status_code == 404 else "request not allowed",
            code="not_found" if exc.status_code == 404 else "http_error",
        )
        error.status = exc.status_code
        error.type = "invalid_request_error"
        return error_response(error, request.scope)

    @app.exception_handler(RedisError)
    async def _storage(request: Request, exc: RedisError) -> JSONResponse:
        return exception_response(exc, request.scope)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return exception_response(exc, request.scope)
