"""One bad line or batch fails alone: the coordinator and the workers go on, and restart when
their loop dies. The failures are provoked by input (too-deep JSON, a malformed queue entry)
or by a batch store that raises, handed in as the store class of the coordinator or worker."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from app.batches.lines import ResultRecord
from app.batches.models import BatchObject
from app.batches.store import BatchStore, FinishOutcome, QueueItem
from tests.integration.test_batch_support import (
    BatchApp,
    await_final,
    batch_api,
    read_lines,
    request_line,
    running_worker,
    upload_jsonl,
    wait_until,
)
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def with_extra(custom_id: str, value: Any) -> dict[str, Any]:
    """A line whose body is `value` levels + 3 deep (body, messages, message)."""
    message = {"role": "user", "content": "x", "extra": value}
    return {**request_line(custom_id, "x"), "body": {"messages": [message]}}


def create(app: BatchApp, key: str, lines: list[Any], **metadata: str) -> str:
    client = app.client(key)
    return client.batches.create(
        input_file_id=upload_jsonl(client, lines),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata or None,
    ).id


@pytest.fixture
def two_keys(monkeypatch: pytest.MonkeyPatch, sim: SimHandle) -> None:
    monkeypatch.setenv("CASCADE_API_KEYS", "key-a,key-b")
    sim.sim.add_rule(Rule(match=None, output="fine"))


@pytest.mark.usefixtures("two_keys")
async def test_too_deep_lines_fail_alone_and_later_batches_run(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    deep = nested(300)
    tool = {"type": "function", "function": {"name": "f", "parameters": deep}}
    lines = [
        request_line("good-1", "one"),
        with_extra("deep-message", deep),
        request_line("deep-format", "three", response_format={"type": "json_schema", "s": deep}),
        request_line("deep-tool", "four", tools=[tool]),
        request_line("good-2", "five"),
        with_extra("edge", nested(61)),  # the body nests 64 levels, as deep as chat accepts
        with_extra("edge-over", nested(62)),
    ]
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        first = create(api, "key-a", lines)
        later = create(api, "key-b", [request_line("other-user", "six")])
        dropped = create(api, "key-b", [request_line("cancelled", "seven")])
        alice, bob = api.client("key-a"), api.client("key-b")
        assert bob.batches.cancel(dropped).status == "cancelling"
        async with running_worker(api.settings, api.config):
            done = await await_final(alice, first, 30)
            other = await await_final(bob, later, 30)
            cancelled = await await_final(bob, dropped, 30)
        errors = read_lines(alice, done.error_file_id)
        output = read_lines(alice, done.output_file_id)
    assert (done.status, other.status, cancelled.status) == ("completed", "completed", "cancelled")
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 4)
    assert [line["custom_id"] for line in output] == ["good-1", "good-2", "edge"]
    assert done.errors is not None and done.errors.data is not None
    bad = (2, 3, 4, 7)
    assert [(e.line, e.code) for e in done.errors.data] == [(n, "invalid_json") for n in bad]
    assert all("nests deeper than" in (e.message or "") for e in done.errors.data)
    assert [e["error"]["line"] for e in errors] == list(bad)
    assert len(sim.sim.requests) == 4


class FeedBreaks(BatchStore):
    """Feeding a batch whose metadata says `break=feed` raises (a bug in one batch's path)."""

    async def feed(self, batch: BatchObject, items: Any, **kwargs: Any) -> None:
        if (batch.metadata or {}).get("break") == "feed":
            raise RuntimeError("injected")
        await super().feed(batch, items, **kwargs)


@pytest.mark.usefixtures("two_keys")
async def test_a_batch_that_raises_fails_with_a_reason_and_others_go_on(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    with batch_api(sim, redis_server, tmp_path / "state", store_type=FeedBreaks) as api:
        broken = create(api, "key-a", [request_line("a", "hi")], **{"break": "feed"})
        later = create(api, "key-b", [request_line("b", "hi")])
        alice, bob = api.client("key-a"), api.client("key-b")
        async with running_worker(api.settings, api.config):
            failed = await await_final(alice, broken, 30)
            other = await await_final(bob, later, 30)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.errors is not None and failed.errors.data is not None
    assert failed.errors.data[0].code == "batch_internal_error"
    assert "RuntimeError" not in (failed.errors.data[0].message or "")
    assert other.status == "completed"
    assert other.request_counts is not None and other.request_counts.completed == 1


class AssemblyBreaks(BatchStore):
    """Reading results back to write a batch's files raises."""

    async def results(self, batch_id: str, custom_ids: Sequence[str]) -> list[Any]:
        raise RuntimeError("injected")


async def test_cancel_finishes_when_writing_the_files_raises(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    with batch_api(sim, redis_server, tmp_path / "state", store_type=AssemblyBreaks) as api:
        client = api.client()
        batch_id = create(api, "test-key", [request_line("a", "hi"), request_line("b", "ho")])
        await asyncio.to_thread(
            wait_until,
            lambda: client.batches.retrieve(batch_id).status == "in_progress",
            20,
            "in_progress",
        )
        assert client.batches.cancel(batch_id).status == "cancelling"
        done = await await_final(client, batch_id, 20)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.errors is not None and done.errors.data is not None
    assert done.errors.data[0].code == "batch_internal_error"
    assert len(sim.sim.requests) == 0


async def test_a_coordinator_that_dies_is_restarted(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match=None, output="fine"))
    calls: list[str] = []

    class DiesOnce(BatchStore):
        async def active_ids(self) -> list[str]:
            calls.append("active_ids")
            if len(calls) == 1:
                raise RuntimeError("injected")  # outside any one batch: the loop itself dies
            return await super().active_ids()

    with batch_api(sim, redis_server, tmp_path / "state", store_type=DiesOnce) as api:
        client = api.client()
        batch_id = create(api, "test-key", [request_line("a", "hi")])
        async with running_worker(api.settings, api.config):
            done = await await_final(client, batch_id, 30)
    assert done.status == "completed"
    assert len(calls) > 1  # the pass after the death was made by the restarted loop


async def test_a_worker_loop_that_dies_is_restarted(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match=None, output="fine"))
    calls: list[str] = []

    class DiesOnce(BatchStore):
        async def move_due(self, *, limit: int = 200) -> int:
            calls.append("move_due")
            if len(calls) == 1:
                raise RuntimeError("injected")
            return await super().move_due(limit=limit)

    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        batch_id = create(api, "test-key", [request_line("a", "hi"), request_line("b", "ho")])
        async with running_worker(api.settings, api.config, store_type=DiesOnce):
            done = await await_final(client, batch_id, 30)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 2
    assert len(calls) > 1


async def test_an_item_that_crashes_the_worker_fails_with_a_reason(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match=None, output="fine"))

    class AnswerBreaks(BatchStore):
        async def finish_item(
            self, item: QueueItem, record: ResultRecord, **kwargs: Any
        ) -> FinishOutcome:
            if record.kind == "output" and item.custom_id == "crashes":
                raise RuntimeError("injected")
            return await super().finish_item(item, record, **kwargs)

    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        lines = [request_line("crashes", "hi"), request_line("fine", "ho")]
        batch_id = create(api, "test-key", lines)
        async with running_worker(api.settings, api.config, store_type=AnswerBreaks):
            done = await await_final(client, batch_id, 30)
        errors = read_lines(client, done.error_file_id)
        output = read_lines(client, done.output_file_id)
    assert done.status == "completed"
    assert [line["custom_id"] for line in output] == ["fine"]
    [error] = errors
    assert error["custom_id"] == "crashes"
    assert error["response"]["status_code"] == 500
    assert error["response"]["body"]["error"]["code"] == "batch_item_crashed"


async def test_a_malformed_queue_entry_is_dropped_and_the_worker_goes_on(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.add_rule(Rule(match=None, output="fine"))
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        with redis.Redis.from_url(redis_server.url) as probe:
            stream = "cascade:{queue}:items"
            probe.xgroup_create(stream, "workers", id="0", mkstream=True)
            bad = probe.xadd(stream, {"b": "batch_x", "c": "x", "n": "not a number", "a": "?"})
            batch_id = create(api, "test-key", [request_line("a", "hi")])
            async with running_worker(api.settings, api.config):
                done = await await_final(client, batch_id, 30)
            assert probe.xrange(stream, bad, bad) == []
            assert probe.xpending(stream, "workers")["pending"] == 0
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 1
