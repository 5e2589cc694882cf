"""Crash safety with real `cascade worker` processes: kill -9 mid-batch, Redis restarts."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import redis

from app.batches.keys import GROUP, BatchKeys
from tests.integration.test_batch_support import (
    WorkerProcess,
    batch_api,
    batch_env,
    read_lines,
    request_line,
    upload_jsonl,
    wait_final,
    wait_until,
)
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

STREAM = BatchKeys("cascade").stream()


def pending_of(client: redis.Redis, consumer: str) -> int:
    try:
        rows = client.xinfo_consumers(STREAM, GROUP)
    except redis.ResponseError:
        return 0
    for row in rows:
        name = row["name"]
        name = name.decode() if isinstance(name, bytes) else name
        if name == consumer:
            return int(row["pending"])
    return 0


def test_kill_9_two_of_three_workers_loses_and_duplicates_nothing(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    sim.sim.update_config(ttft=0.15, max_running=24)
    sim.sim.add_rule(Rule(match=None, output="ok"))
    count = 300
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        env = batch_env(batch_inflight=8, batch_claim_idle=1.5)
        workers = [WorkerProcess(api.settings, env, tmp_path, name=f"w{i}") for i in range(3)]
        for worker in workers:
            worker.start()
        probe = redis.Redis.from_url(redis_server.url)
        try:
            file_id = upload_jsonl(
                client, [request_line(f"item-{i:03d}", f"question {i}") for i in range(count)]
            )
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            for victim in rng.sample(workers, 2):
                # Kill while it holds unacknowledged items, at a random moment.
                wait_until(
                    lambda v=victim: pending_of(probe, v.current_name) > 0, 30, "work to kill"
                )
                time.sleep(rng.uniform(0.0, 0.4))
                held = pending_of(probe, victim.current_name)
                victim.kill()
                assert held > 0, f"seed {seed}"
                victim.start()  # restarted, under a new consumer name
            done = wait_final(client, batch.id, 90)
        finally:
            for worker in workers:
                worker.stop()
            probe.close()
        assert done.status == "completed", f"seed {seed}"
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed) == (count, count)
        assert done.request_counts.failed == 0
        output = read_lines(client, done.output_file_id)
        ids = Counter(line["custom_id"] for line in output)
        assert len(output) == count
        assert set(ids) == {f"item-{i:03d}" for i in range(count)}
        assert max(ids.values()) == 1
        assert all(
            line["response"]["body"]["choices"][0]["message"]["content"] == "ok" for line in output
        )
        assert done.error_file_id is None
        logs = "".join(w.log_text() for w in workers)
        assert "batch_item_reclaimed" in logs, f"seed {seed}: nothing was taken over"
        # At least once: items of the killed workers ran again.
        assert len(sim.sim.requests) >= count


def test_redis_restart_mid_batch_completes(
    sim: SimHandle, own_redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=0.05, max_running=8)
    sim.sim.add_rule(Rule(match=None, output="fine"))
    count = 120
    with batch_api(sim, own_redis_server, tmp_path / "state") as api:
        client = api.client()
        workers = [
            WorkerProcess(api.settings, batch_env(batch_inflight=4), tmp_path, name=f"r{i}")
            for i in range(2)
        ]
        for worker in workers:
            worker.start()
        try:
            file_id = upload_jsonl(client, [request_line(f"r-{i}", f"q {i}") for i in range(count)])
            batch = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_until(lambda: len(sim.sim.requests) >= count // 4, 60, "a quarter done")
            own_redis_server.restart()  # SIGKILL, then start again from the AOF
            done = wait_final(client, batch.id, 90)
        finally:
            for worker in workers:
                worker.stop()
        assert done.status == "completed"
        assert done.request_counts is not None
        assert done.request_counts.completed == count
        output = read_lines(client, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(
            f"r-{i}" for i in range(count)
        )
