"""`app.api.streaming.event_stream`: the first event, then the stream's own; the stream's
generator closed when the response ends, however it ends."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from app.api.streaming import event_stream


async def test_the_response_closes_a_stream_it_did_not_finish() -> None:
    closed: list[str] = []

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            while True:
                yield b"data: more\n\n"
        finally:
            closed.append("closed")

    stream = events()
    response = event_stream(b"data: first\n\n", stream)
    body = response.body_iterator
    assert [await anext(body), await anext(body)] == [b"data: first\n\n", b"data: more\n\n"]
    assert response.background is not None
    # What the response runs once it ended early (the client went away mid-stream).
    await response.background()
    assert closed == ["closed"]
    assert stream.ag_frame is None  # finished, not suspended at a yield
