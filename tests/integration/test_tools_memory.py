"""The memory tools through the registry, against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer
from tools.builtin.memory import make_memory_tools
from tools.registry import ToolContext, ToolPolicy, ToolRegistry, ToolResult

WRITES = ToolPolicy(allow_write=True, confirm_write=False)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def registry(max_notes: int = 5, max_note_chars: int = 40) -> ToolRegistry:
    return ToolRegistry(
        make_memory_tools(max_notes=max_notes, max_note_chars=max_note_chars, key_prefix="t")
    )


async def run(
    reg: ToolRegistry, redis: aioredis.Redis | None, owner: str, name: str, **args: object
) -> ToolResult:
    ctx = ToolContext(owner=owner, redis=redis, call_id="call_1")
    return await reg.execute(name, json.dumps(args), ctx, WRITES)


async def test_remember_recall_forget(redis: aioredis.Redis) -> None:
    reg = registry()
    assert (await run(reg, redis, "alice", "memory_recall")).text == "No saved notes."
    assert (await run(reg, redis, "alice", "memory_remember", text="likes tea")).text == (
        "Saved as note 1."
    )
    assert (await run(reg, redis, "alice", "memory_remember", text=" Lives in Lyon ")).text == (
        "Saved as note 2."
    )
    recall = await run(reg, redis, "alice", "memory_recall")
    assert recall.text == "2 note(s):\n[1] likes tea\n[2] Lives in Lyon"
    search = await run(reg, redis, "alice", "memory_recall", query="LYON")
    assert search.text == "1 note(s):\n[2] Lives in Lyon"
    none = await run(reg, redis, "alice", "memory_recall", query="coffee")
    assert none.text == "No notes contain 'coffee'."
    assert (await run(reg, redis, "alice", "memory_forget", note_id=1)).text == "Deleted note 1."
    again = await run(reg, redis, "alice", "memory_forget", note_id=1)
    assert again.is_error and "there is no note 1" in again.text
    assert (await run(reg, redis, "alice", "memory_recall")).text == "1 note(s):\n[2] Lives in Lyon"
    # Stored where the module says, as JSON.
    stored = await redis.hgetall("t:tools:memory:alice")
    assert list(stored) == [b"2"]
    assert json.loads(stored[b"2"])["text"] == "Lives in Lyon"


async def test_notes_are_per_owner(redis: aioredis.Redis) -> None:
    reg = registry()
    await run(reg, redis, "alice", "memory_remember", text="alice's secret")
    assert (await run(reg, redis, "bob", "memory_recall")).text == "No saved notes."
    forget = await run(reg, redis, "bob", "memory_forget", note_id=1)
    assert forget.is_error
    assert "alice's secret" in (await run(reg, redis, "alice", "memory_recall")).text


async def test_bounded_count_and_size(redis: aioredis.Redis) -> None:
    reg = registry(max_notes=3, max_note_chars=40)
    too_long = await run(reg, redis, "o", "memory_remember", text="x" * 41)
    assert too_long.is_error and "longer than 40 characters" in too_long.text
    blank = await run(reg, redis, "o", "memory_remember", text="   ")
    assert blank.is_error and "empty" in blank.text
    # Concurrent remembers never exceed the bound (the check and the write are one script).
    results = await asyncio.gather(
        *(run(reg, redis, "o", "memory_remember", text=f"note {n}") for n in range(10))
    )
    saved = [r for r in results if not r.is_error]
    full = [r for r in results if r.is_error]
    assert len(saved) == 3
    assert all("the memory is full (3 notes)" in r.text for r in full)
    assert await redis.hlen("t:tools:memory:o") == 3
    await run(reg, redis, "o", "memory_forget", note_id=int(saved[0].text.split()[-1][:-1]))
    assert not (await run(reg, redis, "o", "memory_remember", text="room again")).is_error


async def test_memory_needs_redis_and_writes_need_policy(redis: aioredis.Redis) -> None:
    reg = registry()
    no_redis = await run(reg, None, "o", "memory_recall")
    assert no_redis.is_error and "memory is not available" in no_redis.text
    ctx = ToolContext(owner="o", redis=redis, call_id="call_1")
    refused = await reg.execute("memory_remember", '{"text": "x"}', ctx, ToolPolicy())
    assert refused.is_error and "not allowed" in refused.text
    assert await redis.exists("t:tools:memory:o") == 0
    read_ok = await reg.execute("memory_recall", "{}", ctx, ToolPolicy())
    assert not read_ok.is_error


async def test_redis_down_is_a_tool_error(own_redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(own_redis_server.url, socket_connect_timeout=0.5)
    try:
        own_redis_server.kill()
        result = await run(registry(), client, "o", "memory_recall")
    finally:
        await client.aclose()
    assert result.is_error
    assert result.text == (
        "Tool 'memory_recall' failed: the memory storage cannot be reached right now"
    )
