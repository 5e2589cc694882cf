"""`SGLangClient.stream` over scripted network reads: what one read brings is handed on as one
chunk, and what precedes a bad event in a read is handed on before the error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from app.config import load_settings
from app.errors import UpstreamError
from app.runtime import RuntimeRequest, SGLangClient
from app.runtime.models import Chunk


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _text(text: str, tokens: int) -> bytes:
    return _event(
        {
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            "usage": {"completion_tokens": tokens},
        }
    )


FINISH = _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"


class _Content:
    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        return self.reads.pop(0) if self.reads else b""

    def is_eof(self) -> bool:
        return not self.reads

    async def read(self) -> bytes:
        return b""


class _Response:
    status = 200
    connection = None

    def __init__(self, reads: list[bytes]) -> None:
        self.content = _Content(reads)


class _Scripted(SGLangClient):
    def __init__(self, reads: list[bytes]) -> None:
        super().__init__(load_settings(model="m", runtime_max_retries=0))
        self.reads = reads

    @asynccontextmanager
    async def _open(
        self, path: str, payload: dict[str, Any], *, stream: bool, routing_key: str | None = None
    ) -> AsyncIterator[tuple[Any, bytes]]:
        yield _Response(list(self.reads)), b""


async def _chunks(client: SGLangClient, into: list[Chunk]) -> None:
    async for chunk in client.stream(RuntimeRequest(messages=[{"role": "user", "content": "q"}])):
        into.append(chunk)


async def test_one_read_is_one_chunk_and_the_finish_waits_for_its_usage() -> None:
    reads = [_text("a", 1) + _text(" b", 2), _text(" c", 3), FINISH, USAGE + DONE]
    chunks: list[Chunk] = []
    await _chunks(_Scripted(reads), chunks)
    assert [(c.content, c.completion_tokens) for c in chunks[:2]] == [("a b", 2), (" c", 3)]
    assert chunks[2].finish_reason == "stop"
    assert chunks[2].usage is not None and chunks[2].usage.prompt_tokens == 2
    assert len(chunks) == 3


@pytest.mark.parametrize(
    "bad",
    [b"data: {not json\n\n", _event({"error": {"message": "boom", "code": 500}})],
    ids=["malformed", "error event"],
)
async def test_what_precedes_a_bad_event_in_its_read_is_handed_on_first(bad: bytes) -> None:
    chunks: list[Chunk] = []
    with pytest.raises(UpstreamError):
        await _chunks(_Scripted([_text("a", 1) + _text(" b", 2) + bad]), chunks)
    assert [c.content for c in chunks] == ["a b"]
