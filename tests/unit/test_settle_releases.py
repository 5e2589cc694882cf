"""`settle_releases`: background releases get an owner at shutdown."""

from __future__ import annotations

import asyncio

from app.sessions import lock


async def test_finished_releases_are_awaited_and_stuck_ones_cancelled() -> None:
    done = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0)
        done.set()

    async def stuck() -> None:
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(quick()), asyncio.create_task(stuck())]
    for task in tasks:
        lock._cleanups.add(task)
        task.add_done_callback(lock._cleanups.discard)
    await lock.settle_releases(0.05)
    assert done.is_set() and not tasks[0].cancelled()
    assert tasks[1].cancelled()
    assert not lock._cleanups


async def test_nothing_pending_returns_at_once() -> None:
    assert not lock._cleanups
    await asyncio.wait_for(lock.settle_releases(10.0), 0.5)
