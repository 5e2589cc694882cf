"""The session store's operations for conversations, against a real redis-server: `conv_` ids,
metadata, and in-place history edits (owner-checked, versioned, all or nothing)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.errors import ConflictError, NotFoundError, UnprocessableError
from app.sessions import SessionStore
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


def messages(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"m{i}"} for i in range(n)]


async def test_a_conv_id_is_a_session_id_with_metadata(store: SessionStore) -> None:
    info = await store.create(OWNER, messages=messages(2), metadata={"a": "1"}, id_prefix="conv")
    assert info.id.startswith("conv_") and len(info.id) == 5 + 24
    loaded, history = await store.load(info.id, OWNER)
    assert loaded.metadata == {"a": "1"} and history == messages(2)
    plain = await store.create(OWNER)
    assert plain.id.startswith("sess_") and (await store.get_info(plain.id, OWNER)).metadata == {}
    page, _ = await store.list(OWNER)
    assert {s.id for s in page} == {info.id, plain.id}


async def test_set_metadata_replaces_it_without_a_new_version(
    store: SessionStore, client: aioredis.Redis
) -> None:
    info = await store.create(OWNER, metadata={"a": "1", "b": "2"}, id_prefix="conv")
    for key in store.keys.session_keys(info.id)[:2]:
        await client.pexpire(key, 5_000)
    updated = await store.set_metadata(info.id, OWNER, {"c": "3"})
    assert updated.metadata == {"c": "3"} and updated.version == info.version
    assert updated.updated_at >= info.updated_at
    assert await client.pttl(store.keys.info(info.id)) > 29 * DAY_MS
    assert (await store.get_info(info.id, OWNER)).metadata == {"c": "3"}
    cleared = await store.set_metadata(info.id, OWNER, {})
    assert cleared.metadata == {}
    with pytest.raises(NotFoundError):
        await store.set_metadata(info.id, OTHER, {"x": "y"})
    with pytest.raises(NotFoundError):
        await store.set_metadata("conv_" + "0" * 24, OWNER, {"x": "y"})
    assert (await store.get_info(info.id, OWNER)).metadata == {}


async def test_edit_messages_replaces_and_removes_at_once(store: SessionStore) -> None:
    info = await store.create(OWNER, messages=messages(5))
    edited = await store.edit_messages(
        info.id,
        OWNER,
        expected_version=0,
        replace={1: {"role": "user", "content": "new 1"}},
        remove=[0, 3],
    )
    assert edited.version == 1 and edited.message_count == 3
    _, history = await store.load(info.id, OWNER)
    assert [m["content"] for m in history] == ["new 1", "m2", "m4"]
    # a turn that read the old history cannot commit over the edit
    with pytest.raises(ConflictError):
        await store.append_turn(info.id, OWNER, messages(1), expected_version=0)


async def test_edit_messages_is_versioned_owner_checked_and_all_or_nothing(
    store: SessionStore,
) -> None:
    info = await store.create(OWNER, messages=messages(3))
    await store.append_turn(info.id, OWNER, messages(1), expected_version=0)
    with pytest.raises(ConflictError):
        await store.edit_messages(info.id, OWNER, expected_version=0, remove=[0])
    with pytest.raises(NotFoundError):
        await store.edit_messages(info.id, OTHER, expected_version=1, remove=[0])
    with pytest.raises(UnprocessableError):
        # one index out of range: not even the valid replacement is written
        await store.edit_messages(
            info.id,
            OWNER,
            expected_version=1,
            replace={0: {"role": "user", "content": "changed"}},
            remove=[4],
        )
    unchanged, history = await store.load(info.id, OWNER)
    assert unchanged.version == 1 and history == [*messages(3), *messages(1)]


async def test_removing_every_message_leaves_an_empty_session_that_still_takes_turns(
    store: SessionStore, client: aioredis.Redis
) -> None:
    info = await store.create(OWNER, messages=messages(2))
    await store.edit_messages(info.id, OWNER, expected_version=0, remove=[0, 1])
    emptied, history = await store.load(info.id, OWNER)
    assert history == [] and emptied.message_count == 0
    await store.append_turn(info.id, OWNER, messages(1), expected_version=1)
    assert (await store.load(info.id, OWNER))[1] == messages(1)
    assert await client.pttl(store.keys.messages(info.id)) > 29 * DAY_MS
