"""Sessions through the HTTP API: concurrency, restarts, isolation, disconnects, idempotency."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest
import redis

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

CHAT = "/v1/chat/completions"


def new_session(base: str, text: str = "start", headers: dict[str, str] | None = None) -> str:
    response = httpx.post(
        base + CHAT,
        json={"model": "m", "messages": [{"role": "user", "content": text}], "store": True},
        headers=headers or {},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    session_id: str = response.json()["session_id"]
    return session_id


def turn(base: str, session_id: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "session_id": session_id}
    body.update(extra.pop("body", {}))
    return httpx.post(base + CHAT, json=body, timeout=30, **extra)


def test_fifty_concurrent_turns_never_interleave_or_lose_messages(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="ok", ttft=0.002))
    session_id = new_session(cascade.url)

    async def one(i: int, client: httpx.AsyncClient) -> int:
        response = await client.post(
            CHAT,
            json={
                "model": "m",
                "messages": [{"role": "user", "content": f"turn {i}"}],
                "session_id": session_id,
            },
        )
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "session_busy"
        return response.status_code

    async def all_turns() -> list[int]:
        async with httpx.AsyncClient(base_url=cascade.url, timeout=60) as client:
            return await asyncio.gather(*(one(i, client) for i in range(50)))

    statuses = asyncio.run(all_turns())
    assert set(statuses) <= {200, 409}
    stored = statuses.count(200)
    assert stored >= 1
    session = httpx.get(f"{cascade.url}/v1/sessions/{session_id}").json()
    messages = session["messages"]
    assert len(messages) == 2 + 2 * stored
    assert session["version"] == stored
    seen = set()
    for user, assistant in zip(messages[2::2], messages[3::2], strict=True):
        assert user["role"] == "user" and assistant["role"] == "assistant"
        seen.add(user["content"])
    assert len(seen) == stored  # each stored once


def test_api_restart_loses_no_session(sim: SimHandle, redis_server: RedisServer) -> None:
    sim.sim.add_rule(Rule(output="remembered"))
    settings = cascade_settings(sim, redis_server)
    with serve_in_thread(create_app(settings)) as url:
        session_id = new_session(url, "keep this")
        assert turn(url, session_id, "and this").status_code == 200
    with serve_in_thread(create_app(settings)) as url:
        session = httpx.get(f"{url}/v1/sessions/{session_id}").json()
        assert [m["content"] for m in session["messages"]] == [
            "keep this",
            "remembered",
            "and this",
            "remembered",
        ]
        assert turn(url, session_id, "still here?").status_code == 200


def test_owners_never_see_each_others_sessions(sim: SimHandle, redis_server: RedisServer) -> None:
    sim.sim.add_rule(Rule(output="hi"))
    settings = cascade_settings(sim, redis_server, api_keys="alice-key,bob-key")
    alice = {"authorization": "Bearer alice-key"}
    bob = {"authorization": "Bearer bob-key"}
    with serve_in_thread(create_app(settings)) as url:
        session_id = new_session(url, headers=alice)
        assert httpx.get(f"{url}/v1/sessions/{session_id}", headers=alice).status_code == 200
        for method, path in [
            ("GET", f"/v1/sessions/{session_id}"),
            ("GET", f"/v1/sessions/{session_id}/export"),
            ("POST", f"/v1/sessions/{session_id}/fork"),
            ("DELETE", f"/v1/sessions/{session_id}"),
        ]:
            assert httpx.request(method, url + path, headers=bob).status_code == 404
        assert turn(url, session_id, "hijack", headers=bob).status_code == 404
        assert httpx.get(f"{url}/v1/sessions", headers=bob).json()["data"] == []
        listed = httpx.get(f"{url}/v1/sessions", headers=alice).json()["data"]
        assert [s["id"] for s in listed] == [session_id]
        assert "owner" not in listed[0]


def test_list_fork_export_delete(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="answer"))
    ids = [new_session(cascade.url, f"session {i}") for i in range(3)]
    page = httpx.get(f"{cascade.url}/v1/sessions", params={"limit": 2}).json()
    assert [s["id"] for s in page["data"]] == [ids[2], ids[1]]
    assert page["has_more"] is True
    rest = httpx.get(
        f"{cascade.url}/v1/sessions", params={"limit": 2, "after": page["last_id"]}
    ).json()
    assert [s["id"] for s in rest["data"]] == [ids[0]]

    assert turn(cascade.url, ids[0], "second").status_code == 200
    fork = httpx.post(f"{cascade.url}/v1/sessions/{ids[0]}/fork", json={"upto": 2}).json()
    forked = httpx.get(f"{cascade.url}/v1/sessions/{fork['id']}").json()
    assert [m["content"] for m in forked["messages"]] == ["session 0", "answer"]
    assert forked["forked_from"] == ids[0]

    export = httpx.get(f"{cascade.url}/v1/sessions/{ids[0]}/export").json()
    assert len(export["messages"]) == 4

    assert httpx.delete(f"{cascade.url}/v1/sessions/{ids[0]}").json()["deleted"] is True
    assert httpx.get(f"{cascade.url}/v1/sessions/{ids[0]}").status_code == 404


def test_disconnect_mid_stream_aborts_and_stores_an_interrupted_turn(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 400, tpot=0.01))
    session_id = new_session(cascade.url)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a long answer please"}],
        "session_id": session_id,
        "stream": True,
    }
    with httpx.stream("POST", cascade.url + CHAT, json=body, timeout=30) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                seen += 1
            if seen >= 5:
                break  # leaves the with-block: the connection closes mid-stream
    deadline = time.monotonic() + 10
    while True:
        session = httpx.get(f"{cascade.url}/v1/sessions/{session_id}").json()
        if len(session["messages"]) == 4:
            break
        assert time.monotonic() < deadline, "the interrupted turn was never stored"
        time.sleep(0.05)
    last = session["messages"][-1]
    assert last["role"] == "assistant"
    assert last["meta"]["interrupted"] is True
    assert last["content"].startswith("word")
    rid = sim.sim.requests[-1].rid
    deadline = time.monotonic() + 5
    while rid not in sim.sim.aborted_rids:
        assert time.monotonic() < deadline, "the runtime request was not aborted"
        time.sleep(0.05)
    # The session is usable again at once (the lock was released).
    sim.sim.add_rule(Rule(match="after", output="fine"))
    assert turn(cascade.url, session_id, "after the cut").status_code == 200


def test_idempotency_key_replays_the_first_result(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="only once"))
    session_id = new_session(cascade.url)
    before = len(sim.sim.requests)
    headers = {"idempotency-key": "abc-123"}
    first = turn(cascade.url, session_id, "do it", headers=headers)
    second = turn(cascade.url, session_id, "do it", headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert len(sim.sim.requests) == before + 1
    different = turn(cascade.url, session_id, "do something else", headers=headers)
    assert different.status_code == 422
    session = httpx.get(f"{cascade.url}/v1/sessions/{session_id}").json()
    assert len(session["messages"]) == 4


@pytest.mark.parametrize("limit", [0, 101])
def test_list_limit_is_validated(cascade: Cascade, limit: int) -> None:
    response = httpx.get(f"{cascade.url}/v1/sessions", params={"limit": limit})
    assert response.status_code == 400


def test_redis_down_is_a_503_and_a_redis_restart_needs_no_api_restart(
    cascade: Cascade, sim: SimHandle, own_redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(output="ok"))
    session_id = new_session(cascade.url)
    own_redis_server.kill()
    down = turn(cascade.url, session_id, "while redis is down")
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "storage_unavailable"
    assert down.headers["retry-after"]
    own_redis_server.start()  # same port and data (AOF)
    again = turn(cascade.url, session_id, "after the restart")
    assert again.status_code == 200, again.text
    messages = httpx.get(f"{cascade.url}/v1/sessions/{session_id}").json()["messages"]
    assert [m["content"] for m in messages][-2:] == ["after the restart", "ok"]


@pytest.mark.parametrize("stream", [False, True])
def test_deleting_a_session_deletes_its_idempotent_replays(
    cascade: Cascade, sim: SimHandle, redis_server: RedisServer, stream: bool
) -> None:
    sim.sim.add_rule(Rule(match="secret", output="the secret is tangerine"))
    session_id = new_session(cascade.url)
    headers = {"idempotency-key": "replay-after-delete"}
    options = {"body": {"stream": stream}, "headers": headers}
    first = turn(cascade.url, session_id, "tell me the secret", **options)
    assert first.status_code == 200, first.text
    assert "tangerine" in first.text or stream  # streamed text comes in pieces
    assert httpx.delete(f"{cascade.url}/v1/sessions/{session_id}").status_code == 200
    calls = len(sim.sim.requests)

    replay = turn(cascade.url, session_id, "tell me the secret", **options)

    assert replay.status_code == 404, replay.text
    assert replay.json()["error"]["code"] == "session_not_found"
    assert "tangerine" not in replay.text and "idempotent-replayed" not in replay.headers
    assert len(sim.sim.requests) == calls  # ran as a fresh request: no model call
    with redis.Redis.from_url(redis_server.url) as raw:
        left = [name.decode() for name in raw.keys("*")]
    assert [name for name in left if session_id in name or ":idem:" in name] == []


def test_a_turn_cut_by_a_redis_crash_leaves_the_session_usable_once_redis_is_back(
    cascade: Cascade, sim: SimHandle, own_redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 150, tpot=0.01))
    sim.sim.add_rule(Rule(match="after", output="fine"))
    session_id = new_session(cascade.url)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a long answer please"}],
        "session_id": session_id,
        "stream": True,
    }
    with httpx.stream("POST", cascade.url + CHAT, json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if '"content"' in line)  # the turn holds its lock now
        own_redis_server.kill()  # the lock stays in the AOF; its holder cannot release it
        with contextlib.suppress(httpx.RemoteProtocolError):  # the turn ends, its commit failed
            for _ in lines:
                pass
    own_redis_server.start()
    started = time.monotonic()
    again = turn(cascade.url, session_id, "after the crash")
    elapsed = time.monotonic() - started
    assert again.status_code == 200, again.text
    assert elapsed < 2.0  # within the turn lock wait: the lock was released, not left to expire


def test_a_turn_frozen_by_a_paused_redis_leaves_the_session_usable_once_redis_is_back(
    cascade: Cascade, sim: SimHandle, own_redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 150, tpot=0.01))
    sim.sim.add_rule(Rule(match="after", output="fine"))
    session_id = new_session(cascade.url)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a long answer please"}],
        "session_id": session_id,
        "stream": True,
    }
    with httpx.stream("POST", cascade.url + CHAT, json=body, timeout=30) as response:
        lines = response.iter_lines()
        next(line for line in lines if '"content"' in line)
        own_redis_server.pause()  # the commit, the lock's renewal and its release all time out
        with contextlib.suppress(httpx.RemoteProtocolError):
            for _ in lines:
                pass
    own_redis_server.resume()  # commands that timed out while frozen may run now
    started = time.monotonic()
    again = turn(cascade.url, session_id, "after the pause")
    elapsed = time.monotonic() - started
    assert again.status_code == 200, again.text
    assert elapsed < 2.0  # within the turn lock wait


def test_paused_redis_fails_fast_and_recovers(
    cascade: Cascade, sim: SimHandle, own_redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(output="ok"))
    session_id = new_session(cascade.url)
    own_redis_server.pause()
    try:
        started = time.monotonic()
        ready = httpx.get(f"{cascade.url}/readyz", timeout=30)
        ready_seconds = time.monotonic() - started
        assert ready.status_code == 503
        assert ready.json()["redis"]["ok"] is False
        assert ready.json()["runtime"]["ok"] is True
        assert ready_seconds < 2.0

        for method, path in [("GET", "/v1/sessions"), ("GET", f"/v1/sessions/{session_id}")]:
            started = time.monotonic()
            down = httpx.request(method, cascade.url + path, timeout=30)
            assert time.monotonic() - started < 3.0, path
            assert down.status_code == 503, path
            assert down.json()["error"]["code"] == "storage_unavailable"
            assert int(down.headers["retry-after"]) >= 1

        started = time.monotonic()
        busy = turn(cascade.url, session_id, "while redis is frozen")
        assert time.monotonic() - started < 3.0
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "storage_unavailable"
    finally:
        own_redis_server.resume()
    assert httpx.get(f"{cascade.url}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{cascade.url}/v1/sessions", timeout=5).status_code == 200
    again = turn(cascade.url, session_id, "after the thaw")
    assert again.status_code == 200, again.text
