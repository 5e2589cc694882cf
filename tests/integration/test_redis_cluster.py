"""cascade's stores against a real three-master Redis Cluster: every script, transaction and
multi-key command must keep its keys in one hash slot, or the cluster (or redis-py's cluster
client, before sending) refuses it with CROSSSLOT.

The per-store tests drive each store's operations; `test_every_script_keeps_its_keys_in_one_slot`
runs all of them again while recording each script call, and checks that every script the code
base registers was called, each time with keys of one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from app.batches.lines import ResultRecord, output_line
from app.batches.models import CreateBatchRequest
from app.batches.store import BatchStore
from app.errors import ConflictError, NotFoundError
from app.media.config import MediaSettings
from app.media.files import FileStore
from app.redis_client import cluster_url, redis_client
from app.sessions import IdempotencyStore, SessionStore
from app.sessions.keys import Keys
from app.sessions.ledger import Ledger, Pause, Steps
from app.sessions.lock import RedisLock
from app.sessions.responses_store import ResponseStore, StoredResponse
from tests.integration.test_batch_support import batch_api, read_lines, upload_jsonl
from tests.redis_server import RedisClusterServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle
from workers.main import consume, opened_worker

OWNER = "key_alice"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def cluster(redis_cluster: RedisClusterServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


def test_cluster_urls_are_recognised() -> None:
    assert cluster_url("redis+cluster://10.0.0.1:7000") == "redis://10.0.0.1:7000"
    assert cluster_url("rediss+cluster://u:p@h:7000") == "rediss://u:p@h:7000"
    assert cluster_url("redis://h:6379/0") is None


async def test_the_client_is_a_cluster_client(cluster: aioredis.Redis) -> None:
    info = await cluster.cluster_info()  # type: ignore[attr-defined]
    assert info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == 3


# ----------------------------------------------------------------------------- the scenarios


async def sessions_scenario(redis: aioredis.Redis) -> None:
    store = SessionStore(redis)
    idem = IdempotencyStore(redis)
    info = await store.create(OWNER, title="t", messages=[{"role": "user", "content": "hi"}])
    async with store.turn_lock(info.id):
        assert await idem.begin(OWNER, "k", "h", session_id=info.id) is None
        info = await store.append_turn(
            info.id, OWNER, [{"role": "assistant", "content": "yo"}], expected_version=0
        )
        await idem.complete(OWNER, "k", {"answer": "yo"}, session_id=info.id)
    assert await idem.begin(OWNER, "k", "h", session_id=info.id) == {"answer": "yo"}
    assert await idem.begin(OWNER, "other", "h", session_id=info.id) is None
    await idem.abandon(OWNER, "other", session_id=info.id)
    with pytest.raises(ConflictError):
        await store.append_turn(info.id, OWNER, [], expected_version=0)
    loaded, messages = await store.load(info.id, OWNER)
    assert loaded.version == 1 and [m["content"] for m in messages] == ["hi", "yo"]
    info = await store.set_metadata(info.id, OWNER, {"topic": "otters"})
    info = await store.edit_messages(
        info.id, OWNER, expected_version=1, replace={0: {"role": "user", "content": "hello"}}
    )
    fork = await store.fork(info.id, OWNER, upto=1)
    page, more = await store.list(OWNER, limit=1)
    assert [s.id for s in page] == [fork.id] and more
    page, more = await store.list(OWNER, after=fork.id)
    assert [s.id for s in page] == [info.id] and not more
    await store.delete(info.id, OWNER)
    with pytest.raises(NotFoundError):
        await store.load(info.id, OWNER)
    assert await redis.exists(idem.keys.idempotency(OWNER, "k", info.id)) == 0
    assert [s.id for s in (await store.list(OWNER))[0]] == [fork.id]
    # A session turn's own path: lock and read in one script, commit and release in another.
    held, _, forked = await store.lock_and_load(fork.id, OWNER)
    assert [m["content"] for m in forked] == ["hello"]
    turned = await store.append_turn(
        fork.id,
        OWNER,
        [{"role": "assistant", "content": "again"}],
        expected_version=0,
        release=held,
    )
    assert turned.message_count == 2 and await redis.exists(store.keys.lock(fork.id)) == 0
    await held.release()
    lock = RedisLock(redis, store.keys.lock(fork.id), ttl=0.3, wait=0.0, message="busy")
    async with lock:
        await asyncio.sleep(0.35)  # past the lease: only the renewals keep it
        with pytest.raises(ConflictError):
            await RedisLock(
                redis, store.keys.lock(fork.id), ttl=1, wait=0, message="busy"
            ).acquire()
    assert not lock.lost and await redis.exists(store.keys.lock(fork.id)) == 0


async def responses_scenario(redis: aioredis.Redis) -> None:
    store = ResponseStore(redis)
    body = {"id": "resp_1", "status": "queued", "output": []}
    await store.put(OWNER, StoredResponse(body=body, input_items=[], history=[]))
    assert (await store.get(OWNER, "resp_1")).body["status"] == "queued"
    assert await store.start(OWNER, "resp_1") == 1
    done = {**body, "status": "completed"}
    assert await store.finish(OWNER, StoredResponse(body=done, input_items=[], history=[]))
    assert await store.status(OWNER, "resp_1") == "completed"
    assert not await store.cancel(OWNER, "resp_1")
    await store.put(
        OWNER, StoredResponse(body={**body, "id": "resp_2"}, input_items=[], history=[])
    )
    assert await store.cancel(OWNER, "resp_2")
    assert await store.start(OWNER, "resp_2") == 0
    assert await store.claim_approval("pause_1") and not await store.claim_approval("pause_1")
    await store.delete(OWNER, "resp_1")
    with pytest.raises(NotFoundError):
        await store.get(OWNER, "resp_1")


async def ledger_scenario(redis: aioredis.Redis) -> None:
    ledger = Ledger(redis)
    steps = Steps(span=1, messages=[{"role": "assistant", "content": "a"}])
    pause = Pause(pause_id="p", owner=OWNER, span=1, messages=[], calls=[])
    await ledger.write(OWNER, [("d1", steps), ("d2", steps)], ("d3", pause))
    read = await ledger.read(OWNER, ["d1", "d2", "missing"], "d3")
    assert set(read.steps) == {"d1", "d2"} and read.pause == pause
    assert (await ledger.read(OWNER, [], "d3")).pause is None  # taken once


async def files_scenario(redis: aioredis.Redis, root: Path) -> None:
    files = FileStore(redis, root, MediaSettings())
    first = await files.create(OWNER, filename="a.jsonl", purpose="batch", content=b"{}\n")
    second = await files.create(OWNER, filename="b.jsonl", purpose="batch", content=b"[]\n")
    assert (await files.get(OWNER, first.id)).filename == "a.jsonl"
    listed, _ = await files.list(OWNER)
    assert {f.id for f in listed} == {first.id, second.id}
    await files.delete(OWNER, first.id)
    assert [f.id for f in (await files.list(OWNER))[0]] == [second.id]


async def batches_scenario(redis: aioredis.Redis) -> None:
    store = BatchStore(redis)
    await store.ensure_group()
    batch = await store.create(
        OWNER, CreateBatchRequest(input_file_id="file-x", endpoint="/v1/chat/completions")
    )
    assert await store.active_ids() == [batch.id]
    assert await store.transition(batch.id, ("validating",), "in_progress", valid=3)
    await store.feed(batch, [(f"c{i}", i + 1, b"{}") for i in range(3)], offset=9, line=3)
    items = await store.claim("w1", 3, block_ms=100)
    assert [i.custom_id for i in items] == ["c0", "c1", "c2"]
    await store.touch("w1", [i.msg_id for i in items])
    for item in items:
        assert (await store.start_item(item, "w1"))[0] == "run"
    record = ResultRecord("output", output_line("c0", {"text": "ok"}, request_id="r"))
    assert await store.finish_item(items[0], record, worker="w1", images=["ab" * 32]) == "written"
    assert await store.finish_item(items[0], record, worker="w1") == "duplicate"
    assert await store.retry_later(items[1], due=time.time() - 1, worker="w1")
    await store.release(items[2], worker="w1", requeue=True)
    assert await store.move_due() == 1
    again = await store.claim("w2", 5, block_ms=100)
    assert sorted(i.custom_id for i in again) == ["c1", "c2"]
    assert {i.attempt for i in again if i.custom_id == "c1"} == {2}
    assert await store.reclaim("w3", 5, idle=60) == []
    for item in again:
        await store.release(item, worker="w2", requeue=False)
    assert await store.references_image(batch.id, "ab" * 32)
    assert [r.kind for r in await store.results(batch.id, ["c0"]) if r] == ["output"]
    assert await store.seal_when_idle(batch.id)
    assert await store.finish_item(items[1], record, worker="w1") == "sealed"
    assert await store.transition(batch.id, ("in_progress",), "completed")
    await store.retire(batch.id, 60)
    assert await store.active_ids() == []
    listed, _ = await store.list_batches(OWNER)
    assert [b.id for b in listed] == [batch.id] and listed[0].request_counts.completed == 1
    await store.queue_response("resp_x", OWNER, b"{}")
    jobs = await store.claim_responses("w1", 5)
    assert [j.response_id for j in jobs] == ["resp_x"]
    await store.release_response(jobs[0], requeue=True)
    (job,) = await store.claim_responses("w1", 5)
    await store.conclude_response(job)
    assert await store.claim_responses("w1", 5) == []
    await store.forget_idle_consumers("w1", idle=0)
    assert {w.name for w in await store.workers()} >= {"w1"}


# ----------------------------------------------------------------------------- each store


async def test_sessions_locks_and_idempotency_work_on_a_cluster(cluster: aioredis.Redis) -> None:
    await sessions_scenario(cluster)


async def test_conversations_work_on_a_cluster(cluster: aioredis.Redis) -> None:
    store = SessionStore(cluster)
    conv = await store.create(OWNER, metadata={"a": "1"}, id_prefix="conv")
    conv = await store.append_turn(
        conv.id,
        OWNER,
        [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
        expected_version=0,
    )
    conv = await store.edit_messages(conv.id, OWNER, expected_version=1, remove=[0])
    conv = await store.set_metadata(conv.id, OWNER, {})
    _, messages = await store.load(conv.id, OWNER)
    assert [m["content"] for m in messages] == ["two"] and conv.metadata == {}


async def test_responses_store_works_on_a_cluster(cluster: aioredis.Redis) -> None:
    await responses_scenario(cluster)


async def test_ledger_works_on_a_cluster(cluster: aioredis.Redis) -> None:
    await ledger_scenario(cluster)


async def test_files_work_on_a_cluster(cluster: aioredis.Redis, tmp_path: Path) -> None:
    await files_scenario(cluster, tmp_path)


async def test_batch_queue_and_store_work_on_a_cluster(cluster: aioredis.Redis) -> None:
    await batches_scenario(cluster)


async def test_keys_touched_together_share_one_tag() -> None:
    # Keys a script reaches without naming them in KEYS: the cluster does not check those.
    keys = Keys("cascade")
    session = "sess_" + "0" * 24
    tagged = [*keys.session_keys(session), keys.lock(session)]
    tagged.append(keys.idempotency(OWNER, "k", session))
    assert {key_slot(k.encode()) for k in tagged} == {key_slot(keys.info(session).encode())}
    queue = BatchStore(aioredis.Redis()).keys
    assert (
        len({key_slot(k.encode()) for k in (queue.stream(), queue.responses(), queue.delayed())})
        == 1
    )


# ----------------------------------------------------------------------------- every script


def _registered_in_source() -> int:
    """How many `register_script(` calls the code base makes."""
    count = 0
    for folder in ("app", "tools", "workers"):
        for path in (REPO / folder).rglob("*.py"):
            count += len(re.findall(r"\bregister_script\(", path.read_text()))
    return count


async def test_every_script_keeps_its_keys_in_one_slot(
    cluster: aioredis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: set[str] = set()
    calls: list[tuple[str, list[str]]] = []
    real_init = AsyncScript.__init__
    real_call = AsyncScript.__call__

    def init(self: AsyncScript, registered_client: Any, script: Any) -> None:
        real_init(self, registered_client, script)
        registered.add(self.sha)

    async def call(
        self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None
    ) -> Any:
        calls.append(
            (self.sha, [k.decode() if isinstance(k, bytes) else str(k) for k in keys or []])
        )
        return await real_call(self, keys, args, client)

    monkeypatch.setattr(AsyncScript, "__init__", init)
    monkeypatch.setattr(AsyncScript, "__call__", call)
    await sessions_scenario(cluster)
    await responses_scenario(cluster)
    await ledger_scenario(cluster)
    await files_scenario(cluster, tmp_path)
    await batches_scenario(cluster)

    assert len(registered) == _registered_in_source()  # every script of the code base ran here
    assert {sha for sha, _ in calls} == registered
    for sha, keys in calls:
        assert keys, f"script {sha} called without keys: the cluster cannot route it"
        assert len({key_slot(k.encode()) for k in keys}) == 1, (sha, keys)


# ----------------------------------------------------------------------------- end to end


@contextlib.asynccontextmanager
async def cluster_worker(api: Any, name: str = "cluster-worker") -> AsyncIterator[None]:
    client = redis_client(api.redis_url)
    try:
        async with opened_worker(client, api.settings, api.config, name=name) as (worker, _):
            await client.set(worker.store.keys.worker(name), "alive", ex=60)
            stop = asyncio.Event()
            task = asyncio.create_task(consume(worker, stop))
            try:
                yield
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
    finally:
        await client.aclose()


async def _until(check: Callable[[], Awaitable[Any]], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_batch_and_a_background_response_run_end_to_end_on_a_cluster(
    sim: SimHandle, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match="otters", output="Otters hold hands."))
    sim.sim.add_rule(Rule(match=None, output="fine"))
    with batch_api(sim, redis_cluster, tmp_path / "state") as api:  # type: ignore[arg-type]
        client = api.client()
        lines = [
            {
                "custom_id": f"item-{n}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}]},
            }
            for n in range(4)
        ]
        batch = await asyncio.to_thread(
            client.batches.create,
            input_file_id=upload_jsonl(client, lines),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        async with cluster_worker(api):
            queued = await asyncio.to_thread(
                client.responses.create, model="m", input="tell me about otters", background=True
            )

            async def batch_done() -> Any:
                found = await asyncio.to_thread(client.batches.retrieve, batch.id)
                return found if found.status in ("completed", "failed", "expired") else None

            async def response_done() -> Any:
                found = await asyncio.to_thread(client.responses.retrieve, queued.id)
                return found if found.status not in ("queued", "in_progress") else None

            done = await _until(batch_done, 60, "the batch")
            answered = await _until(response_done, 60, "the background response")
        assert done.status == "completed" and done.request_counts.completed == 4
        output = read_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == [f"item-{n}" for n in range(4)]
        assert answered.status == "completed" and "Otters hold hands." in answered.output_text
