"""Batch lifecycle: cancel, expiry, SIGTERM drain, and runtime outages (items wait, not fail)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

from app.batches.keys import BatchKeys
from tests.integration.test_batch_support import (
    WorkerProcess,
    await_final,
    batch_api,
    batch_env,
    read_lines,
    request_line,
    running_worker,
    simulator_on,
    upload_jsonl,
    wait_final,
    wait_until,
)
from tests.redis_server import RedisServer, free_port
from tests.sglang_sim.script import Rule, SimConfig
from tests.sglang_sim.testing import SimHandle

KEYS = BatchKeys("cascade")


async def started_items(url: str, batch_id: str) -> int:
    """Items that have started: those running plus those with a result (one atomic read)."""
    client = aioredis.Redis.from_url(url)
    try:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hlen(KEYS.running(batch_id))
            pipe.hlen(KEYS.results(batch_id))
            running, done = await pipe.execute()
    finally:
        await client.aclose()
    return int(running) + int(done)


async def test_cancel_mid_batch_starts_nothing_new_and_counts_exactly(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=0.25, max_running=4)
    sim.sim.add_rule(Rule(match=None, output="done"))
    count = 30
    with batch_api(sim, redis_server, tmp_path / "state", batch_inflight=4) as api:
        client = api.client()
        file_id = upload_jsonl(client, [request_line(f"c{i}", f"q{i}") for i in range(count)])
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        async with running_worker(api.settings, api.config):
            while True:
                current = await asyncio.to_thread(client.batches.retrieve, batch.id)
                assert current.request_counts is not None
                if current.request_counts.completed >= 5:
                    break
                await asyncio.sleep(0.02)
            cancelling = await asyncio.to_thread(client.batches.cancel, batch.id)
            assert cancelling.status == "cancelling"
            assert cancelling.cancelling_at is not None
            started = await started_items(api.redis_url, batch.id)
            done = await await_final(client, batch.id)
        assert done.status == "cancelled"
        assert done.cancelled_at is not None
        assert done.request_counts is not None
        # Items running when the cancel was acknowledged finished; nothing else started.
        assert done.request_counts.completed == started
        assert done.request_counts.failed == 0
        assert done.request_counts.total == count
        assert started < count
        assert len(sim.sim.requests) == started
        output = read_lines(client, done.output_file_id)
        errors = read_lines(client, done.error_file_id)
        assert len(output) == started
        assert len(errors) == count - started
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        assert Counter(line["custom_id"] for line in output + errors) == Counter(
            f"c{i}" for i in range(count)
        )
        # Cancelling again is harmless; the object is final.
        again = client.batches.cancel(batch.id)
        assert again.status == "cancelled"


async def test_completion_window_expires_unfinished_items(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=0.4, max_running=2)
    sim.sim.add_rule(Rule(match=None, output="late"))
    count = 20
    with batch_api(sim, redis_server, tmp_path / "state", batch_inflight=2) as api:
        client = api.client()
        file_id = upload_jsonl(client, [request_line(f"e{i}", f"q{i}") for i in range(count)])
        batch = client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="2s",
        )
        assert batch.expires_at is not None and batch.expires_at - batch.created_at == 2
        async with running_worker(api.settings, api.config):
            done = await await_final(client, batch.id, 20)
        assert done.status == "expired"
        assert done.expired_at is not None
        assert done.request_counts is not None
        completed = done.request_counts.completed
        assert 0 < completed < count
        output = read_lines(client, done.output_file_id)
        errors = read_lines(client, done.error_file_id)
        assert len(output) == completed
        assert len(errors) == count - completed
        assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_sigterm_drains_in_flight_items(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=0.6, max_running=8)
    sim.sim.add_rule(Rule(match=None, output="drained"))
    count = 12
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        env = batch_env(batch_inflight=4, batch_drain_grace=10)
        first = WorkerProcess(api.settings, env, tmp_path, name="drain-a")
        first.start()
        try:
            file_id = upload_jsonl(client, [request_line(f"d{i}", f"q{i}") for i in range(count)])
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_until(lambda: len(sim.sim.requests) >= 4, 30, "four items in flight")
            started = time.monotonic()
            assert first.stop(timeout=20) == 0
            assert time.monotonic() - started < 10
            # It finished what it held and took nothing new.
            assert len(sim.sim.requests) == 4
            current = client.batches.retrieve(batch.id)
            assert current.request_counts is not None
            assert current.request_counts.completed == 4
            log = first.log_text()
            assert "worker_draining" in log and "worker_stopped" in log
            second = WorkerProcess(api.settings, env, tmp_path, name="drain-b")
            second.start()
            try:
                done = wait_final(client, batch.id, 60)
            finally:
                second.stop()
        finally:
            first.stop()
        assert done.status == "completed"
        output = read_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"d{i}" for i in range(count))


def test_sigterm_past_the_grace_hands_items_back_at_once(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=2.0, max_running=8)
    sim.sim.add_rule(Rule(match=None, output="slow"))
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        # A takeover would take 60 s: the batch can only finish fast if A hands items back.
        env = batch_env(batch_inflight=3, batch_drain_grace=0.3, batch_claim_idle=60)
        first = WorkerProcess(api.settings, env, tmp_path, name="grace-a")
        second = WorkerProcess(api.settings, env, tmp_path, name="grace-b")
        first.start()
        try:
            file_id = upload_jsonl(client, [request_line(f"g{i}", f"q{i}") for i in range(3)])
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_until(lambda: len(sim.sim.requests) >= 3, 30, "three items in flight")
            assert first.stop(timeout=20) == 0
            assert "worker_released_items" in first.log_text()
            second.start()
            done = wait_final(client, batch.id, 30)
        finally:
            first.stop()
            second.stop()
        assert done.status == "completed"
        assert done.request_counts is not None and done.request_counts.completed == 3
        assert len(read_lines(client, done.output_file_id)) == 3


async def test_items_wait_for_a_runtime_that_is_down(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    count = 6
    with batch_api(url, redis_server, tmp_path / "state") as api:
        client = api.client()
        file_id = upload_jsonl(client, [request_line(f"w{i}", f"q{i}") for i in range(count)])
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        async with running_worker(api.settings, api.config) as worker:
            await asyncio.sleep(1.5)
            current = await asyncio.to_thread(client.batches.retrieve, batch.id)
            assert current.status == "in_progress"
            assert current.request_counts is not None
            assert (current.request_counts.completed, current.request_counts.failed) == (0, 0)
            assert not worker.runtime_ok.is_set()
            with simulator_on(port, SimConfig(ttft=0.05)) as sim:
                sim.add_rule(Rule(match=None, output="back"))
                done = await await_final(client, batch.id, 30)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (count, 0)


async def test_runtime_outage_mid_batch_resumes(redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    count = 24
    with batch_api(url, redis_server, tmp_path / "state", batch_inflight=4) as api:
        client = api.client()
        file_id = upload_jsonl(client, [request_line(f"o{i}", f"q{i}") for i in range(count)])
        async with running_worker(api.settings, api.config):
            with simulator_on(port, SimConfig(ttft=0.2, max_running=4)) as sim:
                sim.add_rule(Rule(match=None, output="first"))
                batch = await asyncio.to_thread(
                    client.batches.create,
                    input_file_id=file_id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )
                await asyncio.to_thread(
                    wait_until, lambda: len(sim.requests) >= 8, 30, "eight items started"
                )
            # The runtime is gone (in-flight requests cut); nothing may fail meanwhile.
            await asyncio.sleep(1.0)
            current = await asyncio.to_thread(client.batches.retrieve, batch.id)
            assert current.request_counts is not None and current.request_counts.failed == 0
            with simulator_on(port, SimConfig(ttft=0.02)) as sim:
                sim.add_rule(Rule(match=None, output="second"))
                done = await await_final(client, batch.id, 40)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (count, 0)
        output = read_lines(client, done.output_file_id)
        assert len({line["custom_id"] for line in output}) == count


async def test_api_restart_mid_batch_resumes_feeding(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=0.05, max_running=4)
    sim.sim.add_rule(Rule(match=None, output="kept"))
    count = 40
    state = tmp_path / "state"
    # A small window: most items are still unqueued when the API goes away.
    with batch_api(sim, redis_server, state, batch_feed_window=4) as api:
        client = api.client()
        file_id = upload_jsonl(client, [request_line(f"k{i}", f"q{i}") for i in range(count)])
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        settings, config = api.settings, api.config
    async with running_worker(settings, config):
        await asyncio.sleep(0.5)  # the worker drains what was queued; nothing more comes
        assert len(sim.sim.requests) <= 4
        with batch_api(sim, redis_server, state, batch_feed_window=4) as again:
            client = again.client()
            done = await await_final(client, batch.id, 60)
            output = read_lines(client, done.output_file_id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == count
    assert [line["custom_id"] for line in output] == [f"k{i}" for i in range(count)]
    assert len(sim.sim.requests) == count
