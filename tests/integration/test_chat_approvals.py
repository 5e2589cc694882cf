"""Approving a write call in plain chat, stateless (Open WebUI-shaped bodies): the pause is an
ordinary question, the next "yes" of that exact conversation from its owner runs the call once,
anything else declines it, and a pause that expired, was answered or belongs to another
conversation or key runs nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from app.agent.approval import DECLINED
from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.integration.test_ledger import chat, ledger_keys, rendered_alike, sent
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

ASK = {"role": "user", "content": "Open the garage, please."}
QUESTION = "Run open_door (door: garage)? Reply yes to allow; anything else declines."
OPTIONS = {"server_tools": ["open_door"]}


def writable_cascade(
    sim: SimHandle,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    *,
    pause_ttl: float | None = None,
    **settings: Any,
) -> Iterator[tuple[Cascade, Recorder]]:
    monkeypatch.setenv("CASCADE_TOOLS_ALLOW_WRITE", "*")
    monkeypatch.setenv("CASCADE_TOOLS_CONFIRM_WRITE", "*")
    if pause_ttl is not None:
        monkeypatch.setenv("CASCADE_LEDGER_PAUSE_TTL", str(pause_ttl))
    config = cascade_settings(sim, redis_server, **settings)
    app = create_app(config)
    with serve_in_thread(app) as url:
        cascade = Cascade(url=url, app=app, settings=config)
        rec = Recorder()
        register_tools(cascade, rec)
        yield cascade, rec


@pytest.fixture
def writable(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Cascade, Recorder]]:
    yield from writable_cascade(sim, redis_server, monkeypatch)


def ask(url: str, sim: SimHandle, *, stream: bool = True, key: str | None = None) -> None:
    sim.sim.add_rule(Rule(output=call("open_door", door="garage"), times=1))
    reply = chat(url, [ASK], stream=stream, key=key, **OPTIONS)
    assert reply.content == QUESTION
    assert reply.finish_reason == "stop"
    assert reply.tool_calls == []


def answer(text: str) -> list[dict[str, Any]]:
    return [ASK, {"role": "assistant", "content": QUESTION}, {"role": "user", "content": text}]


@pytest.mark.parametrize("stream", [True, False])
def test_yes_runs_the_paused_call_once(
    writable: tuple[Cascade, Recorder], sim: SimHandle, redis_server: RedisServer, stream: bool
) -> None:
    cascade, rec = writable
    ask(cascade.url, sim, stream=stream)
    asked = sim.sim.requests[-1]
    assert rec.doors_opened == []
    [pause_key] = ledger_keys(redis_server, "pause")
    with redis.Redis.from_url(redis_server.url) as r:
        assert 0 < r.pttl(pause_key) <= 600_000

    sim.sim.add_rule(Rule(output="The garage is open.", times=1))
    reply = chat(cascade.url, answer(" Yes! "), stream=stream, **OPTIONS)
    assert reply.content == "The garage is open."
    assert reply.finish_reason == "stop"
    assert rec.doors_opened == ["garage"]
    # The model sees its call and the result, as a session resumed by confirm_tool_calls.
    resumed = sent(sim)
    assert [m["role"] for m in resumed] == ["user", "assistant", "tool"]
    assert resumed[1]["tool_calls"][0]["function"]["name"] == "open_door"
    assert resumed[2]["content"] == "garage opened"
    prompt = sim.sim.requests[-1].prompt
    assert prompt is not None and asked.prompt is not None
    assert prompt.startswith(asked.prompt + asked.output + "<|im_end|>")  # the prefix cache hits
    assert ledger_keys(redis_server, "pause") == []  # taken

    # The same "yes" again finds no pause: nothing runs twice.
    sim.sim.add_rule(Rule(output="Done already.", times=1))
    chat(cascade.url, answer(" Yes! "), stream=stream, **OPTIONS)
    assert rec.doors_opened == ["garage"]

    # The next turn sees the approved step where the client has the question and its yes.
    sim.sim.add_rule(Rule(match="yes", output="Nothing left to open.", times=1))
    history = [
        *answer(" Yes! "),
        {"role": "assistant", "content": "The garage is open."},
        {"role": "user", "content": "yes"},
    ]
    reply = chat(cascade.url, history, stream=stream, **OPTIONS)
    assert reply.content == "Nothing left to open."
    assert rec.doors_opened == ["garage"]
    later = sent(sim)
    assert [m["role"] for m in later] == ["user", "assistant", "tool", "assistant", "user"]
    assert rendered_alike(later[:3]) == rendered_alike(resumed)


def test_no_declines_the_call_and_the_model_is_told(
    writable: tuple[Cascade, Recorder], sim: SimHandle
) -> None:
    cascade, rec = writable
    ask(cascade.url, sim)
    sim.sim.add_rule(Rule(match="no", output="All right, I left it closed.", times=1))
    reply = chat(cascade.url, answer("no"), stream=True, **OPTIONS)
    assert reply.content == "All right, I left it closed."
    assert rec.doors_opened == []
    messages = sent(sim)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[2] == {
        "role": "tool",
        "tool_call_id": messages[1]["tool_calls"][0]["id"],
        "content": DECLINED,
    }
    # Declined is final: a later yes to the same question runs nothing.
    sim.sim.add_rule(Rule(output="Nothing to do.", times=1))
    chat(cascade.url, answer("yes"), stream=False, **OPTIONS)
    assert rec.doors_opened == []
    # And the next turn still shows the model the declined call.
    sim.sim.add_rule(Rule(match="thanks", output="You're welcome.", times=1))
    history = [
        *answer("no"),
        {"role": "assistant", "content": "All right, I left it closed."},
        {"role": "user", "content": "thanks"},
    ]
    chat(cascade.url, history, stream=False, **OPTIONS)
    assert [m["role"] for m in sent(sim)] == [
        "user",
        "assistant",
        "tool",
        "user",
        "assistant",
        "user",
    ]


def test_a_yes_in_another_conversation_does_not_approve(
    writable: tuple[Cascade, Recorder], sim: SimHandle
) -> None:
    cascade, rec = writable
    ask(cascade.url, sim)
    sim.sim.add_rule(Rule(output="Which door?", times=1))
    other = answer("yes")
    other[0] = {"role": "user", "content": "Open the front door, please."}
    chat(cascade.url, other, stream=True, **OPTIONS)
    assert rec.doors_opened == []
    assert [m["role"] for m in sent(sim)] == ["user", "assistant", "user"]
    # The pause was not taken by that: its own conversation still approves it.
    sim.sim.add_rule(Rule(output="Open.", times=1))
    chat(cascade.url, answer("ok"), stream=True, **OPTIONS)
    assert rec.doors_opened == ["garage"]


def test_another_keys_yes_runs_nothing(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for cascade, rec in writable_cascade(sim, redis_server, monkeypatch, api_keys="key-a,key-b"):
        ask(cascade.url, sim, key="key-a")
        sim.sim.add_rule(Rule(output="Hm?", times=1))
        chat(cascade.url, answer("yes"), stream=True, key="key-b", **OPTIONS)
        assert rec.doors_opened == []
        assert [m["role"] for m in sent(sim)] == ["user", "assistant", "user"]
        sim.sim.add_rule(Rule(output="Open.", times=1))
        chat(cascade.url, answer("yes"), stream=True, key="key-a", **OPTIONS)
        assert rec.doors_opened == ["garage"]


def test_an_expired_pause_runs_nothing(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for cascade, rec in writable_cascade(sim, redis_server, monkeypatch, pause_ttl=0.3):
        ask(cascade.url, sim)
        [pause_key] = ledger_keys(redis_server, "pause")
        with redis.Redis.from_url(redis_server.url) as r:
            assert 0 < r.pttl(pause_key) <= 300
        time.sleep(0.5)
        sim.sim.add_rule(Rule(output="Too late, ask me again.", times=1))
        reply = chat(cascade.url, answer("yes"), stream=True, **OPTIONS)
        assert reply.content == "Too late, ask me again."
        assert rec.doors_opened == []
        assert [m["role"] for m in sent(sim)] == ["user", "assistant", "user"]


def test_a_session_still_confirms_by_pause_id(
    writable: tuple[Cascade, Recorder], sim: SimHandle
) -> None:
    cascade, rec = writable
    sim.sim.add_rule(Rule(output=call("open_door", door="garage"), times=1))
    first = chat(cascade.url, [ASK], stream=False, store=True, **OPTIONS)
    assert first.finish_reason == "tool_calls"  # a session's client confirms by id
    assert first.content == ""
    assert rec.doors_opened == []
