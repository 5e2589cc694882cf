"""The API's HTTP server: uvicorn with connection-level limits.

uvicorn bounds an idle keep-alive connection but not a connection that sends its request
headers slowly (or never): forty such connections would be held forever. The protocol here
adds, per connection:

- a header deadline: from the moment a connection opens (or finishes a response and waits for
  the next request) its request headers must be complete within `http_header_timeout` seconds,
  or the connection is closed;
- a connection cap: past `http_max_connections` open connections a new one gets a 503 and is
  closed at once, so existing clients keep being served.

Body pace and size are bounded per request by `app.api.http_guard`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.config import HttpSettings

log = structlog.get_logger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\nretry-after: 1\r\ncontent-length: 108\r\n\r\n"
    b'{"error":{"message":"too many open connections; retry shortly","type":"server_error",'
    b'"param":null,"code":"busy"}}'
)


class GuardedHttpProtocol(HttpToolsProtocol):
    """httptools protocol with a request-header deadline and a connection cap."""

    header_timeout: float = 10.0
    max_connections: int = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("connection_refused", reason="max_connections")
            transport.write(_BUSY)
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("connection_closed", reason="header_timeout")
            self.transport.close()


def guarded_protocol(http: HttpSettings) -> type[GuardedHttpProtocol]:
    """A protocol class carrying this server's limits (uvicorn instantiates it per connection)."""
    return type(
        "CascadeHttpProtocol",
        (GuardedHttpProtocol,),
        {"header_timeout": http.http_header_timeout, "max_connections": http.http_max_connections},
    )


def server_config(app: Any, *, host: str, port: int, http: HttpSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(http),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=http.http_keepalive_timeout,
        timeout_graceful_shutdown=30,
    )
