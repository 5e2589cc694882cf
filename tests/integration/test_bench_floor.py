"""The overhead bench's floor server does a session turn's minimal work: one Redis read and one
write per turn, the stored history sent to the runtime, and every streamed event relayed."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import redis

from tests.bench.overhead import serving, start_floor
from tests.redis_server import RedisServer, free_port
from tests.sglang_sim.testing import SimHandle

CHAT = "/v1/chat/completions"


def commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def test_the_floor_reads_and_writes_a_session_once_per_turn_and_relays_each_event(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    proc = start_floor(sim.url, redis_server.url, port, tmp_path / "floor.log")
    with serving(proc, port) as (url, _), httpx.Client(base_url=url, timeout=30) as client:
        httpx.post(
            sim.url + "/sim/rules",
            json=[
                {"match": "stream please", "output": "one two three"},
                {"match": None, "output": "A short answer."},
            ],
        ).raise_for_status()
        first = client.post(
            CHAT,
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "store": True},
        )
        first.raise_for_status()
        session_id = first.json()["session_id"]
        assert first.json()["choices"][0]["message"]["content"] == "A short answer."

        turn = {"model": "m", "messages": [{"role": "user", "content": "again"}]}
        with redis.Redis.from_url(redis_server.url) as stats:  # closed: no socket left to the GC
            stats.config_resetstat()
            client.post(CHAT, json={**turn, "session_id": session_id}).raise_for_status()
            used = commands(stats)
        assert (used.get("get"), used.get("set")) == (1, 1)

        texts = []
        body = {**turn, "messages": [{"role": "user", "content": "stream please"}]}
        with client.stream(
            "POST", CHAT, json={**body, "session_id": session_id, "stream": True}
        ) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            chunk = json.loads(line[6:])
            assert chunk["object"] == "chat.completion.chunk"
            texts.append(chunk["choices"][0]["delta"].get("content") or "")
        assert "".join(texts) == "one two three"
        assert json.loads(lines[0][6:])["session_id"] == session_id

    sent = [record.body["messages"] for record in sim.sim.requests]
    assert sent[1] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "A short answer."},
        {"role": "user", "content": "again"},
    ]
    assert sent[2][-2:] == [
        {"role": "assistant", "content": "A short answer."},
        {"role": "user", "content": "stream please"},
    ]
    assert len(sent[2]) == 5
