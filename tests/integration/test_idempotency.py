"""Idempotency-Key records against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.errors import ConflictError, UnprocessableError
from app.sessions import IdempotencyStore, SessionSettings, SessionStore, request_hash
from tests.clock import ManualClock
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

OWNER = "key_alice"
RESULT = {"id": "chatcmpl-1", "choices": [{"message": {"content": "hi", "reasoning_content": "r"}}]}


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        yield redis
    finally:
        await redis.aclose()


def idem_store(client: aioredis.Redis, **settings: float) -> IdempotencyStore:
    return IdempotencyStore(client, SessionSettings.model_validate(settings))


def test_request_hash_ignores_key_order_but_not_values() -> None:
    assert request_hash({"a": 1, "b": [1, 2]}) == request_hash({"b": [1, 2], "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})
    assert request_hash({"b": [1, 2]}) != request_hash({"b": [2, 1]})


async def test_same_key_and_body_returns_the_first_result(client: aioredis.Redis) -> None:
    store = IdempotencyStore(client)
    body = request_hash({"session_id": "sess_x", "input": "hi"})
    assert await store.begin(OWNER, "key-1", body) is None  # first: run the turn
    await store.complete(OWNER, "key-1", RESULT)
    for _ in range(2):
        assert await store.begin(OWNER, "key-1", body) == RESULT  # retries: no second run


async def test_same_key_with_another_body_is_422(client: aioredis.Redis) -> None:
    store = IdempotencyStore(client)
    assert await store.begin(OWNER, "key-1", "hash-a") is None
    with pytest.raises(UnprocessableError) as caught:  # while the first still runs
        await store.begin(OWNER, "key-1", "hash-b")
    assert caught.value.status == 422
    await store.complete(OWNER, "key-1", RESULT)
    with pytest.raises(UnprocessableError):  # and after it finished
        await store.begin(OWNER, "key-1", "hash-b")


async def test_a_retry_while_the_first_runs_waits_then_gets_409(client: aioredis.Redis) -> None:
    clock = ManualClock()
    store = IdempotencyStore(client, SessionSettings(idempotency_wait=30.0), clock=clock)
    assert await store.begin(OWNER, "key-1", "h") is None
    retry = asyncio.create_task(store.begin(OWNER, "key-1", "h"))
    await asyncio.sleep(0.1)  # it looks at the pending record a few times
    assert not retry.done()
    clock.advance(29.9)
    await asyncio.sleep(0.1)
    assert not retry.done()  # still within its wait
    clock.advance(0.2)
    with pytest.raises(ConflictError) as caught:
        await asyncio.wait_for(retry, 1.5)  # gives up at its next look
    assert caught.value.status == 409


async def test_a_retry_while_the_first_runs_gets_its_result_when_it_ends(
    client: aioredis.Redis,
) -> None:
    store = IdempotencyStore(client, SessionSettings(idempotency_wait=30.0), clock=ManualClock())
    assert await store.begin(OWNER, "key-1", "h") is None
    retry = asyncio.create_task(store.begin(OWNER, "key-1", "h"))
    await asyncio.sleep(0.1)
    assert not retry.done()  # it waits for the first attempt
    await store.complete(OWNER, "key-1", RESULT)
    assert await asyncio.wait_for(retry, 1.5) == RESULT


async def test_concurrent_first_requests_run_the_turn_once(client: aioredis.Redis) -> None:
    store = idem_store(client, idempotency_wait=2.0)
    runs = 0

    async def request() -> dict[str, object]:
        nonlocal runs
        cached = await store.begin(OWNER, "key-1", "h")
        if cached is not None:
            return cached
        runs += 1
        await asyncio.sleep(0.1)
        result: dict[str, object] = {"run": runs}
        await store.complete(OWNER, "key-1", result)
        return result

    results = await asyncio.gather(*(request() for _ in range(10)))
    assert runs == 1
    assert results == [{"run": 1}] * 10


async def test_abandon_allows_a_retry_to_run(client: aioredis.Redis) -> None:
    store = idem_store(client, idempotency_wait=0.0)
    assert await store.begin(OWNER, "key-1", "h") is None
    await store.abandon(OWNER, "key-1")  # the first attempt failed
    assert await store.begin(OWNER, "key-1", "h") is None  # so the retry runs
    await store.complete(OWNER, "key-1", RESULT)
    await store.abandon(OWNER, "key-1")  # a finished result is never dropped by abandon
    assert await store.begin(OWNER, "key-1", "h") == RESULT


async def test_keys_are_per_owner(client: aioredis.Redis) -> None:
    store = IdempotencyStore(client)
    assert await store.begin(OWNER, "shared", "h") is None
    await store.complete(OWNER, "shared", RESULT)
    assert await store.begin("key_bob", "shared", "other-body") is None


async def test_records_expire(client: aioredis.Redis) -> None:
    store = idem_store(client, idempotency_pending_ttl=60.0, idempotency_wait=0.0)
    assert await store.begin(OWNER, "crashed", "h") is None
    with pytest.raises(ConflictError):
        await store.begin(OWNER, "crashed", "h")
    name = store.keys.idempotency(OWNER, "crashed")
    assert 59_000 < await client.pttl(name) <= 60_000  # the reservation lasts the pending ttl
    await client.pexpire(name, 1)  # the first attempt's process died: its reservation lapses
    await asyncio.sleep(0.01)
    assert await store.begin(OWNER, "crashed", "h") is None

    await store.complete(OWNER, "crashed", RESULT)
    assert 23 * 3_600_000 < await client.pttl(name) <= 24 * 3_600_000
    assert b"crashed" not in name.encode() and "crashed" not in str(await client.keys("*"))


async def test_result_is_linked_only_to_the_owners_session(client: aioredis.Redis) -> None:
    sessions = SessionStore(client)
    session = await sessions.create(OWNER)
    store = IdempotencyStore(client)
    assert await store.begin("key_bob", "k", "h", session_id=session.id) is None
    await store.complete("key_bob", "k", RESULT, session_id=session.id)
    assert await client.exists(sessions.keys.idempotency_links(session.id)) == 0
    assert await store.begin(OWNER, "k", "h", session_id=session.id) is None
    await store.complete(OWNER, "k", RESULT, session_id=session.id)
    linked = await client.smembers(sessions.keys.idempotency_links(session.id))
    assert linked == {store.keys.idempotency(OWNER, "k", session.id).encode()}


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_unusable_keys_are_422(client: aioredis.Redis, key: str) -> None:
    with pytest.raises(UnprocessableError):
        await IdempotencyStore(client).begin(OWNER, key, "h")


async def test_a_result_goes_with_its_session(client: aioredis.Redis) -> None:
    sessions = SessionStore(client)
    session = await sessions.create(OWNER)
    store = IdempotencyStore(client)
    assert await store.begin(OWNER, "k", "h", session_id=session.id) is None
    await store.complete(OWNER, "k", RESULT, session_id=session.id)
    linked = await client.smembers(sessions.keys.idempotency_links(session.id))
    assert linked == {store.keys.idempotency(OWNER, "k", session.id).encode()}
    await sessions.delete(session.id, OWNER)
    assert await client.exists(store.keys.idempotency(OWNER, "k", session.id)) == 0
    assert await store.begin(OWNER, "k", "h", session_id=session.id) is None  # runs afresh


async def test_a_turn_whose_session_was_deleted_meanwhile_stores_no_result(
    client: aioredis.Redis,
) -> None:
    sessions = SessionStore(client)
    session = await sessions.create(OWNER)
    store = IdempotencyStore(client)
    assert await store.begin(OWNER, "k", "h", session_id=session.id) is None
    await sessions.delete(session.id, OWNER)  # while the turn runs
    await store.complete(OWNER, "k", RESULT, session_id=session.id)
    assert await client.exists(store.keys.idempotency(OWNER, "k", session.id)) == 0
    assert await store.begin(OWNER, "k", "h", session_id=session.id) is None


async def test_a_result_of_a_vanished_session_is_not_replayed(client: aioredis.Redis) -> None:
    sessions = SessionStore(client)
    session = await sessions.create(OWNER)
    store = IdempotencyStore(client)
    assert await store.begin(OWNER, "k", "h", session_id=session.id) is None
    await store.complete(OWNER, "k", RESULT, session_id=session.id)
    await client.delete(*sessions.keys.session_keys(session.id))  # expired, or deleted by hand
    assert (
        await store.begin(OWNER, "k", "h", session_id=session.id) is None
    )  # the caller now meets the missing session
    assert await client.hget(store.keys.idempotency(OWNER, "k", session.id), "state") == b"pending"


async def test_records_are_per_session(client: aioredis.Redis) -> None:
    sessions = SessionStore(client)
    first, second = await sessions.create(OWNER), await sessions.create(OWNER)
    store = IdempotencyStore(client)
    assert await store.begin(OWNER, "k", "h", session_id=first.id) is None
    await store.complete(OWNER, "k", RESULT, session_id=first.id)
    # The same key on another session names another record: that turn runs.
    assert await store.begin(OWNER, "k", "other", session_id=second.id) is None
    assert await store.begin(OWNER, "k", "h", session_id=first.id) == RESULT
    record = store.keys.idempotency(OWNER, "k", first.id)
    assert record.split("{")[1].split("}")[0] == first.id  # in the session's cluster slot
