"""The coordinator lease in a real Redis: one coordinator at a time; another takes over once a
frozen holder's lease expired; the frozen one, thawed, stops coordinating."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from app.batches.config import load_batch_settings
from app.batches.coordinator import Coordinator
from app.config import load_settings
from app.media.config import MediaSettings
from app.media.files import FileStore
from tests.redis_server import RedisServer
from tools.registry import ToolPolicy

T = TypeVar("T")
LEASE = 0.6


def coordinator(url: str, state: Path) -> Coordinator:
    client = aioredis.Redis.from_url(url)
    return Coordinator(
        client,
        FileStore(client, state, MediaSettings()),
        load_settings(),
        load_batch_settings(batch_lease_seconds=LEASE),
        None,
        ToolPolicy(),
    )


class Process:
    """An event loop in its own thread, standing in for another API process: it can be frozen
    (nothing on it runs, as under SIGSTOP) and thawed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.thaw()

    def thaw(self) -> None:
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def freeze(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(5)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(10)

    def close(self) -> None:
        self.freeze()
        self.loop.close()


@pytest.fixture
def other() -> Iterator[Process]:
    process = Process()
    yield process
    process.close()


@pytest.fixture
async def here(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Coordinator]:
    subject = coordinator(redis_server.url, tmp_path / "here")
    yield subject
    await subject.lease.release()
    await subject.redis.aclose()


async def make(url: str, state: Path) -> Coordinator:
    return coordinator(url, state)


async def close(subject: Coordinator) -> None:
    await subject.lease.release()
    await subject.redis.aclose()


async def test_one_coordinator_at_a_time_and_a_takeover_after_the_lease_expires(
    redis_server: RedisServer, tmp_path: Path, here: Coordinator, other: Process
) -> None:
    there = other.run(make(redis_server.url, tmp_path / "there"))
    try:
        assert other.run(there.hold_lease())
        assert not await here.hold_lease()
        await asyncio.sleep(LEASE * 1.5)
        assert not await here.hold_lease()  # renewed while held
        other.freeze()
        assert not await here.hold_lease()  # not before the lease ran out
        await asyncio.sleep(LEASE * 1.2)
        assert await here.hold_lease()
        # Thawed, the old holder finds the lease taken at its next renewal and stops.
        other.thaw()
        await asyncio.sleep(LEASE / 2)
        assert not other.run(there.hold_lease())
        assert await here.hold_lease()
    finally:
        other.run(close(there))


async def test_a_released_lease_is_taken_at_once(
    redis_server: RedisServer, tmp_path: Path, here: Coordinator, other: Process
) -> None:
    there = other.run(make(redis_server.url, tmp_path / "there"))
    try:
        assert other.run(there.hold_lease())
        assert not await here.hold_lease()
        stop = asyncio.Event()
        stop.set()
        other.run(there.run(stop))  # a graceful stop lets go of the lease
        assert await here.hold_lease()
    finally:
        other.run(close(there))
