"""`SessionTurn`: the hold a turn has on its session is given back on every path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.errors import ConflictError, NotFoundError
from app.sessions.config import SessionSettings
from app.sessions.idempotency import IdempotencyStore
from app.sessions.store import SessionStore
from app.sessions.turn import SessionTurn
from tests.redis_server import RedisServer

USER = [{"role": "user", "content": "hi"}]
ANSWER = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_server.url)
    yield redis
    await redis.aclose()


@pytest.fixture
def stores(client: aioredis.Redis) -> tuple[SessionStore, IdempotencyStore]:
    settings = SessionSettings(turn_lock_wait=0.2)
    return SessionStore(client, settings), IdempotencyStore(client, settings)


def turn(stores: tuple[SessionStore, IdempotencyStore], session_id: str, **kw: str) -> SessionTurn:
    return SessionTurn(*stores, owner="o", session_id=session_id, **kw)


async def test_a_second_turn_waits_then_gets_409_while_one_is_held(
    stores: tuple[SessionStore, IdempotencyStore],
) -> None:
    info = await stores[0].create("o", messages=USER)
    async with turn(stores, info.id):
        with pytest.raises(ConflictError):
            async with turn(stores, info.id):
                pass
    async with turn(stores, info.id) as again:  # released on leaving
        assert again.history == USER


@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_a_failed_or_cancelled_turn_releases_its_lock_and_key(
    stores: tuple[SessionStore, IdempotencyStore], how: str
) -> None:
    info = await stores[0].create("o", messages=USER)
    entered = asyncio.Event()

    async def body() -> None:
        async with turn(stores, info.id, idempotency_key="k1", body_hash="h"):
            entered.set()
            if how == "error":
                raise RuntimeError("the run failed")
            await asyncio.sleep(30)

    task = asyncio.create_task(body())
    await entered.wait()
    if how == "cancel":
        task.cancel()
    with pytest.raises(RuntimeError if how == "error" else asyncio.CancelledError):
        await task
    # The lock is free and the key was given up: the same request runs afresh at once.
    async with turn(stores, info.id, idempotency_key="k1", body_hash="h") as retry:
        assert retry.replay is None
        assert await retry.commit(ANSWER[1:]) == info.id
        await retry.record({"answer": 1})
    async with turn(stores, info.id, idempotency_key="k1", body_hash="h") as replayed:
        assert replayed.replay == {"answer": 1}
        assert replayed.history == []  # a replay loads and locks nothing


async def test_a_strangers_turn_is_404_and_holds_nothing(
    stores: tuple[SessionStore, IdempotencyStore],
) -> None:
    info = await stores[0].create("o", messages=USER)
    with pytest.raises(NotFoundError):
        async with SessionTurn(*stores, owner="stranger", session_id=info.id):
            pass
    async with turn(stores, info.id) as mine:
        assert mine.info is not None and mine.info.id == info.id


async def test_a_stateless_turn_creates_a_session_only_when_asked(
    stores: tuple[SessionStore, IdempotencyStore],
) -> None:
    from app.sessions.models import SessionOptions

    async with SessionTurn(*stores, owner="o", session_id=None) as plain:
        assert await plain.commit(ANSWER) is None
    async with SessionTurn(*stores, owner="o", session_id=None) as stored:
        session_id = await stored.commit(ANSWER, create=SessionOptions(), title="hi")
    assert session_id is not None
    _, history = await stores[0].load(session_id, "o")
    assert history == ANSWER
