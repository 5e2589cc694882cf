"""The access log and the request metrics: one `http_request` line per HTTP request.

An ASGI middleware inside the request id's (`app.api.middleware`), so the line carries it. It
opens the request's `RequestRecord` (`app.metrics`) and its tracing span, and when the response
has ended (for a stream: its last event, or the client leaving) it writes one line and counts
the request. The line has: method, path (the route template, such as `/v1/batches/{batch_id}`;
the bare path when no route matched; never the query string), status, latency_ms, request_id,
key_id (the owner id `app.api.auth` derives from the API key, never the key), session_id and
response_id when the door gave one out, and the run's prompt and completion tokens when a run
ended. Never a body, never a header.

Per response chunk it costs one function call and a branch: nothing is counted per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics, tracing

log = structlog.get_logger(__name__)


class AccessLogMiddleware:
    """See the module docstring; `served_model` names the model for the request counter."""

    def __init__(self, app: ASGIApp, *, served_model: Callable[[], str | None]) -> None:
        self.app = app
        self.served_model = served_model
        self._requests: dict[tuple[str, int, str], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        record = metrics.RequestRecord(metrics.door_of(scope["path"]))
        status = 0
        first_byte = 0.0
        ended = 0.0

        async def send_and_watch(message: Message) -> None:
            nonlocal status, first_byte, ended
            if message["type"] == "http.response.body":
                if not first_byte:
                    first_byte = time.perf_counter()
                if not message.get("more_body", False):
                    ended = time.perf_counter()
            elif message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = metrics.bind(record)
        try:
            with tracing.span(
                "http_request", method=scope["method"], path=scope["path"], door=record.door
            ):
                await self.app(scope, receive, send_and_watch)
        finally:
            metrics.unbind(token)
            now = time.perf_counter()
            self._finish(scope, record, status or 500, start, first_byte or now, ended or now)

    def _finish(
        self,
        scope: Scope,
        record: metrics.RequestRecord,
        status: int,
        start: float,
        first_byte: float,
        ended: float,
    ) -> None:
        door = record.door
        model = (self.served_model() or "") if record.ran_model else ""
        key = (door, status, model)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = metrics.HTTP_REQUESTS.labels(door, str(status), model)
        counter.inc()
        metrics.FIRST_BYTE_BY_DOOR[door].observe(first_byte - start)
        metrics.DURATION_BY_DOOR[door].observe(ended - start)
        route = scope.get("route")
        log.info(
            "http_request",
            method=scope["method"],
            path=getattr(route, "path", None) or scope["path"],
            status=status,
            latency_ms=round((ended - start) * 1000, 2),
            request_id=scope.get("state", {}).get("request_id"),
            key_id=record.key_id,
            session_id=record.session_id,
            response_id=record.response_id,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )
