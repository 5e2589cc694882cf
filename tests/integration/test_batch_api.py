"""The Batch API through the official openai SDK, against the simulator and a real Redis."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from openai import BadRequestError, NotFoundError

from app.batches.config import load_batch_settings
from tests.integration.test_batch_support import (
    FAST,
    BatchApp,
    await_final,
    batch_api,
    read_lines,
    request_line,
    running_worker,
    upload_jsonl,
)
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Fault, Rule
from tests.sglang_sim.testing import SimHandle


@pytest.fixture
def api(sim: SimHandle, redis_server: RedisServer, tmp_path: Path) -> BatchApp:
    with batch_api(sim, redis_server, tmp_path / "state", batch_max_attempts=3) as app:
        yield app  # type: ignore[misc]


async def test_sdk_flow_counts_good_malformed_and_failing_lines(
    api: BatchApp, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="capital of France", output="Paris."))
    sim.sim.add_rule(
        Rule(match="explode", output="never", fault=Fault(kind="http_500", times=10_000))
    )
    sim.sim.add_rule(Rule(match=None, output="An answer."))
    client = api.client()
    lines: list[object] = [
        request_line("good-1", "What is the capital of France?"),
        request_line("good-2", "Say something", thinking=False),
        "{not json",  # line 3
        {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"},  # line 4
        request_line("bad-url", "hi") | {"url": "/v1/embeddings"},  # line 5
        request_line("good-2", "duplicate id"),  # line 6
        request_line("fails-1", "please explode"),
        request_line("fails-2", "explode again"),
        request_line("bad-temp", "hi", temperature=9),  # line 9
        "",  # blank lines are skipped
        request_line("good-3", "third", thinking_budget=64, max_tokens=512),
    ]
    file_id = upload_jsonl(client, lines)
    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"purpose": "test"},
    )
    assert batch.status == "validating"
    assert batch.metadata == {"purpose": "test"}
    async with running_worker(api.settings, api.config):
        done = await await_final(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.total == 10
    assert done.request_counts.completed == 3
    # 5 invalid lines + 2 items whose tries ran out
    assert done.request_counts.failed == 7
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    assert done.errors is not None and done.errors.data is not None
    assert sorted(e.line for e in done.errors.data) == [3, 4, 5, 6, 9]
    codes = {e.line: e.code for e in done.errors.data}
    assert codes[3] == "invalid_json" and codes[5] == "mismatched_endpoint"
    assert codes[6] == "duplicate_custom_id"

    output = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    assert [line["custom_id"] for line in output] == ["good-1", "good-2", "good-3"]
    first = output[0]
    assert first["response"]["status_code"] == 200
    assert first["error"] is None
    answer = first["response"]["body"]
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "Paris."
    assert len(errors) == 7
    by_id = {e["custom_id"]: e for e in errors if e["custom_id"]}
    assert by_id["fails-1"]["response"]["status_code"] == 502
    assert by_id["fails-1"]["response"]["body"]["error"]["code"] == "runtime_error"
    # invalid lines carry their line number; the malformed one has no custom_id
    invalid = [e for e in errors if e["response"] is None]
    assert sorted(e["error"]["line"] for e in invalid) == [3, 4, 5, 6, 9]
    assert any(e["custom_id"] is None for e in invalid)
    # every request line has exactly one line in one of the two files
    assert len(output) + len(errors) == done.request_counts.total
    # 3 tries per failing item, each with the client's own retry (runtime_max_retries=1)
    explode_calls = [r for r in sim.sim.requests if "explode" in json.dumps(r.body)]
    assert len(explode_calls) == 2 * 3 * 2
    # batch usage adds up the items' usage
    assert done.usage is not None and done.usage.input_tokens > 0


async def test_validation_failure_of_the_whole_file(api: BatchApp) -> None:
    client = api.client()
    file_id = upload_jsonl(client, ["", "   "])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await await_final(client, batch.id, 20)
    assert done.status == "failed"
    assert done.failed_at is not None
    assert done.errors is not None and done.errors.data
    assert done.errors.data[0].code == "empty_file"
    assert done.output_file_id is None and done.error_file_id is None


def test_create_checks_input_file_and_window(api: BatchApp) -> None:
    client = api.client()
    with pytest.raises(BadRequestError):
        client.batches.create(
            input_file_id="file-000000000000000000000000",
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    file_id = upload_jsonl(client, [request_line("a", "hi")])
    with pytest.raises(BadRequestError) as err:
        client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/embeddings",
            completion_window="24h",
        )
    assert "endpoint" in str(err.value)
    response = httpx.post(
        api.url + "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "soon",
        },
    )
    assert response.status_code == 400
    with pytest.raises(NotFoundError):
        client.batches.retrieve("batch_" + "0" * 24)


async def test_list_and_retrieve(api: BatchApp, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=None, output="ok"))
    client = api.client()
    file_id = upload_jsonl(client, [request_line("a", "hi")])
    ids = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2]
    assert page.has_more
    rest = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data] == [ids[0]]
    assert not rest.has_more
    async with running_worker(api.settings, api.config):
        for batch_id in ids:
            assert (await await_final(client, batch_id)).status == "completed"


def test_another_owner_cannot_see_a_batch(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_API_KEYS", "key-a,key-b")
    with batch_api(sim, redis_server, tmp_path / "state") as app:
        alice = app.client("key-a")
        bob = app.client("key-b")
        file_id = upload_jsonl(alice, [request_line("a", "hi")])
        batch = alice.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(NotFoundError):
            bob.batches.retrieve(batch.id)
        with pytest.raises(NotFoundError):
            bob.batches.cancel(batch.id)
        assert bob.batches.list().data == []
        with pytest.raises(BadRequestError):
            bob.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )


async def test_batch_items_carry_the_batch_priority(api: BatchApp, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=None, output="ok"))
    client = api.client()
    file_id = upload_jsonl(client, [request_line("a", "hi"), request_line("b", "there")])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    config = load_batch_settings(**{**FAST, "batch_priority": -5})
    async with running_worker(api.settings, config):
        assert (await await_final(client, batch.id)).status == "completed"
    assert [r.body.get("priority") for r in sim.sim.requests] == [-5, -5]


async def test_without_priority_scheduling_no_priority_is_sent(
    api: BatchApp, sim: SimHandle
) -> None:
    # The simulator's /server_info does not report priority scheduling: send none, as
    # SGLang may abort prioritised requests when it is off (--abort-on-priority-when-disabled).
    sim.sim.add_rule(Rule(match=None, output="ok"))
    client = api.client()
    file_id = upload_jsonl(client, [request_line("a", "hi")])
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    async with running_worker(api.settings, api.config):
        assert (await await_final(client, batch.id)).status == "completed"
    assert "priority" not in sim.sim.requests[0].body


def test_redis_outage_is_a_503_with_retry_after(
    api: BatchApp, own_redis_server: RedisServer
) -> None:
    own_redis_server.kill()
    try:
        response = httpx.get(api.url + "/v1/batches/batch_" + "0" * 24, timeout=10)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "storage_unavailable"
    finally:
        own_redis_server.start()
