"""The API process's recent errors, for the status page: a small bounded ring in memory.

Every response with a status of 400 or more is recorded by `ErrorRingMiddleware` (the runtime's
failures included: they reach clients as 502, 503 and 504 with their codes). Kept in the
process, not in Redis, on purpose: the page must still show errors while Redis is the thing
failing, the ring costs nothing per request, and a restart starting from an empty ring is fine
for "what went wrong lately" (the log keeps the history).

Contracts:
- At most `capacity` events are kept; the oldest goes first.
- An event holds no secrets and no bodies: the time, method, the route's template
  (`/v1/batches/{batch_id}`, never the concrete path or query), the status, cascade's error
  code (when the error handlers set one) and the request id.
- Errors inside a response that had already started (a stream that failed after its first
  chunk) are sent to the client as an event of that stream and logged; they are not recorded.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

RING_CAPACITY = 50
# Where the error handlers leave cascade's error code for the middleware (`scope["state"]`).
ERROR_CODE_STATE = "error_code"


class ErrorEvent(BaseModel):
    at: float
    method: str
    route: str
    status: int
    code: str | None
    request_id: str | None


class ErrorRing:
    """A bounded, thread-safe list of the latest `ErrorEvent`s."""

    def __init__(self, capacity: int = RING_CAPACITY) -> None:
        self._events: deque[ErrorEvent] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, event: ErrorEvent) -> None:
        with self._lock:
            self._events.append(event)

    def latest(self) -> list[ErrorEvent]:
        """The events, newest first."""
        with self._lock:
            return list(reversed(self._events))


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "(no route)"


class ErrorRingMiddleware:
    """Records every response with status >= 400 into `ring` (see the module's contracts)."""

    def __init__(self, app: ASGIApp, *, ring: ErrorRing) -> None:
        self.app = app
        self.ring = ring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        def record(status: int, code: object) -> None:
            request_id = scope.get("state", {}).get("request_id")
            self.ring.add(
                ErrorEvent(
                    at=time.time(),
                    method=scope["method"],
                    route=_route_template(scope),
                    status=status,
                    code=code if isinstance(code, str) else None,
                    request_id=request_id if isinstance(request_id, str) else None,
                )
            )

        async def recording(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    record(message["status"], scope.get("state", {}).get(ERROR_CODE_STATE))
            await send(message)

        try:
            await self.app(scope, receive, recording)
        except Exception:
            # An unexpected exception is answered (500) by Starlette's outermost layer, after
            # it has passed through here.
            if not started:
                record(500, "internal_error")
            raise
