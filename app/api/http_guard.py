"""Request admission: browser origins, body media types, body size and body pace.

One ASGI middleware in front of every route. Contracts:

- **Origins.** A request carrying an `Origin` header is refused with 403 unless that origin is
  listed in `CASCADE_CORS_ORIGINS` (default: none). Browsers send `Origin` on every cross-site
  POST, including the "simple" ones that skip a CORS preflight (`text/plain`, forms), so a web
  page can never drive cascade (and its tools) through the visitor's browser. Allowed origins
  get CORS answers (preflight and response headers); nobody else does. One exception: the
  status page's login and logout (`SAME_ORIGIN_PATHS`) also accept an Origin that names this
  server itself, since the page cascade serves posts there.
- **Media types.** A request with a body must be `application/json` (or `+json`), except the
  file upload, which must be `multipart/form-data`; anything else is a 415 before it is read.
- **Size.** A body larger than its endpoint's cap is a 413: at once when `Content-Length` says
  so, otherwise as soon as the bytes read pass the cap (nothing past it is read or kept).
- **Pace.** A body must arrive within a grace period plus `received / min_rate` seconds; a
  client trickling it slower gets a 408 and the connection is closed.

The handler behind never sees a refused request: refusals are answered here, and a body that
goes over a limit mid-way reaches the handler as a disconnect while this layer answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.config import HttpSettings
from app.api.errors import error_response
from app.errors import (
    CascadeError,
    ForbiddenError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)

log = structlog.get_logger(__name__)

UPLOAD_PATHS = frozenset({"/v1/files"})
# Routes whose bodies may carry images inline (data URIs).
IMAGE_BODY_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/jobs/image-questions",
        "/api/chat",
        "/api/generate",
    }
)
# The status page's own login and logout (`app.api.status`): there, and only there, an Origin
# naming this very server (the request's scheme and Host) is accepted as well. Browsers send
# Origin on same-origin POSTs too; elsewhere no page of cascade's posts, and DNS rebinding makes
# "the same host" weak evidence (on these two routes it gains an attacker nothing: a login
# needs a key, and its cookie is set for the attacker's host name, not cascade's).
SAME_ORIGIN_PATHS = frozenset({"/status/login", "/status/logout"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_EXPOSED = "x-request-id, retry-after, idempotent-replayed"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _same_origin(scope: Scope, origin: str) -> bool:
    host = _header(scope, b"host")
    if host is None:
        return False
    own = f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}"
    return origin.lower() == own.lower()


def _is_json(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


class RequestGuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: HttpSettings,
        cors_origins: list[str],
        chat_body_cap: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.settings = settings
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(cors_origins)
        self.chat_body_cap = chat_body_cap
        self.clock = clock

    def _allowed(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def body_cap(self, path: str) -> int | None:
        """The byte cap of a route's body; None for uploads, which enforce their own."""
        if path in UPLOAD_PATHS:
            return None
        if path in IMAGE_BODY_PATHS:
            return self.chat_body_cap
        return self.settings.http_max_json_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_origin = _header(scope, b"origin")
        origin = raw_origin.decode("latin-1") if raw_origin is not None else None
        if (
            origin is not None
            and not self._allowed(origin)
            and not (scope["path"] in SAME_ORIGIN_PATHS and _same_origin(scope, origin))
        ):
            log.warning("origin_refused", path=scope["path"])
            error = ForbiddenError(
                "cross-origin requests are not allowed from this origin; the operator can allow "
                "it with CASCADE_CORS_ORIGINS",
                code="origin_not_allowed",
            )
            await self._answer(scope, send, error, close=self._has_body(scope))
            return
        method = scope["method"]
        if (
            origin is not None
            and method == "OPTIONS"
            and _header(scope, b"access-control-request-method")
        ):
            await self._preflight(scope, send, origin)
            return
        if origin is not None:
            send = self._with_cors(send, origin)
        if method in _BODY_METHODS and self._has_body(scope):
            problem = self._check_body_headers(scope)
            if problem is not None:
                await self._answer(scope, send, problem, close=True)
                return
            await self._guard_body(scope, receive, send)
            return
        await self.app(scope, receive, send)

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _has_body(scope: Scope) -> bool:
        length = _header(scope, b"content-length")
        if length is not None:
            return length.strip() not in (b"", b"0")
        return _header(scope, b"transfer-encoding") is not None

    def _check_body_headers(self, scope: Scope) -> CascadeError | None:
        path = scope["path"]
        content_type = (_header(scope, b"content-type") or b"").decode("latin-1")
        if path in UPLOAD_PATHS:
            if not content_type.lower().startswith("multipart/form-data"):
                return UnsupportedMediaTypeError(
                    "an upload must be sent as multipart/form-data", param="content-type"
                )
        elif not _is_json(content_type):
            return UnsupportedMediaTypeError(
                "the request body must be JSON, sent with Content-Type: application/json",
                param="content-type",
            )
        cap = self.body_cap(path)
        length = _header(scope, b"content-length")
        if cap is not None and length is not None:
            if not length.strip().isdigit():
                return None  # the server's parser rejects a malformed length
            if int(length) > cap:
                return _too_large(cap)
        return None

    async def _guard_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = self.body_cap(scope["path"])
        grace = self.settings.http_body_grace
        rate = self.settings.http_body_min_rate
        started = self.clock()
        received = 0
        done = False
        refused: CascadeError | None = None
        response_started = False

        async def guarded_receive() -> Message:
            nonlocal received, done, refused
            if refused is not None:
                return {"type": "http.disconnect"}
            if done:
                return await receive()
            deadline = started + grace + received / rate
            try:
                async with asyncio.timeout(max(0.0, deadline - self.clock())):
                    message = await receive()
            except TimeoutError:
                refused = RequestTimeoutError(
                    "the request body arrived too slowly", code="body_too_slow"
                )
                log.warning("body_too_slow", path=scope["path"], received=received)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if cap is not None and received > cap:
                    refused = _too_large(cap)
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused is not None and not response_started:
                return  # this layer answers instead
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not response_started:
            await self._answer(scope, send, refused, close=True)

    # ------------------------------------------------------------------ answers

    @staticmethod
    async def _answer(scope: Scope, send: Send, error: CascadeError, *, close: bool) -> None:
        response = error_response(error, scope)
        if close:
            # The unread body is left behind: the connection cannot be reused.
            response.headers["connection"] = "close"

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)

    async def _preflight(self, scope: Scope, send: Send, origin: str) -> None:
        requested = (_header(scope, b"access-control-request-headers") or b"").decode("latin-1")
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
            (b"access-control-allow-headers", requested.encode("latin-1") or b"*"),
            (b"access-control-max-age", b"600"),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    def _with_cors(send: Send, origin: str) -> Send:
        extra = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", _EXPOSED.encode()),
            (b"vary", b"Origin"),
        ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return send_with_cors


def _too_large(cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body larger than {cap} bytes", code="request_too_large", param=None
    )
