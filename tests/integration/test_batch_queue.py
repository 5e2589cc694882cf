"""The job queue's interface in a real Redis: claims, takeovers of idle entries, retries and
dead letters, acknowledgements, hand-backs, and items of cancelled batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from app.batches.lines import ResultRecord, failed_line, output_line
from app.batches.models import CreateBatchRequest
from app.batches.queue import JobQueue
from app.batches.store import BatchStore
from app.errors import InternalError
from tests.redis_server import RedisServer

BODY = b'{"messages":[]}'


@dataclass
class Setup:
    queue: JobQueue
    store: BatchStore  # only to create batches; every queue operation goes through `queue`


@pytest.fixture
async def setup(redis_server: RedisServer) -> AsyncIterator[Setup]:
    client = aioredis.Redis.from_url(redis_server.url)
    queue = JobQueue(client)
    await queue.ensure_group()
    yield Setup(queue, BatchStore(client))
    await client.aclose()


async def queued(s: Setup, count: int = 2) -> str:
    """A batch in progress with `count` items queued (custom ids c0, c1, ...)."""
    batch = await s.store.create(
        "owner", CreateBatchRequest(input_file_id="file-x", endpoint="/v1/chat/completions")
    )
    assert await s.store.transition(batch.id, ("validating",), "in_progress", valid=count)
    items = [(f"c{i}", i + 1, BODY) for i in range(count)]
    await s.queue.feed(batch, items, offset=0, line=count)
    return batch.id


def answer(custom_id: str) -> ResultRecord:
    return ResultRecord("output", output_line(custom_id, {"text": "ok"}, request_id="r"))


def failure(custom_id: str) -> ResultRecord:
    error = InternalError("it failed", code="batch_item_poison")
    return ResultRecord("error", failed_line(custom_id, error, request_id="r"))


async def test_items_are_claimed_once_in_the_order_they_were_queued(setup: Setup) -> None:
    await queued(setup, 3)
    first = await setup.queue.claim("w1", 2, block_ms=10)
    rest = await setup.queue.claim("w2", 10, block_ms=10)
    assert [i.custom_id for i in first] == ["c0", "c1"]
    assert [(i.custom_id, i.line, i.attempt, i.body) for i in rest] == [("c2", 3, 1, BODY)]
    assert await setup.queue.claim("w3", 10, block_ms=10) == []


async def test_ack_removes_the_item(setup: Setup) -> None:
    batch_id = await queued(setup, 1)
    [item] = await setup.queue.claim("w1", 10, block_ms=10)
    assert await setup.queue.start_item(item, "w1") == ("run", 1)
    assert await setup.queue.finish_item(item, answer("c0"), worker="w1") == "written"
    assert await setup.queue.running_workers(batch_id) == {}
    assert await setup.queue.reclaim("w2", 10, idle=0) == []
    assert await setup.queue.claim("w2", 10, block_ms=10) == []
    assert await setup.store.redis.xlen(setup.queue.keys.stream()) == 0


async def test_claimed_item_is_reclaimed_after_idle(setup: Setup) -> None:
    await queued(setup, 1)
    [item] = await setup.queue.claim("dead", 10, block_ms=10)
    assert await setup.queue.reclaim("w2", 10, idle=0.3) == []  # not idle long enough yet
    await asyncio.sleep(0.35)
    [taken] = await setup.queue.reclaim("w2", 10, idle=0.3)
    assert (taken.msg_id, taken.custom_id, taken.attempt) == (item.msg_id, "c0", 1)
    # now pending under w2: w2's own result concludes it
    assert await setup.queue.start_item(taken, "w2") == ("run", 1)
    assert await setup.queue.finish_item(taken, answer("c0"), worker="w2") == "written"
    assert await setup.queue.reclaim("w3", 10, idle=0) == []


async def test_touched_item_is_not_reclaimed(setup: Setup) -> None:
    await queued(setup, 1)
    [item] = await setup.queue.claim("alive", 10, block_ms=10)
    for _ in range(3):
        await asyncio.sleep(0.15)
        await setup.queue.touch("alive", [item.msg_id])
    assert await setup.queue.reclaim("w2", 10, idle=0.3) == []


async def test_a_second_delivery_writes_no_second_result(setup: Setup) -> None:
    batch_id = await queued(setup, 1)
    [item] = await setup.queue.claim("slow", 10, block_ms=10)
    await asyncio.sleep(0.05)
    [again] = await setup.queue.reclaim("w2", 10, idle=0.01)
    assert await setup.queue.start_item(again, "w2") == ("run", 1)
    assert await setup.queue.finish_item(again, answer("c0"), worker="w2") == "written"
    # the first delivery comes back late: nothing more is visible
    assert await setup.queue.start_item(item, "slow") == ("done", 0)
    assert await setup.queue.finish_item(item, answer("c0"), worker="slow") == "duplicate"
    batch = await setup.store.load(batch_id)
    assert batch is not None and (batch.request_counts.completed, batch.done) == (1, 1)


async def test_retry_comes_back_as_the_next_attempt_when_due(setup: Setup) -> None:
    await queued(setup, 1)
    [item] = await setup.queue.claim("w1", 10, block_ms=10)
    await setup.queue.start_item(item, "w1")
    assert await setup.queue.retry_later(item, due=time.time() + 0.3, worker="w1")
    assert await setup.queue.move_due() == 0
    assert await setup.queue.claim("w2", 10, block_ms=10) == []
    await asyncio.sleep(0.35)
    assert await setup.queue.move_due() == 1
    [again] = await setup.queue.claim("w2", 10, block_ms=10)
    assert (again.custom_id, again.attempt, again.line, again.body) == ("c0", 2, 1, BODY)
    assert await setup.queue.start_item(again, "w2") == ("run", 2)


async def test_item_dead_lettered_after_max_tries(setup: Setup) -> None:
    batch_id = await queued(setup, 1)
    max_tries = 3
    tries = 0
    for _ in range(100):
        await setup.queue.move_due()
        claimed = await setup.queue.claim("w1", 10, block_ms=50)
        if not claimed:
            continue
        [item] = claimed
        tries += 1
        assert item.attempt == tries
        assert (await setup.queue.start_item(item, "w1"))[0] == "run"
        if item.attempt >= max_tries:
            assert await setup.queue.dead_letter(item, failure("c0"), worker="w1")
            break
        assert await setup.queue.retry_later(item, due=time.time(), worker="w1")
    assert tries == max_tries
    [stored] = await setup.store.results(batch_id, ["c0"])
    assert stored is not None and stored.kind == "error"
    batch = await setup.store.load(batch_id)
    assert batch is not None and (batch.request_counts.failed, batch.done) == (1, 1)
    # never delivered again
    assert await setup.queue.move_due() == 0
    assert await setup.queue.claim("w2", 10, block_ms=10) == []
    assert await setup.queue.reclaim("w2", 10, idle=0) == []


async def test_only_an_error_can_be_dead_lettered(setup: Setup) -> None:
    await queued(setup, 1)
    [item] = await setup.queue.claim("w1", 10, block_ms=10)
    with pytest.raises(ValueError):
        await setup.queue.dead_letter(item, answer("c0"), worker="w1")


async def test_released_item_is_handed_to_the_next_claim(setup: Setup) -> None:
    batch_id = await queued(setup, 1)
    [item] = await setup.queue.claim("draining", 10, block_ms=10)
    await setup.queue.start_item(item, "draining")
    await setup.queue.release(item, worker="draining", requeue=True)
    assert await setup.queue.running_workers(batch_id) == {}
    [again] = await setup.queue.claim("w2", 10, block_ms=10)
    assert (again.custom_id, again.attempt) == ("c0", 1) and again.msg_id != item.msg_id
    assert await setup.queue.reclaim("w3", 10, idle=0) == [again]  # only the new entry is out


async def test_cancelled_batch_items_are_not_claimed(setup: Setup) -> None:
    batch_id = await queued(setup, 2)
    [first, second] = await setup.queue.claim("w1", 10, block_ms=10)
    assert (await setup.queue.start_item(first, "w1"))[0] == "run"
    await setup.store.cancel("owner", batch_id)
    assert await setup.queue.start_item(second, "w1") == ("skip", 0)
    await setup.queue.release(second, worker="w1", requeue=False)
    # the one running (on a live worker) keeps the batch from sealing until it is concluded
    await setup.store.redis.set(setup.queue.keys.worker("w1"), "alive", ex=30)
    assert not await setup.queue.seal_when_idle(batch_id)
    assert await setup.queue.finish_item(first, answer("c0"), worker="w1") == "written"
    assert await setup.queue.seal_when_idle(batch_id)
    # a retry of a sealed batch's item is dropped, not parked
    assert not await setup.queue.retry_later(second, due=time.time(), worker="w1")
    assert await setup.queue.move_due() == 0
    assert await setup.queue.claim("w2", 10, block_ms=10) == []


async def test_malformed_entry_is_dropped_not_delivered(setup: Setup) -> None:
    stream = setup.queue.keys.stream()
    await setup.store.redis.xadd(stream, {"b": "batch_x", "c": "x", "n": "NaN"})
    await queued(setup, 1)
    [item] = await setup.queue.claim("w1", 10, block_ms=10)
    assert item.custom_id == "c0"
    assert await setup.store.redis.xlen(stream) == 1


async def test_a_lost_group_is_created_again(setup: Setup) -> None:
    await setup.store.redis.delete(setup.queue.keys.stream())
    assert await setup.queue.claim("w1", 10, block_ms=10) == []
    await queued(setup, 1)
    [item] = await setup.queue.claim("w1", 10, block_ms=10)
    assert item.custom_id == "c0"


async def test_idle_consumers_holding_nothing_are_forgotten(setup: Setup) -> None:
    await queued(setup, 3)
    assert await setup.queue.claim("holder", 1, block_ms=10)
    for name in ("finished", "me"):
        [item] = await setup.queue.claim(name, 1, block_ms=10)
        await setup.queue.finish_item(item, answer(item.custom_id), worker=name)
    await asyncio.sleep(0.1)
    await setup.queue.forget_idle_consumers("me", idle=0.05)
    rows = await setup.store.redis.xinfo_consumers(setup.queue.keys.stream(), "workers")
    assert {bytes(row["name"]) for row in rows} == {b"holder", b"me"}


async def test_workers_lists_heartbeats_and_consumers_that_lost_theirs(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        queue = JobQueue(client)
        assert await queue.workers() == []  # no stream yet: nothing, and no error
        await queue.ensure_group()
        s = Setup(queue, BatchStore(client))
        await queued(s, 3)
        await client.set(queue.keys.worker("live-1"), "alive", ex=60)
        await client.set(queue.keys.worker("idle*2"), "alive", ex=60)  # glob characters
        await queue.claim("live-1", 1, block_ms=10)
        await queue.claim("dead-1", 2, block_ms=10)  # a consumer whose heartbeat expired
        # a key of another prefix is not a worker of this queue
        await client.set("other:workers:stranger", "alive", ex=60)
        workers = {w.name: w for w in await queue.workers()}
    finally:
        await client.aclose()
    assert sorted(workers) == ["dead-1", "idle*2", "live-1"]
    assert workers["live-1"].alive and workers["live-1"].pending == 1
    assert workers["live-1"].idle_seconds is not None and workers["live-1"].idle_seconds < 5
    assert not workers["dead-1"].alive and workers["dead-1"].pending == 2
    assert workers["idle*2"].alive and workers["idle*2"].pending == 0
    assert workers["idle*2"].idle_seconds is None  # never read the queue
