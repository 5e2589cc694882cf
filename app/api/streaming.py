"""Server-sent event responses that begin only once their first event exists.

A door takes its stream's first item with `first_event` while it can still answer with a plain
HTTP error (a runtime that is down is a 503, not a 200 with an error inside), then hands both
to `event_stream`. Contract: whatever path ends the response (done, failed, client gone), the
stream's generator is closed, which is what aborts the runtime request and stores a cut turn.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

T = TypeVar("T")


async def first_event(events: AsyncGenerator[T, None]) -> T:
    """The stream's first item; on any failure the stream is closed and the error raised."""
    try:
        return await anext(events)
    except BaseException:
        await events.aclose()
        raise


class _Prepended:
    """`first`, then `events`' own items: each later item is `events.__anext__()` itself, so a
    relayed chunk passes through no generator of this module."""

    __slots__ = ("_events", "_first")

    def __init__(self, first: bytes, events: AsyncGenerator[Any, None]) -> None:
        self._first: bytes | None = first
        self._events = events

    def __aiter__(self) -> _Prepended:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        first, self._first = self._first, None
        if first is not None:
            return _now(first)
        return self._events.__anext__()


async def _now(item: bytes) -> bytes:
    return item


async def _close(events: AsyncGenerator[Any, None]) -> None:
    # A coroutine function, so Starlette awaits it: given `events.aclose` itself (a builtin
    # method, not a coroutine function) it ran that in a worker thread, which only made the
    # awaitable and dropped it, closing nothing, at the cost of a thread hop per response.
    await events.aclose()


def event_stream(
    first: object,
    events: AsyncGenerator[object, None],
    *,
    media_type: str = "text/event-stream",
) -> StreamingResponse:
    """`first`, then the rest of `events` (every item bytes: SSE events, or the lines of
    another `media_type` such as Ollama's `application/x-ndjson`)."""

    assert isinstance(first, bytes)
    return StreamingResponse(
        _Prepended(first, events),
        media_type=media_type,
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        # On a disconnect the response ends early; this makes sure the generator is closed,
        # not left to the garbage collector.
        background=BackgroundTask(_close, events),
    )
