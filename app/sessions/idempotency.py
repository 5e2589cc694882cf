"""Idempotency-Key records: a retried POST gets the first attempt's result instead of a rerun.

One Redis hash per (session, owner, key): `state` (`pending` while the first attempt runs, then
`done`), `body_hash` (what the key was first used for) and, once done, `result` (orjson). A
pending record expires after `idempotency_pending_ttl` so a crashed attempt cannot block its key for
long; a done record lives `idempotency_ttl_hours`.

A result is derived from its session, so it never outlives it. A record for a turn on a session
is named under that session's hash tag (`Keys.idempotency(owner, key, session_id)`), so it is a
record per (session, owner, key) and shares the session's Redis Cluster slot: `complete` links it
to the session (a per-session set, emptied by `SessionStore.delete` in the same script that
deletes the session); `begin` drops a done record whose session is gone and lets the request run
afresh (it then meets the missing session: 404). A turn whose session was deleted while it ran
stores no result at all. Every call of one request passes the same `session_id` (None: a record
of the owner's alone, linked to nothing).

The caller's protocol:

    cached = await store.begin(owner, key, request_hash(body), session_id=session_id)
    if cached is not None:
        return cached
    try:
        result = await run_the_turn()
    except BaseException:
        await store.abandon(owner, key, session_id=session_id)
        raise
    await store.complete(owner, key, result, session_id=session_id)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.errors import ConflictError, UnprocessableError
from app.sessions.config import SessionSettings
from app.sessions.keys import Keys

# KEYS = record [, session info]; ARGV = body hash, pending ttl, owner. A done record of a
# session that is gone is dropped.
_BEGIN = """
if #KEYS == 2 and redis.call('HEXISTS', KEYS[1], 'session') == 1
   and redis.call('HGET', KEYS[2], 'owner') ~= ARGV[3] then
  redis.call('DEL', KEYS[1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'body_hash', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {}
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS = record [, session info, session's idempotency links]; ARGV = result, ttl, owner.
# Returns 1 when stored, 0 when the key was not pending, -1 when the session is gone.
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
if #KEYS == 3 then
  if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[3] then
    redis.call('DEL', KEYS[1])
    return -1
  end
  redis.call('HSET', KEYS[1], 'session', KEYS[2])
  redis.call('SADD', KEYS[3], KEYS[1])
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_ABANDON = """
if redis.call('HGET', KEYS[1], 'state') == 'pending' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

KEY_MAX_LENGTH = 255

# Seconds between looks at a pending record while waiting for it.
_POLL = 0.05


def request_hash(body: Any) -> str:
    """A stable digest of a JSON-able request body (key order does not matter)."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class IdempotencyStore:
    """Records of Idempotency-Keys, per owner (two owners may use the same key).

    `clock` (monotonic seconds) times `begin`'s wait for a running first attempt; the records'
    expiry is timed by Redis.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: SessionSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.settings = settings or SessionSettings()
        self.keys = Keys(self.settings.key_prefix)
        self._begin = redis.register_script(_BEGIN)
        self._complete = redis.register_script(_COMPLETE)
        self._abandon = redis.register_script(_ABANDON)

    async def begin(
        self, owner: str, key: str, body_hash: str, *, session_id: str | None = None
    ) -> dict[str, Any] | None:
        """Claim `key` for a request on `session_id` whose body hashes to `body_hash`.

        Returns None when the caller now owns the key and must run the request (then call
        `complete` or `abandon`), or the first attempt's stored result. Raises
        `UnprocessableError` if the key was used with another body, and `ConflictError` if the
        first attempt is still running after waiting `idempotency_wait` seconds for it.
        """
        if not key or len(key) > KEY_MAX_LENGTH:
            raise UnprocessableError(
                f"Idempotency-Key must be 1 to {KEY_MAX_LENGTH} characters",
                param="Idempotency-Key",
            )
        name = self.keys.idempotency(owner, key, session_id)
        keys = [name] if session_id is None else [name, self.keys.info(session_id)]
        deadline = self._clock() + self.settings.idempotency_wait
        pending_ms = max(1, int(self.settings.idempotency_pending_ttl * 1000))
        while True:
            reply: list[Any] = await self._begin(keys=keys, args=[body_hash, pending_ms, owner])
            if not reply:
                return None
            it = iter(reply)
            record = {_text(k): v for k, v in zip(it, it, strict=True)}
            if _text(record["body_hash"]) != body_hash:
                raise UnprocessableError(
                    "this Idempotency-Key was already used with a different request body",
                    code="idempotency_key_reused",
                    param="Idempotency-Key",
                )
            if _text(record["state"]) == "done":
                result: dict[str, Any] = orjson.loads(record["result"])
                return result
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ConflictError(
                    "a request with this Idempotency-Key is still running; retry later",
                    code="idempotency_key_in_use",
                )
            await asyncio.sleep(min(_POLL, remaining))

    async def complete(
        self, owner: str, key: str, result: dict[str, Any], *, session_id: str | None = None
    ) -> None:
        """Store the result of the request on `session_id` that owns `key`; later `begin`s
        (with the same `session_id`) return it.

        The result belongs to that session: deleting the session deletes the result, and if the
        session is already gone (or another owner's) nothing is stored and the key is released.
        A key that is no longer pending (its reservation expired, or it was completed) is left
        as it is.
        """
        keys = [self.keys.idempotency(owner, key, session_id)]
        if session_id is not None:
            keys += [self.keys.info(session_id), self.keys.idempotency_links(session_id)]
        await self._complete(
            keys=keys, args=[orjson.dumps(result), self.settings.idempotency_ttl_ms, owner]
        )

    async def abandon(self, owner: str, key: str, *, session_id: str | None = None) -> None:
        """The request on `session_id` that owns `key` failed: release the key so a retry runs
        again."""
        await self._abandon(keys=[self.keys.idempotency(owner, key, session_id)], args=[])
