"""Background responses (`background: true`) driven by the official openai SDK: queued by the
API, made by a batch worker (in this event loop, or a real `cascade worker` process), polled,
cancelled, and taken over when their worker dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis
from openai import OpenAI
from openai.types.responses import Response

from app.api.app import create_app
from app.batches.config import BatchSettings, load_batch_settings
from app.batches.keys import BatchKeys
from app.sessions.responses_store import ResponseStore, StoredResponse
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_batch_support import (
    FAST,
    WorkerProcess,
    await_final,
    batch_api,
    batch_env,
    request_line,
    running_worker,
    upload_jsonl,
)
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.state import RecordedRequest
from tests.sglang_sim.testing import SimHandle

LANE = BatchKeys("cascade").responses()


def worker_config(**overrides: Any) -> BatchSettings:
    return load_batch_settings(**{**FAST, "response_cancel_poll": 0.05, **overrides})


def last_user_text(record: RecordedRequest) -> str:
    users = [m for m in record.body["messages"] if m["role"] == "user"]
    content = users[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def requests_for(sim: SimHandle, text: str) -> list[RecordedRequest]:
    return [r for r in sim.sim.requests if text in last_user_text(r)]


async def until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Poll `check` (run off the event loop: it may call the API) until it is truthy."""
    deadline = time.monotonic() + seconds
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def final(client: OpenAI, response_id: str, seconds: float = 30.0) -> Response:
    def ended() -> Response | None:
        response = client.responses.retrieve(response_id)
        return response if response.status not in ("queued", "in_progress") else None

    result: Response = await until(ended, seconds, f"{response_id} to end")
    return result


def lane_length(url: str) -> int:
    probe = redis.Redis.from_url(url)
    try:
        return int(probe.xlen(LANE))
    finally:
        probe.close()


# ----------------------------------------------------------------------------- queued → done


async def test_a_background_response_is_queued_then_completed_by_a_worker(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="otters", output="Otters float on their backs."))
    queued = await asyncio.to_thread(
        client.responses.create,
        model="m",
        input="tell me about otters",
        background=True,
        metadata={"k": "v"},
    )
    assert queued.status == "queued" and queued.background is True
    assert queued.output == [] and queued.metadata == {"k": "v"}
    # Nothing runs without a worker; the stored response says queued.
    await asyncio.sleep(0.2)
    assert (await asyncio.to_thread(client.responses.retrieve, queued.id)).status == "queued"
    assert sim.sim.requests == []
    listed = await asyncio.to_thread(client.responses.input_items.list, queued.id)
    async with running_worker(cascade.settings, worker_config()):
        done = await final(client, queued.id)
    assert done.status == "completed" and done.background is True
    assert done.output_text == "Otters float on their backs."
    assert (done.id, done.created_at, done.metadata) == (queued.id, queued.created_at, {"k": "v"})
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.error is None
    assert len(requests_for(sim, "otters")) == 1
    items = client.responses.input_items.list(queued.id)
    assert [item.type for item in items.data] == ["message"]
    assert [item.id for item in items.data] == [item.id for item in listed.data]
    # Its history is stored: a foreground continuation sees the whole chain.
    sim.sim.add_rule(Rule(match="more", output="They hold hands."))
    more = client.responses.create(model="m", input="more", previous_response_id=queued.id)
    assert more.output_text == "They hold hands."
    prompt = sim.sim.requests[-1].prompt or ""
    assert "tell me about otters" in prompt and "Otters float on their backs." in prompt
    assert lane_length(cascade.settings.redis_url or "") == 0


def test_background_is_checked_like_the_foreground_and_bad_ones_are_not_queued(
    cascade: Cascade, sim: SimHandle
) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"input": "hi", "store": False}, 400, "background"),
        ({"input": "hi", "stream": True}, 400, "stream"),
        ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, 400, "input[0].role"),
        ({"input": "hi", "temperature": 5}, 400, "temperature"),
        ({"input": "hi", "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
        # Found only when the turn is assembled (the operator's tools).
        ({"input": "hi", "server_tools": ["no_such_tool"]}, 400, "server_tools"),
    ]
    for body, status, param in cases:
        raw = httpx.post(
            cascade.url + "/v1/responses",
            json={"model": "m", "background": True, **body},
            timeout=30,
        )
        assert raw.status_code == status, (body, raw.text)
        assert raw.json()["error"]["param"] == param, (body, raw.text)
    assert lane_length(cascade.settings.redis_url or "") == 0
    assert sim.sim.requests == []


# ----------------------------------------------------------------------------- priority


async def test_a_background_response_is_taken_before_waiting_batch_items(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    sim.sim.update_config(ttft=0.3)
    sim.sim.add_rule(Rule(match="question", output="batch answer"))
    sim.sim.add_rule(Rule(match="urgent", output="urgent answer", ttft=0.0))
    count = 12
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        lines = [request_line(f"c{i}", f"question {i}") for i in range(count)]
        file_id = upload_jsonl(client, lines)
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        config = worker_config(batch_inflight=1)
        async with running_worker(api.settings, config):
            # One item runs, the others wait on the queue behind it.
            await until(lambda: len(sim.sim.requests) == 1, 30, "the first item")
            queued = await asyncio.to_thread(
                client.responses.create, model="m", input="urgent", background=True
            )
            done = await final(client, queued.id)
            finished = await await_final(client, batch.id)
    assert done.status == "completed" and done.output_text == "urgent answer"
    assert finished.status == "completed"
    order = [last_user_text(r) for r in sim.sim.requests]
    assert len(order) == count + 1
    # Taken as soon as the one item in flight ended, before the waiting items.
    assert order.index("urgent") == 1, order


# ----------------------------------------------------------------------------- cancel


async def test_cancel_while_running_aborts_the_runtime_request_and_stays_cancelled(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="saga", output="word " * 400, tpot=0.02))
    async with running_worker(cascade.settings, worker_config()):
        queued = await asyncio.to_thread(
            client.responses.create, model="m", input="write a saga", background=True
        )
        [record] = await until(lambda: requests_for(sim, "saga"), 30, "the runtime request")
        running = await asyncio.to_thread(client.responses.retrieve, queued.id)
        assert running.status == "in_progress" and running.background is True
        cancelled = await asyncio.to_thread(client.responses.cancel, queued.id)
        assert cancelled.status == "cancelled" and cancelled.id == queued.id
        await until(lambda: record.rid in sim.sim.aborted_rids, 10, "the abort")
        assert record.abort_reason == "abort_request"
        # The run ends (aborted) and the worker writes nothing over the cancel.
        await until(lambda: lane_length(cascade.settings.redis_url or "") == 0, 10, "conclude")
        again = await asyncio.to_thread(client.responses.cancel, queued.id)
    assert again.status == "cancelled"
    assert client.responses.retrieve(queued.id).status == "cancelled"
    assert len(requests_for(sim, "saga")) == 1


async def test_a_cancelled_queued_response_never_runs(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="never", output="should not be said"))
    queued = client.responses.create(model="m", input="never mind", background=True)
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    assert lane_length(cascade.settings.redis_url or "") == 1
    async with running_worker(cascade.settings, worker_config()):
        # The worker takes the entry, finds it cancelled, and lets it go.
        await until(lambda: lane_length(cascade.settings.redis_url or "") == 0, 10, "conclude")
    assert sim.sim.requests == []
    assert client.responses.retrieve(queued.id).status == "cancelled"


def test_only_background_responses_can_be_cancelled_and_an_ended_one_stays(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="Done."))
    foreground = client.responses.create(model="m", input="hi")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.cancel(foreground.id)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "response_id"
    assert client.responses.retrieve(foreground.id).status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_unknown")


async def test_an_ended_background_response_is_answered_as_it_is_by_cancel(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="Finished."))
    queued = client.responses.create(model="m", input="quick", background=True)
    async with running_worker(cascade.settings, worker_config()):
        done = await final(client, queued.id)
    assert done.status == "completed"
    after = client.responses.cancel(queued.id)
    assert after.status == "completed" and after.output_text == "Finished."


def test_another_key_cannot_see_or_cancel_a_background_response(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    app = create_app(cascade_settings(sim, redis_server, api_keys="k1,k2"))
    with serve_in_thread(app) as url:
        one = OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        two = OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0)
        queued = one.responses.create(model="m", input="mine", background=True)
        with pytest.raises(openai.NotFoundError):
            two.responses.cancel(queued.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.retrieve(queued.id)
        assert one.responses.retrieve(queued.id).status == "queued"


# ----------------------------------------------------------------------------- failures


async def test_a_response_that_cannot_be_made_fails_with_an_error(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="First."))
    first = client.responses.create(model="m", input="one")
    queued = client.responses.create(
        model="m", input="two", previous_response_id=first.id, background=True
    )
    client.responses.delete(first.id)  # gone before a worker takes the continuation
    async with running_worker(cascade.settings, worker_config()):
        done = await final(client, queued.id)
    assert done.status == "failed"
    assert done.error is not None and done.error.code == "server_error"
    assert first.id in done.error.message
    assert len(sim.sim.requests) == 1
    # A response that did not end well cannot be continued.
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input="three", previous_response_id=queued.id)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "previous_response_id"


def test_a_worker_killed_mid_response_is_taken_over_and_the_response_ends_once(
    cascade: Cascade, client: OpenAI, sim: SimHandle, tmp_path: Path
) -> None:
    # The first try hangs (its worker is killed meanwhile); the second answers.
    sim.sim.add_rule(Rule(match="durable", output="too late", ttft=60, times=1))
    sim.sim.add_rule(Rule(match="durable", output="The durable answer."))
    env = batch_env(batch_claim_idle=1.0, response_cancel_poll=0.05)
    victim = WorkerProcess(cascade.settings, env, tmp_path, name="victim")
    heir = WorkerProcess(cascade.settings, env, tmp_path, name="heir")
    victim.start()
    try:
        queued = client.responses.create(model="m", input="a durable question", background=True)
        deadline = time.monotonic() + 30
        while not requests_for(sim, "durable"):
            assert time.monotonic() < deadline, "the victim never started it"
            time.sleep(0.05)
        assert client.responses.retrieve(queued.id).status == "in_progress"
        victim.kill()
        heir.start()
        deadline = time.monotonic() + 60
        while (done := client.responses.retrieve(queued.id)).status == "in_progress":
            assert time.monotonic() < deadline, "nobody took it over"
            time.sleep(0.05)
    finally:
        victim.kill()
        heir.stop()
    assert done.status == "completed" and done.output_text == "The durable answer."
    assert len(requests_for(sim, "durable")) == 2
    assert "background_response_reclaimed" in heir.log_text()
    assert lane_length(cascade.settings.redis_url or "") == 0
    probe = redis.Redis.from_url(cascade.settings.redis_url or "")
    try:
        # Started twice (killed, then taken over), ended once.
        assert probe.hget(f"cascade:response:{{{queued.id}}}", "starts") == b"2"
    finally:
        probe.close()


# ----------------------------------------------------------------------------- the store


async def test_the_store_keeps_a_cancel_and_the_first_end_written(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    store = ResponseStore(client)

    def stored(response_id: str, status: str, text: str = "") -> StoredResponse:
        body = {"id": response_id, "status": status, "background": True, "output": text}
        return StoredResponse(body=body, input_items=[], history=[])

    try:
        await store.put("o", stored("resp_a", "queued"))
        assert await store.start("other", "resp_a") == 0  # not another owner's to start
        assert await store.start("o", "resp_a") == 1
        assert await store.cancel("o", "resp_a")
        assert not await store.finish("o", stored("resp_a", "completed", "late"))
        assert (await store.get("o", "resp_a")).body["status"] == "cancelled"
        assert (await store.get("o", "resp_a")).body["output"] == ""
        assert await store.start("o", "resp_a") == 0  # a cancelled one never starts

        await store.put("o", stored("resp_b", "queued"))
        assert await store.start("o", "resp_b") == 1
        assert await store.start("o", "resp_b") == 2  # run again after a takeover
        assert await store.finish("o", stored("resp_b", "completed", "first"))
        assert not await store.finish("o", stored("resp_b", "incomplete", "second"))
        assert not await store.cancel("o", "resp_b")
        body = (await store.get("o", "resp_b")).body
        assert (body["status"], body["output"]) == ("completed", "first")
        assert await store.status("o", "resp_b") == "completed"
        assert await store.status("other", "resp_b") is None
    finally:
        await client.aclose()
