"""The atomic contracts of batch bookkeeping in a real Redis: one visible result per item,
counts that match, no start after a cancel, sealing, parked retries, hand-backs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.batches.keys import GROUP
from app.batches.lines import ResultRecord, output_line
from app.batches.models import CreateBatchRequest
from app.batches.store import BatchStore, QueueItem
from app.errors import ConflictError, NotFoundError
from tests.redis_server import RedisServer


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[BatchStore]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield BatchStore(client)
    await client.aclose()


async def in_progress(store: BatchStore, count: int = 2) -> tuple[str, list[QueueItem]]:
    """A batch in progress with `count` items queued and read by consumer `w1`."""
    batch = await store.create(
        "owner", CreateBatchRequest(input_file_id="file-x", endpoint="/v1/chat/completions")
    )
    assert await store.transition(batch.id, ("validating",), "in_progress", valid=count)
    await store.redis.xgroup_create(store.keys.stream(), GROUP, id="0", mkstream=True)
    await store.feed(
        batch, [(f"c{i}", i + 1, b'{"messages":[]}') for i in range(count)], offset=0, line=count
    )
    response = await store.redis.xreadgroup(GROUP, "w1", {store.keys.stream(): ">"}, count=count)
    items = [QueueItem.from_entry(msg_id, fields) for msg_id, fields in response[0][1]]
    return batch.id, items


def answer(custom_id: str, text: str) -> ResultRecord:
    return ResultRecord("output", output_line(custom_id, {"text": text}, request_id="r"))


async def test_one_visible_result_and_exact_counts(store: BatchStore) -> None:
    batch_id, (item, _) = await in_progress(store)
    assert await store.start_item(item, "w1") == ("run", 1)
    usage = {"input_tokens": 10, "output_tokens": 3}
    assert await store.finish_item(item, answer("c0", "first"), worker="w1", usage=usage) == (
        "written"
    )
    # A second delivery of the same item (a takeover) changes nothing visible.
    assert await store.start_item(item, "w2") == ("done", 0)
    assert await store.finish_item(item, answer("c0", "second"), worker="w2") == "duplicate"
    [stored] = await store.results(batch_id, ["c0"])
    assert stored is not None and stored.line["response"]["body"] == {"text": "first"}
    batch = await store.load(batch_id)
    assert batch is not None
    assert (batch.request_counts.completed, batch.request_counts.failed, batch.done) == (1, 0, 1)
    assert batch.usage["input_tokens"] == 10
    # acknowledged and removed from the stream; not running any more
    pending = await store.redis.xpending(store.keys.stream(), GROUP)
    assert pending["pending"] == 1  # only c1 is still out
    assert await store.running_workers(batch_id) == {}


async def test_no_start_after_cancel(store: BatchStore) -> None:
    batch_id, (first, second) = await in_progress(store)
    assert (await store.start_item(first, "w1"))[0] == "run"
    cancelled = await store.cancel("owner", batch_id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    assert await store.start_item(second, "w1") == ("skip", 0)
    # the one that had started may still finish
    assert await store.finish_item(first, answer("c0", "x"), worker="w1") == "written"
    with pytest.raises(NotFoundError):
        await store.cancel("someone-else", batch_id)


async def test_sealed_batches_take_no_results(store: BatchStore) -> None:
    batch_id, (item, _) = await in_progress(store)
    await store.start_item(item, "w1")
    await store.seal(batch_id)
    assert await store.finish_item(item, answer("c0", "late"), worker="w1") == "sealed"
    assert await store.results(batch_id, ["c0"]) == [None]
    assert await store.start_item(item, "w1") == ("skip", 0)


async def test_seal_waits_for_live_workers_only(store: BatchStore) -> None:
    batch_id, (first, second) = await in_progress(store)
    await store.redis.set(store.keys.worker("alive"), "1", ex=30)
    await store.start_item(first, "alive")
    await store.start_item(second, "dead")  # no heartbeat key: it died
    assert not await store.seal_when_idle(batch_id)
    await store.finish_item(first, answer("c0", "x"), worker="alive")
    assert await store.seal_when_idle(batch_id)
    batch = await store.load(batch_id)
    assert batch is not None and batch.sealed


async def test_parked_retry_comes_back_when_due(store: BatchStore) -> None:
    batch_id, (item, _) = await in_progress(store)
    await store.start_item(item, "w1")
    assert await store.retry_later(item, due=time.time() + 0.3, worker="w1")
    assert await store.running_workers(batch_id) == {}
    assert await store.move_due() == 0
    await asyncio.sleep(0.35)
    assert await store.move_due() == 1
    response = await store.redis.xreadgroup(GROUP, "w2", {store.keys.stream(): ">"}, count=10)
    [(msg_id, fields)] = response[0][1]
    again = QueueItem.from_entry(msg_id, fields)
    assert (again.custom_id, again.attempt, again.line, again.body) == (
        "c0",
        2,
        1,
        item.body,
    )
    assert await store.start_item(again, "w2") == ("run", 2)


async def test_release_hands_an_item_back_at_once(store: BatchStore) -> None:
    batch_id, (item, _) = await in_progress(store)
    await store.start_item(item, "w1")
    await store.release(item, worker="w1", requeue=True)
    assert await store.running_workers(batch_id) == {}
    response = await store.redis.xreadgroup(GROUP, "w2", {store.keys.stream(): ">"}, count=10)
    [(_, fields)] = response[0][1]
    assert QueueItem.from_entry(b"0-1", fields).custom_id == "c0"


async def test_a_finished_batch_cannot_be_cancelled(store: BatchStore) -> None:
    batch_id, _ = await in_progress(store)
    assert await store.transition(batch_id, ("in_progress",), "completed", completed_at=1)
    with pytest.raises(ConflictError):
        await store.cancel("owner", batch_id)
    assert not await store.transition(batch_id, ("in_progress",), "failed")
