"""The session store against a real redis-server: atomic turns, locks, TTLs, isolation, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from app.errors import ConfigError, ConflictError, NotFoundError, UnprocessableError
from app.redis_client import RedisSettings, redis_client
from app.sessions import (
    SessionOptions,
    SessionSettings,
    SessionStore,
    load_session_settings,
)
from app.sessions.idempotency import IdempotencyStore
from app.sessions.lock import RedisLock, _cleanups, settle_releases
from tests.clock import ManualClock
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

OWNER = "key_alice"
OTHER = "key_bob"
DAY_MS = 86_400_000


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def store(client: aioredis.Redis) -> SessionStore:
    return SessionStore(client)


def history() -> list[dict[str, Any]]:
    """One full tool round: user (text + image reference), assistant thinking + tool call,
    tool result, final answer with its own reasoning and meta."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and what time is it?"},
                {"type": "image_ref", "sha256": "ab" * 32, "mime": "image/png", "width": 64},
            ],
        },
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "A red square. I need the clock tool for the time.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "clock", "arguments": '{"tz": "UTC"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "clock", "content": "12:00"},
        {
            "role": "assistant",
            "content": "A red square; it is 12:00 UTC.",
            "reasoning_content": "Answer both parts.",
            "meta": {"usage": {"reasoning_tokens": 12}, "created_at": 1.5},
        },
    ]


async def prefixed_keys(client: aioredis.Redis, prefix: str = "cascade:") -> list[str]:
    return sorted([key.decode() async for key in client.scan_iter(match=prefix + "*")])


def turn(n: int) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"question {n}"},
        {"role": "assistant", "content": f"answer {n}", "reasoning_content": f"thinking {n}"},
    ]


async def test_create_and_load_keep_reasoning_and_tool_calls_apart(store: SessionStore) -> None:
    options = SessionOptions(thinking=True, thinking_budget=512, server_tools=["clock"])
    before = time.time()
    info = await store.create(OWNER, title="pictures", options=options, messages=history())
    assert info.id.startswith("sess_") and len(info.id) == 5 + 24
    assert info.owner == OWNER and info.title == "pictures"
    assert info.version == 0 and info.message_count == 4
    assert before <= info.created_at == info.updated_at <= time.time()

    loaded, messages = await store.load(info.id, OWNER)
    assert loaded == info
    assert messages == history()
    first_call = messages[1]
    assert first_call["content"] == ""
    assert first_call["reasoning_content"].startswith("A red square")
    assert first_call["tool_calls"][0]["function"]["arguments"] == '{"tz": "UTC"}'
    assert messages[3]["meta"] == {"usage": {"reasoning_tokens": 12}, "created_at": 1.5}
    assert (await store.get_info(info.id, OWNER)) == info


async def test_append_turn_is_all_or_nothing(store: SessionStore, client: aioredis.Redis) -> None:
    info = await store.create(OWNER)
    with pytest.raises(ConflictError) as caught:
        await store.append_turn(info.id, OWNER, turn(1), expected_version=3)
    assert caught.value.status == 409
    # a message that cannot be encoded stops the whole turn before anything is written
    with pytest.raises(TypeError):
        await store.append_turn(
            info.id, OWNER, [turn(1)[0], {"role": "user", "content": object()}], expected_version=0
        )
    assert await client.llen(store.keys.messages(info.id)) == 0
    assert (await store.get_info(info.id, OWNER)).version == 0

    updated = await store.append_turn(
        info.id,
        OWNER,
        turn(1),
        expected_version=0,
        title="renamed",
        options=SessionOptions(thinking=False),
    )
    assert updated.version == 1 and updated.message_count == 2
    assert updated.title == "renamed" and updated.options.thinking is False
    assert updated.updated_at >= info.updated_at and updated.created_at == info.created_at
    _, messages = await store.load(info.id, OWNER)
    assert messages == turn(1)


async def test_a_retried_turn_is_not_appended_twice(store: SessionStore) -> None:
    info = await store.create(OWNER)
    first = await store.append_turn(info.id, OWNER, turn(1), expected_version=0, turn_id="t-1")
    again = await store.append_turn(info.id, OWNER, turn(1), expected_version=0, turn_id="t-1")
    assert again == first and again.version == 1
    with pytest.raises(ConflictError):  # another turn at the old version still conflicts
        await store.append_turn(info.id, OWNER, turn(2), expected_version=0, turn_id="t-2")
    assert (await store.load(info.id, OWNER))[1] == turn(1)


async def test_concurrent_appends_at_one_version_commit_once(store: SessionStore) -> None:
    info = await store.create(OWNER)
    results = await asyncio.gather(
        *(store.append_turn(info.id, OWNER, turn(n), expected_version=0) for n in range(10)),
        return_exceptions=True,
    )
    committed = [r for r in results if not isinstance(r, BaseException)]
    assert len(committed) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    final, messages = await store.load(info.id, OWNER)
    assert final.version == 1 and len(messages) == 2


async def test_concurrent_turns_with_lock_never_interleave_or_lose_messages(
    client: aioredis.Redis,
) -> None:
    store = SessionStore(client, SessionSettings(turn_lock_wait=0.3))
    info = await store.create(OWNER)

    async def one_turn(n: int) -> bool:
        try:
            async with store.turn_lock(info.id):
                current = await store.get_info(info.id, OWNER)
                await asyncio.sleep(0.01)  # the model "runs"
                await store.append_turn(info.id, OWNER, turn(n), expected_version=current.version)
        except ConflictError:
            return False
        return True

    outcomes = await asyncio.gather(*(one_turn(n) for n in range(50)))
    stored_turns = {n for n, ok in enumerate(outcomes) if ok}
    # with 50 turns of ≥10 ms each and a 0.3 s wait, both outcomes must occur
    assert 0 < len(stored_turns) < 50

    final, messages = await store.load(info.id, OWNER)
    assert final.version == len(stored_turns)
    assert len(messages) == 2 * len(stored_turns)
    seen = []
    for user, assistant in zip(messages[::2], messages[1::2], strict=True):
        n = int(user["content"].split()[-1])
        assert (user, assistant) == tuple(turn(n))  # each turn's two messages adjacent
        seen.append(n)
    assert sorted(seen) == sorted(stored_turns)  # each stored exactly once, none lost


async def test_second_turn_waits_for_the_lock_then_gets_409(client: aioredis.Redis) -> None:
    store = SessionStore(client, SessionSettings(turn_lock_wait=0.3))
    session = await store.create(OWNER)
    async with store.turn_lock(session.id):
        started = time.monotonic()
        with pytest.raises(ConflictError) as caught:
            async with store.turn_lock(session.id):
                pytest.fail("two turns held the lock at once")
        waited = time.monotonic() - started
    assert 0.3 <= waited < 1.5
    assert caught.value.status == 409 and caught.value.code == "session_busy"
    assert "another turn is running" in caught.value.message

    # a turn that ends within the wait lets the waiting one in
    async def short_turn() -> None:
        async with store.turn_lock(session.id):
            await asyncio.sleep(0.1)

    first = asyncio.create_task(short_turn())
    await asyncio.sleep(0.02)
    started = time.monotonic()
    async with store.turn_lock(session.id):
        assert time.monotonic() - started >= 0.05
    await first
    assert await client.exists(store.keys.lock(session.id)) == 0


async def test_lock_and_load_holds_the_turn_lock_and_reads_in_one_step(
    client: aioredis.Redis,
) -> None:
    store = SessionStore(client, SessionSettings(turn_lock_wait=0.2))
    session = await store.create(OWNER, messages=[{"role": "user", "content": "hi"}])
    lock, info, messages = await store.lock_and_load(session.id, OWNER)
    try:
        assert info.id == session.id and info.version == 0
        assert messages == [{"role": "user", "content": "hi"}]
        with pytest.raises(ConflictError):  # a second turn waits, then 409
            await store.lock_and_load(session.id, OWNER)
        with pytest.raises(ConflictError):  # the plain lock is the same lock
            async with store.turn_lock(session.id):
                pass
    finally:
        await lock.release()
    assert await client.exists(store.keys.lock(session.id)) == 0
    # a stranger (or a missing session) gets 404, and the lock is not left behind
    with pytest.raises(NotFoundError):
        await store.lock_and_load(session.id, "someone-else")
    assert await client.exists(store.keys.lock(session.id)) == 0
    with pytest.raises(NotFoundError):
        await store.lock_and_load("sess_" + "0" * 24, OWNER)


async def test_a_committed_append_releases_the_turn_lock_in_the_same_step(
    client: aioredis.Redis,
) -> None:
    store = SessionStore(client, SessionSettings(turn_lock_wait=0.0))
    session = await store.create(OWNER)
    lock, info, _ = await store.lock_and_load(session.id, OWNER)
    with pytest.raises(ConflictError):  # a conflict commits nothing and keeps the lock
        await store.append_turn(
            session.id, OWNER, [{"role": "user", "content": "x"}], expected_version=7, release=lock
        )
    assert await client.exists(store.keys.lock(session.id)) == 1
    assert lock.token is not None
    await store.append_turn(
        session.id, OWNER, [{"role": "user", "content": "hi"}], expected_version=0, release=lock
    )
    assert await client.exists(store.keys.lock(session.id)) == 0
    assert lock.token is None
    await lock.release()  # nothing left to do
    # the next turn gets in at once
    second, info, messages = await store.lock_and_load(session.id, OWNER)
    assert info.version == 1 and messages == [{"role": "user", "content": "hi"}]
    await second.release()


async def test_a_waiting_acquire_gives_up_when_its_wait_is_over_by_its_clock(
    client: aioredis.Redis,
) -> None:
    clock = ManualClock()
    key = "t:lock:clocked"
    await client.set(key, "other-holder", px=60_000)
    lock = RedisLock(client, key, ttl=30.0, wait=30.0, message="busy", clock=clock)
    waiting = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0.1)  # it tries a few times
    assert not waiting.done()
    clock.advance(29.9)
    await asyncio.sleep(0.1)
    assert not waiting.done()  # still within its wait
    clock.advance(0.2)
    with pytest.raises(ConflictError) as caught:
        await asyncio.wait_for(waiting, 1.5)  # gives up at its next try
    assert caught.value.message == "busy" and caught.value.status == 409
    assert await client.get(key) == b"other-holder"


async def test_lock_renewal_keeps_a_long_turn_locked(client: aioredis.Redis) -> None:
    # A ttl with room for scheduling delays on a loaded CI machine (renewal every ttl/3).
    store = SessionStore(client, SessionSettings(turn_lock_ttl=1.5, turn_lock_wait=0.0))
    session = await store.create(OWNER)
    key = store.keys.lock(session.id)
    lock = store.turn_lock(session.id)
    async with lock:
        for _ in range(8):  # 4 s, more than twice the ttl
            await asyncio.sleep(0.5)
            assert 0 < await client.pttl(key) <= 1500
            with pytest.raises(ConflictError):
                async with store.turn_lock(session.id):
                    pass
        assert isinstance(lock, RedisLock) and not lock.lost
    assert await client.exists(key) == 0


async def test_a_crashed_holders_lock_expires(client: aioredis.Redis) -> None:
    store = SessionStore(client, SessionSettings(turn_lock_wait=1.0))
    session = await store.create(OWNER)
    await client.set(store.keys.lock(session.id), "dead-holder", px=200)
    started = time.monotonic()
    async with store.turn_lock(session.id):
        assert time.monotonic() - started >= 0.1


async def test_a_late_release_never_frees_the_next_holders_lock(client: aioredis.Redis) -> None:
    store = SessionStore(client, SessionSettings(turn_lock_ttl=0.3, turn_lock_wait=0.0))
    session = await store.create(OWNER)
    key = store.keys.lock(session.id)
    first = store.turn_lock(session.id)
    assert isinstance(first, RedisLock)
    await first.__aenter__()
    await client.delete(key)  # the first holder's lock expired while it stalled
    async with store.turn_lock(session.id):
        token = await client.get(key)
        await first.__aexit__(None, None, None)
        assert await client.get(key) == token


async def test_ttl_is_set_on_every_key_and_refreshed_by_use(
    store: SessionStore, client: aioredis.Redis
) -> None:
    info = await store.create(OWNER, messages=history())
    idem = IdempotencyStore(client)
    assert await idem.begin(OWNER, "k1", "h", session_id=info.id) is None
    await idem.complete(OWNER, "k1", {"ok": True}, session_id=info.id)
    ttl_ms = 30 * DAY_MS
    keys = await prefixed_keys(client)
    assert len(keys) == 5  # info, messages, idempotency links, owner index, idempotency record
    for key in keys:
        assert 0 < await client.pttl(key) <= ttl_ms, key

    session_keys = [*store.keys.session_keys(info.id), store.keys.owner_index(OWNER)]

    async def shorten() -> None:
        for key in session_keys:
            assert await client.pexpire(key, 5_000)

    async def assert_refreshed() -> None:
        for key in session_keys:
            assert await client.pttl(key) > ttl_ms - 60_000, key

    await shorten()
    await store.load(info.id, OWNER)
    await assert_refreshed()
    await shorten()
    await store.get_info(info.id, OWNER)
    await assert_refreshed()
    await shorten()
    await store.append_turn(info.id, OWNER, turn(1), expected_version=0)
    await assert_refreshed()


async def test_ttl_follows_the_setting(client: aioredis.Redis) -> None:
    store = SessionStore(client, SessionSettings(session_ttl_days=2))
    info = await store.create(OWNER, messages=turn(0))
    for key in [store.keys.info(info.id), store.keys.messages(info.id)]:
        assert DAY_MS < await client.pttl(key) <= 2 * DAY_MS


async def test_expired_sessions_vanish_from_load_and_list(
    store: SessionStore, client: aioredis.Redis
) -> None:
    gone = await store.create(OWNER, messages=turn(0))
    kept = await store.create(OWNER)
    for key in store.keys.session_keys(gone.id):
        await client.pexpire(key, 1)
    await asyncio.sleep(0.05)
    with pytest.raises(NotFoundError):
        await store.load(gone.id, OWNER)
    page, more = await store.list(OWNER)
    assert [s.id for s in page] == [kept.id] and more is False
    assert await client.zscore(store.keys.owner_index(OWNER), gone.id) is None


async def test_delete_removes_every_key(store: SessionStore, client: aioredis.Redis) -> None:
    doomed = await store.create(OWNER, title="t", messages=history())
    await store.append_turn(doomed.id, OWNER, turn(1), expected_version=0)
    idem = IdempotencyStore(client)
    assert await idem.begin(OWNER, "retry-me", "h", session_id=doomed.id) is None
    await idem.complete(OWNER, "retry-me", {"answer": "secret"}, session_id=doomed.id)
    survivor = await store.create(OWNER, messages=turn(2))
    assert any(doomed.id in key for key in await prefixed_keys(client))

    await store.delete(doomed.id, OWNER)
    remaining = await prefixed_keys(client)
    assert not [key for key in remaining if doomed.id in key]
    assert not [key for key in remaining if ":idem:" in key]  # the stored result went too
    assert await idem.begin(OWNER, "retry-me", "h", session_id=doomed.id) is None  # nothing cached
    await idem.abandon(OWNER, "retry-me", session_id=doomed.id)
    with pytest.raises(NotFoundError):
        await store.load(doomed.id, OWNER)
    with pytest.raises(NotFoundError):
        await store.delete(doomed.id, OWNER)

    await store.delete(survivor.id, OWNER)
    assert await prefixed_keys(client) == []


async def test_another_owner_sees_only_not_found(store: SessionStore) -> None:
    info = await store.create(OWNER, title="private", messages=history())
    missing = "sess_" + "0" * 24
    calls: list[Callable[[str], Awaitable[object]]] = [
        lambda sid: store.get_info(sid, OTHER),
        lambda sid: store.load(sid, OTHER),
        lambda sid: store.append_turn(sid, OTHER, turn(1), expected_version=0),
        lambda sid: store.fork(sid, OTHER),
        lambda sid: store.export(sid, OTHER),
        lambda sid: store.delete(sid, OTHER),
    ]
    for call in calls:
        errors = []
        for sid in (info.id, missing):
            with pytest.raises(NotFoundError) as caught:
                await call(sid)
            errors.append(caught.value)
        # another owner's session is indistinguishable from a missing one
        assert errors[0].status == errors[1].status == 404
        assert errors[0].code == errors[1].code
        assert errors[0].message == errors[1].message.replace(missing, info.id)

    assert await store.list(OTHER) == ([], False)
    page, _ = await store.list(OWNER)
    assert [s.id for s in page] == [info.id]
    unchanged, messages = await store.load(info.id, OWNER)
    assert unchanged.version == 0 and messages == history()


async def test_malformed_session_ids_are_not_found(store: SessionStore) -> None:
    for bad in ["", "sess_", "sess_xyz", "cascade:*", "sess_" + "a" * 25]:
        with pytest.raises(NotFoundError):
            await store.load(bad, OWNER)


async def test_list_is_newest_first_and_paginated(store: SessionStore) -> None:
    created = [(await store.create(OWNER, title=f"s{n}")).id for n in range(5)]
    await store.create(OTHER)
    await store.append_turn(created[1], OWNER, turn(1), expected_version=0)
    expected = [created[1], created[4], created[3], created[2], created[0]]

    pages: list[list[str]] = []
    flags: list[bool] = []
    after: str | None = None
    while True:
        page, more = await store.list(OWNER, limit=2, after=after)
        pages.append([s.id for s in page])
        flags.append(more)
        if not more:
            break
        after = page[-1].id
    assert pages == [expected[0:2], expected[2:4], expected[4:]]
    assert flags == [True, True, False]
    everything, more = await store.list(OWNER, limit=100)
    assert [s.id for s in everything] == expected and more is False
    assert all(s.owner == OWNER for s in everything)
    assert [s.updated_at for s in everything] == sorted(
        (s.updated_at for s in everything), reverse=True
    )

    with pytest.raises(UnprocessableError):
        await store.list(OWNER, limit=0)
    with pytest.raises(NotFoundError):
        await store.list(OWNER, after="sess_" + "0" * 24)


async def test_fork_copies_history_up_to_an_index(store: SessionStore) -> None:
    options = SessionOptions(thinking=True, thinking_budget=100)
    source = await store.create(OWNER, title="origin", options=options, messages=history())
    fork = await store.fork(source.id, OWNER, upto=2)
    assert fork.id != source.id and fork.forked_from == source.id
    assert fork.options == options and fork.title == "origin"
    assert fork.version == 0 and fork.message_count == 2
    _, forked = await store.load(fork.id, OWNER)
    assert forked == history()[:2]

    await store.append_turn(fork.id, OWNER, turn(9), expected_version=0)
    _, original = await store.load(source.id, OWNER)
    assert original == history()  # the source is untouched by the fork's turns

    whole = await store.fork(source.id, OWNER)
    assert (await store.load(whole.id, OWNER))[1] == history()
    empty = await store.fork(source.id, OWNER, upto=0)
    assert empty.message_count == 0
    for bad in (-1, 5):
        with pytest.raises(UnprocessableError):
            await store.fork(source.id, OWNER, upto=bad)
    page, _ = await store.list(OWNER, limit=10)
    assert {s.id for s in page} == {source.id, fork.id, whole.id, empty.id}


async def test_export_is_the_whole_session_as_json(store: SessionStore) -> None:
    info = await store.create(OWNER, title="ünïcode ✓", messages=history())
    info = await store.append_turn(info.id, OWNER, turn(1), expected_version=0)
    exported = await store.export(info.id, OWNER)
    round_tripped = json.loads(json.dumps(exported))  # plain JSON, nothing exotic
    assert round_tripped == exported
    assert exported["session"]["id"] == info.id
    assert exported["session"]["title"] == "ünïcode ✓"
    assert exported["session"]["version"] == 1
    assert exported["messages"] == [*history(), *turn(1)]


async def test_a_redis_restart_loses_no_committed_session(
    own_redis_server: RedisServer, store: SessionStore
) -> None:
    info = await store.create(OWNER, title="durable", messages=history())
    info = await store.append_turn(info.id, OWNER, turn(1), expected_version=0)
    own_redis_server.restart()  # SIGKILL, then start on the same AOF

    fresh = aioredis.Redis.from_url(own_redis_server.url)
    try:
        loaded, messages = await SessionStore(fresh).load(info.id, OWNER)
    finally:
        await fresh.aclose()
    assert loaded == info
    assert messages == [*history(), *turn(1)]

    # the old client's pooled connection died with the server (a client without a retry
    # policy reports that once); then the store goes on, reloading its scripts transparently
    with contextlib.suppress(redis.exceptions.ConnectionError):
        await store.get_info(info.id, OWNER)
    page, _ = await store.list(OWNER)
    assert [s.id for s in page] == [info.id]
    after = await store.append_turn(info.id, OWNER, turn(2), expected_version=1)
    assert after.version == 2 and after.message_count == 8


class _CountingConnection(aioredis.Connection):
    """A real connection that counts its writes to the socket (one per round trip)."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


async def test_load_and_append_are_one_round_trip_each_whatever_the_history(
    redis_server: RedisServer,
) -> None:
    # On one Redis the session's script also updates the owner index (a cluster needs two).
    pool = aioredis.ConnectionPool.from_url(redis_server.url, connection_class=_CountingConnection)
    counted = aioredis.Redis(connection_pool=pool)
    observer = aioredis.Redis.from_url(redis_server.url)
    try:
        store = SessionStore(counted)
        many = [{"role": "user", "content": f"m{n}"} for n in range(300)]
        info = await store.create(OWNER, messages=many)
        await store.load(info.id, OWNER)  # connect and cache the script first
        await store.append_turn(info.id, OWNER, turn(0), expected_version=0)

        await observer.config_resetstat()
        before = _CountingConnection.writes
        loaded, messages = await store.load(info.id, OWNER)
        assert _CountingConnection.writes - before == 1
        assert len(messages) == 302 and loaded.message_count == 302
        stats = await observer.info("commandstats")
        assert stats["cmdstat_lrange"]["calls"] == 1  # not one read per message

        before = _CountingConnection.writes
        await store.append_turn(info.id, OWNER, [*turn(1), *turn(2), *turn(3)], expected_version=1)
        assert _CountingConnection.writes - before == 1
        stats = await observer.info("commandstats")
        assert stats["cmdstat_rpush"]["calls"] == 1
    finally:
        await counted.aclose()
        await pool.aclose()
        await observer.aclose()


async def test_works_with_a_decoding_client(redis_server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        store = SessionStore(redis, SessionSettings(key_prefix="other"))
        info = await store.create(OWNER, title="τ", messages=history())
        info = await store.append_turn(info.id, OWNER, turn(1), expected_version=0)
        assert (await store.load(info.id, OWNER))[1] == [*history(), *turn(1)]
        assert [s.id for s in (await store.list(OWNER))[0]] == [info.id]
        assert all(str(key).startswith("other:") for key in await redis.keys("*"))
        await store.delete(info.id, OWNER)
        assert await redis.keys("*") == []
    finally:
        await redis.aclose()


def test_settings_come_from_cascade_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_SESSION_TTL_DAYS", "7")
    monkeypatch.setenv("CASCADE_TURN_LOCK_WAIT", "0.5")
    settings = load_session_settings()
    assert settings.session_ttl_days == 7 and settings.session_ttl_ms == 7 * DAY_MS
    assert settings.turn_lock_wait == 0.5 and settings.key_prefix == "cascade"
    monkeypatch.setenv("CASCADE_SESSION_TTL_DAYS", "0")
    with pytest.raises(ConfigError, match="CASCADE_SESSION_TTL_DAYS"):
        load_session_settings()


def test_stored_messages_are_orjson_documents() -> None:
    # the list holds what orjson makes of a message, so any JSON reader can export it
    assert orjson.loads(orjson.dumps(history()[1])) == history()[1]


async def _wait_until_free(client: aioredis.Redis, key: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while await client.exists(key):
        assert time.monotonic() < deadline, "the lock was not released"
        await asyncio.sleep(0.05)


async def test_a_release_that_fails_while_redis_is_down_happens_once_it_is_back(
    own_redis_server: RedisServer,
) -> None:
    client = redis_client(own_redis_server.url)
    try:
        # a long lease: only the late release can free the lock within the bound below
        store = SessionStore(client, SessionSettings(turn_lock_ttl=30.0, turn_lock_wait=0.0))
        session = await store.create(OWNER)
        lock = store.turn_lock(session.id)
        await lock.__aenter__()
        own_redis_server.kill()  # the lock is in the AOF
        await lock.__aexit__(None, None, None)  # cannot reach Redis: no error, retried later
        own_redis_server.start()
        await _wait_until_free(client, store.keys.lock(session.id), 3.0)
    finally:
        await settle_releases(2.0)
        await client.aclose()


async def test_an_acquire_cut_by_a_frozen_redis_leaves_no_lock_behind(
    own_redis_server: RedisServer,
) -> None:
    client = redis_client(own_redis_server.url, RedisSettings(redis_socket_timeout=0.3))
    try:
        store = SessionStore(client, SessionSettings(turn_lock_ttl=30.0, turn_lock_wait=2.0))
        session = await store.create(OWNER)
        own_redis_server.pause()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            async with store.turn_lock(session.id):
                pass
        assert time.monotonic() - started < 1.0  # one socket timeout, no retries of it
        own_redis_server.resume()  # the SET that timed out may still run now
        started = time.monotonic()
        async with store.turn_lock(session.id):
            assert time.monotonic() - started < 2.0
    finally:
        await settle_releases(2.0)  # the cut acquire's background release, before the close
        assert not _cleanups
        await client.aclose()
