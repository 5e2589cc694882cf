"""The ledger through the chat door, with Open WebUI-shaped stateless bodies (the whole history
each turn, no session_id, the answers resent as text only): the reasoning and server tool
steps behind an answer are put back on the next turn, for their owner only, under a TTL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import call
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

DAY_MS = 86_400_000


@dataclass
class Reply:
    content: str
    reasoning: str
    finish_reason: str | None
    tool_calls: list[Any]
    usage: dict[str, Any] | None


def chat(
    url: str, messages: list[dict[str, Any]], *, stream: bool, key: str | None = None, **extra: Any
) -> Reply:
    """One Open WebUI-shaped turn: the whole history, no session, streamed with usage or not."""
    body: dict[str, Any] = {"model": "m", "messages": messages, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    if not stream:
        data = response.json()
        message = data["choices"][0]["message"]
        return Reply(
            content=message["content"],
            reasoning=message.get("reasoning_content") or "",
            finish_reason=data["choices"][0]["finish_reason"],
            tool_calls=message.get("tool_calls") or [],
            usage=data["usage"],
        )
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [orjson.loads(line) for line in lines[:-1]]
    reply = Reply("", "", None, [], None)
    for chunk in chunks:
        assert "error" not in chunk, chunk
        if chunk.get("usage"):
            reply.usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            reply.content += delta.get("content") or ""
            reply.reasoning += delta.get("reasoning_content") or ""
            reply.tool_calls += delta.get("tool_calls") or []
            reply.finish_reason = choice["finish_reason"] or reply.finish_reason
    return reply


def sent(sim: SimHandle, index: int = -1) -> list[dict[str, Any]]:
    """The messages the runtime got in one recorded request."""
    messages: list[dict[str, Any]] = sim.sim.requests[index].body["messages"]
    return messages


def rendered_alike(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with what the chat template renders alike made equal: no reasoning is the
    empty reasoning (cascade empties the reasoning of earlier turns, the template writes an
    empty think block for both)."""
    return [
        {k: v for k, v in m.items() if not (k == "reasoning_content" and not v)} for m in messages
    ]


def ledger_keys(server: RedisServer, kind: str) -> list[bytes]:
    with redis.Redis.from_url(server.url) as r:
        return sorted(r.scan_iter(match=f"cascade:ledger:*:{kind}:*"))


QUESTION = {"role": "user", "content": "What is 6*7?"}


def first_turn_with_a_calculator_step(url: str, sim: SimHandle, **kwargs: Any) -> Reply:
    sim.sim.add_rule(Rule(output=call("calculator", expression="6*7"), times=1))
    sim.sim.add_rule(Rule(output="It is 42.", times=1))
    reply = chat(url, [QUESTION], **kwargs)
    assert reply.content == "It is 42."
    assert reply.finish_reason == "stop"
    assert reply.tool_calls == []  # a server step is not the client's business
    return reply


@pytest.mark.parametrize("stream", [True, False])
def test_a_calculator_step_is_put_back_on_the_next_turn(
    cascade: Cascade, sim: SimHandle, redis_server: RedisServer, stream: bool
) -> None:
    first_turn_with_a_calculator_step(cascade.url, sim, stream=stream)
    turn_one = sim.sim.requests[-1]  # its last runtime request: the call, its result
    assert [m["role"] for m in turn_one.body["messages"]] == ["user", "assistant", "tool"]

    sim.sim.add_rule(Rule(match="plus one", output="43.", times=1))
    history = [
        QUESTION,
        {"role": "assistant", "content": "It is 42."},  # as Open WebUI resends it
        {"role": "user", "content": "And plus one?"},
    ]
    reply = chat(cascade.url, history, stream=stream)
    assert reply.content == "43."
    turn_two = sim.sim.requests[-1]
    messages = turn_two.body["messages"]
    # Turn 1's final runtime request, then its answer, then the new message.
    assert rendered_alike(messages[:3]) == rendered_alike(turn_one.body["messages"])
    assert messages[1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert messages[2]["content"] == "6*7 = 42"
    assert messages[3]["role"] == "assistant" and messages[3]["content"] == "It is 42."
    assert messages[4] == {"role": "user", "content": "And plus one?"}
    # Rendered, turn 1's prompt and output are turn 2's prefix: the prefix cache hits.
    assert turn_two.prompt is not None and turn_one.prompt is not None
    assert turn_two.prompt.startswith(turn_one.prompt + turn_one.output + "<|im_end|>")
    # Turn 2 was a bare answer: nothing more to keep than turn 1's steps.
    assert len(ledger_keys(redis_server, "steps")) == 1


def test_reasoning_is_put_back_as_the_runtime_got_it(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Six sevens.\n</think>\n\nIt is 42.", times=1))
    options = {"thinking": True, "preserve_thinking": True}
    reply = chat(cascade.url, [QUESTION], stream=True, **options)
    assert reply.content.strip() == "It is 42."
    assert reply.reasoning.strip() == "Six sevens."
    turn_one = sim.sim.requests[-1]

    sim.sim.add_rule(Rule(match="plus one", output="Plus one.\n</think>\n\n43.", times=1))
    history = [
        QUESTION,
        {"role": "assistant", "content": reply.content},
        {"role": "user", "content": "And plus one?"},
    ]
    chat(cascade.url, history, stream=True, **options)
    turn_two = sim.sim.requests[-1]
    assert sent(sim)[1]["reasoning_content"].strip() == "Six sevens."
    assert turn_two.prompt is not None and turn_one.prompt is not None
    assert turn_two.prompt.startswith(turn_one.prompt + turn_one.output + "<|im_end|>")


def test_a_client_that_sends_its_own_reasoning_is_not_overridden(
    cascade: Cascade, sim: SimHandle
) -> None:
    first_turn_with_a_calculator_step(cascade.url, sim, stream=True)
    sim.sim.add_rule(Rule(match="plus one", output="43.", times=1))
    own = {"role": "assistant", "content": "It is 42.", "reasoning_content": "My own notes."}
    chat(
        cascade.url,
        [QUESTION, own, {"role": "user", "content": "And plus one?"}],
        stream=False,
        preserve_thinking=True,
    )
    messages = sent(sim)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["reasoning_content"] == "My own notes."
    assert "tool_calls" not in messages[1]


def test_another_owner_does_not_get_the_steps(sim: SimHandle, redis_server: RedisServer) -> None:
    settings = cascade_settings(sim, redis_server, api_keys="key-a,key-b")
    app = create_app(settings)
    with serve_in_thread(app) as url:
        first_turn_with_a_calculator_step(url, sim, stream=True, key="key-a")
        history = [
            QUESTION,
            {"role": "assistant", "content": "It is 42."},
            {"role": "user", "content": "And plus one?"},
        ]
        sim.sim.add_rule(Rule(match="plus one", output="43."))
        chat(url, history, stream=True, key="key-b")
        assert [m["role"] for m in sent(sim)] == ["user", "assistant", "user"]
        chat(url, history, stream=True, key="key-a")
        assert [m["role"] for m in sent(sim)] == ["user", "assistant", "tool", "assistant", "user"]


@pytest.fixture
def two_day_ledger(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cascade]:
    monkeypatch.setenv("CASCADE_LEDGER_TTL_DAYS", "2")
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def test_the_steps_live_the_ledger_ttl_renewed_when_read(
    two_day_ledger: Cascade, sim: SimHandle, redis_server: RedisServer
) -> None:
    first_turn_with_a_calculator_step(two_day_ledger.url, sim, stream=False)
    [key] = ledger_keys(redis_server, "steps")
    with redis.Redis.from_url(redis_server.url) as r:
        assert 2 * DAY_MS - 60_000 < r.pttl(key) <= 2 * DAY_MS
        stored = orjson.loads(r.get(key) or b"")
        # The run's own messages: the call, its result, the answer (no client message).
        assert stored["span"] == 1
        assert [m["role"] for m in stored["messages"]] == ["assistant", "tool", "assistant"]
        assert stored["messages"][-1]["content"] == "It is 42."
        r.pexpire(key, 5_000)
        sim.sim.add_rule(Rule(match="plus one", output="43.", times=1))
        history = [
            QUESTION,
            {"role": "assistant", "content": "It is 42."},
            {"role": "user", "content": "And plus one?"},
        ]
        chat(two_day_ledger.url, history, stream=False)
        assert len(sent(sim)) == 5  # the steps were found ...
        assert r.pttl(key) > 2 * DAY_MS - 60_000  # ... and their TTL renewed
