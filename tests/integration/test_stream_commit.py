"""A streamed session turn whose commit meets a failing Redis: never a silent loss.

The client has the whole answer by then; cascade retries the commit within a bound (a Redis
restart is survived and the turn is stored), and past the bound ends the stream with an error
event and `[DONE]` and logs `turn_commit_failed`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import structlog

from tests.integration.conftest import Cascade
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

ANSWER = " ".join(f"word{i}" for i in range(30))


def new_session(cascade: Cascade, sim: SimHandle) -> str:
    sim.sim.add_rule(Rule(match="start", output="Started."))
    first = httpx.post(
        cascade.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "start"}], "store": True},
        timeout=30,
    )
    session_id: str = first.json()["session_id"]
    return session_id


def stream_turn(
    cascade: Cascade, session_id: str, on_first_content: Any
) -> list[dict[str, Any] | str]:
    events: list[dict[str, Any] | str] = []
    body = {
        "model": "m",
        "session_id": session_id,
        "stream": True,
        "messages": [{"role": "user", "content": "tell me"}],
    }
    fired = False
    with httpx.stream(
        "POST", cascade.url + "/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            event: dict[str, Any] | str = data if data == "[DONE]" else json.loads(data)
            events.append(event)
            content = (
                isinstance(event, dict)
                and event.get("choices")
                and event["choices"][0]["delta"].get("content")
            )
            if content and not fired:
                fired = True
                on_first_content()
    return events


def text_of(events: list[dict[str, Any] | str]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


def test_redis_restarting_at_commit_time_still_stores_the_turn(
    cascade: Cascade, sim: SimHandle, own_redis_server: RedisServer
) -> None:
    session_id = new_session(cascade, sim)
    sim.sim.add_rule(Rule(match="tell me", output=ANSWER, tpot=0.02))

    def outage() -> None:
        own_redis_server.kill()
        threading.Timer(3.0, own_redis_server.start).start()  # longer than the client's own retries

    events = stream_turn(cascade, session_id, outage)
    assert events[-1] == "[DONE]"
    assert not [e for e in events if isinstance(e, dict) and "error" in e]
    assert text_of(events) == ANSWER
    history = httpx.get(f"{cascade.url}/v1/sessions/{session_id}", timeout=10).json()
    assert [m["content"] for m in history["messages"]][-1] == ANSWER
    assert len(history["messages"]) == 4


def test_redis_gone_at_commit_time_ends_the_stream_with_an_error_and_done(
    cascade: Cascade, sim: SimHandle, own_redis_server: RedisServer
) -> None:
    session_id = new_session(cascade, sim)
    sim.sim.add_rule(Rule(match="tell me", output=ANSWER, tpot=0.02))
    with structlog.testing.capture_logs() as logs:
        events = stream_turn(cascade, session_id, own_redis_server.kill)
    assert text_of(events) == ANSWER  # the client has the answer ...
    assert events[-1] == "[DONE]"  # ... and a proper end
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1
    assert errors[0]["error"]["code"] == "storage_unavailable"
    assert not [
        e
        for e in events
        if isinstance(e, dict) and e.get("choices") and e["choices"][0].get("finish_reason")
    ]
    failed = [e for e in logs if e["event"] == "turn_commit_failed"]
    assert failed and failed[0]["session_id"] == session_id
    own_redis_server.start()
    history = httpx.get(f"{cascade.url}/v1/sessions/{session_id}", timeout=10).json()
    assert len(history["messages"]) == 2  # the turn was not stored, and the log says so
