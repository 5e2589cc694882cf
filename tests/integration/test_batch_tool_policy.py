"""Batch items run under the operator's tool policy (`CASCADE_TOOLS_ENABLED`), as chat does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from tests.integration.test_agent_tools import call
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


def chat_refusal(app: BatchApp, **body: Any) -> dict[str, Any]:
    """The error body chat answers for `body` (it must be refused)."""
    with pytest.raises(openai.BadRequestError) as refused:
        app.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_body=body
        )
    error: dict[str, Any] = refused.value.body  # type: ignore[assignment]
    return error


def offered_tools(body: dict[str, Any]) -> list[str]:
    return sorted(t["function"]["name"] for t in body.get("tools") or [])


async def test_a_line_asking_for_a_disabled_tool_gets_chats_refusal(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_TOOLS_ENABLED", "clock")
    sim.sim.add_rule(Rule(match=None, output="ok"))
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        refusal = chat_refusal(api, server_tools=["calculator"])
        client = api.client()
        lines = [
            request_line("allowed", "what time is it?", server_tools=["clock"]),
            request_line("disabled", "add 2 and 3", server_tools=["calculator"]),
        ]
        batch = client.batches.create(
            input_file_id=upload_jsonl(client, lines),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        async with running_worker(api.settings, api.config):
            done = await await_final(client, batch.id)
        errors = read_lines(client, done.error_file_id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    assert done.errors is not None and done.errors.data is not None
    [error] = done.errors.data
    assert error.line == 2
    assert error.param == "body." + refusal["param"]
    assert error.message == f"line 2: {refusal['message']}"
    [line] = errors
    assert line["custom_id"] == "disabled" and line["error"]["message"] == error.message
    # Only the allowed line reached the model, offered only the enabled tool.
    assert [offered_tools(r.body) for r in sim.sim.requests] == [["clock"]]


async def test_a_worker_never_runs_a_tool_the_operator_disabled(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The items are validated and queued while every tool is enabled; the operator then limits
    # the tools and the worker that runs them must follow the new policy.
    sim.sim.add_rule(Rule(match="add", output=call("calculator", expression="2+3"), times=1))
    sim.sim.add_rule(Rule(match=None, output="done"))
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        lines = [
            request_line("named", "add 40 and 2", server_tools=["calculator"]),
            request_line("called", "please add 2 and 3"),
        ]
        batch = client.batches.create(
            input_file_id=upload_jsonl(client, lines),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        key = f"cascade:batch:{{{batch.id}}}"
        with redis.Redis.from_url(redis_server.url) as probe:
            await asyncio.to_thread(
                wait_until, lambda: probe.hget(key, "feed_complete") == b"1", 20, "the feed"
            )
        monkeypatch.setenv("CASCADE_TOOLS_ENABLED", "clock")
        with batch_api(sim, redis_server, tmp_path / "state") as limited:
            refusal = chat_refusal(limited, server_tools=["calculator"])
            async with running_worker(limited.settings, limited.config):
                done = await await_final(client, batch.id)
        errors = read_lines(client, done.error_file_id)
        output = read_lines(client, done.output_file_id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    [failed] = errors
    assert failed["custom_id"] == "named"
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"] == {"error": refusal}
    [answered] = output
    assert answered["custom_id"] == "called"
    # The model asked for the calculator anyway: it was not offered, and the call was refused.
    first, second = (r.body for r in sim.sim.requests)
    assert offered_tools(first) == offered_tools(second) == ["clock"]
    [result] = [m for m in second["messages"] if m["role"] == "tool"]
    assert "no tool named 'calculator'" in result["content"]
    assert "5" not in result["content"]
