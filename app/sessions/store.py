"""Sessions in Redis: metadata, an append-only message list, an owner index, a sliding TTL.

Layout (see `keys.Keys`): a hash of metadata, a list of orjson-encoded messages, a set linking
idempotency records to the session, and per owner a sorted set of session ids by `updated_at`.

Every operation on one session is one Lua script, so it is atomic and one round trip whatever
the number of messages; the owner check happens inside the script, and another owner's session
answers exactly like a missing one. On a single Redis the same script also updates the owner
index when it succeeds (its key is passed last). On a Redis Cluster a script touches the
session's keys only (one hash tag, one slot) and the index, in a slot of its own, is updated by
a second command after the script succeeded. The index is a listing aid, never the authority:
on a cluster a session whose index update failed (the call raised after the script) is missing
from `list` until its next write; writes move it to the top (`ZADD GT`: never back in time, and
an id missing from the index is added); `delete` removes it after the session is gone (if that
fails, the next `list` drops it: it skips and removes ids without a session of that owner).
Reads and writes refresh the TTL of the session's keys and of the index, so the index does not
expire before a session it lists (on a cluster: unless that refresh failed, Redis away between
the two commands).

Turns are versioned: `append_turn` commits only if the session is still at `expected_version`,
so two turns that read the same history cannot both commit. `turn_lock` serialises whole turns
(read history → run the model → append) so the second one waits instead of failing late.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from app.errors import ConflictError, NotFoundError, UnprocessableError
from app.sessions.config import SessionSettings
from app.sessions.keys import SESSION_ID_RE, Keys
from app.sessions.lock import LockScripts, RedisLock
from app.sessions.models import SessionInfo, SessionOptions

# Lua scripts. Every one takes KEYS = info, messages, idempotency links (one session's slot).
# RPUSH goes in slices so `unpack` stays far below Lua's stack limit for any history size.
# A script that succeeds also updates the owner index when its key is passed as the last KEYS
# entry (a single Redis only: on a cluster it is in another slot, see `_touch_index`).

# `index(key, member, score, ttl)`: the session moved up to `score` (never down) unless `member`
# is '', then the index's TTL renewed. Registered in front of the scripts that call it.
_INDEX_FN = """
local function index(key, member, score, ttl)
  if not key then return end
  if member ~= '' then redis.call('ZADD', key, 'GT', score, member) end
  redis.call('PEXPIRE', key, ttl)
end
"""

# ARGV = session id, now, ttl, write token, the fields (JSON), then the messages.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'last_write') == ARGV[4] then
    index(KEYS[4], ARGV[1], ARGV[2], ARGV[3])
    return 1
  end
  return 0
end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[5])))
for i = 6, #ARGV, 100 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 99, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
index(KEYS[4], ARGV[1], ARGV[2], ARGV[3])
return 1
"""

_READ = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing'} end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
index(KEYS[4], '', 0, ARGV[2])
local info = redis.call('HGETALL', KEYS[1])
local count = redis.call('LLEN', KEYS[2])
if ARGV[3] == '1' then
  return {'ok', info, count, redis.call('LRANGE', KEYS[2], 0, -1)}
end
return {'ok', info, count}
"""

# A turn's start: the turn lock taken as lock.py's acquire script takes it, then the session
# read as `_READ` reads it (with messages). KEYS = lock, then `_READ`'s three (one slot: the
# lock is named under the session's hash tag), then the owner index or nothing.
_LOCK_READ = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'locked'} end
end
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[3] then return {'missing'} end
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
index(KEYS[5], '', 0, ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[2]), redis.call('LLEN', KEYS[3]),
        redis.call('LRANGE', KEYS[3], 0, -1)}
"""

# KEYS[4] is the session's turn lock and ARGV[10] a holder's token or '': a committed append
# releases the lock if that token holds it (lock.py's release), in the same step. KEYS[5]: the
# owner index or nothing.
_APPEND = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing'} end
local version = tonumber(redis.call('HGET', KEYS[1], 'version'))
local expected = tonumber(ARGV[2])
local function release()
  if ARGV[10] ~= '' and redis.call('GET', KEYS[4]) == ARGV[10] then redis.call('DEL', KEYS[4]) end
end
if version ~= expected then
  if version == expected + 1 and redis.call('HGET', KEYS[1], 'last_write') == ARGV[6] then
    -- this very turn, committed already: a client retry after a lost reply
    release()
    index(KEYS[5], ARGV[5], ARGV[3], ARGV[4])
    return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LLEN', KEYS[2])}
  end
  return {'conflict', version}
end
for i = 11, #ARGV, 100 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 99, #ARGV)))
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'last_write', ARGV[6])
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'title', ARGV[8]) end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'options', ARGV[9]) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
release()
index(KEYS[5], ARGV[5], ARGV[3], ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LLEN', KEYS[2])}
"""

# Metadata is not history: it neither bumps `version` nor conflicts with a running turn.
_SET_METADATA = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing'} end
redis.call('HSET', KEYS[1], 'metadata', ARGV[2], 'updated_at', ARGV[3])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
index(KEYS[4], ARGV[5], ARGV[3], ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LLEN', KEYS[2])}
"""

# ARGV = owner, expected version, now, ttl, session id, write token, tombstone, number of
# replacements R, then R (index, message) pairs, then the indices to remove. Every index is
# checked before anything is written (a script is not rolled back on error); removed messages
# are overwritten with the tombstone, then the tombstones removed in one LREM, so the indices
# of the others hold throughout.
_EDIT = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing'} end
local version = tonumber(redis.call('HGET', KEYS[1], 'version'))
if version ~= tonumber(ARGV[2]) then return {'conflict', version} end
local count = redis.call('LLEN', KEYS[2])
local replaced = tonumber(ARGV[8])
local first_removed = 9 + 2 * replaced
local function outside(index) index = tonumber(index); return index < 0 or index >= count end
for i = 9, first_removed - 1, 2 do if outside(ARGV[i]) then return {'range', count} end end
for i = first_removed, #ARGV do if outside(ARGV[i]) then return {'range', count} end end
for i = 9, first_removed - 1, 2 do
  redis.call('LSET', KEYS[2], tonumber(ARGV[i]), ARGV[i + 1])
end
for i = first_removed, #ARGV do
  redis.call('LSET', KEYS[2], tonumber(ARGV[i]), ARGV[7])
end
if #ARGV >= first_removed then redis.call('LREM', KEYS[2], 0, ARGV[7]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'last_write', ARGV[6])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
index(KEYS[4], ARGV[5], ARGV[3], ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('LLEN', KEYS[2])}
"""

# The linked idempotency records go in the same script: a replay never finds a result of a
# deleted session. Their names come from the set, not KEYS; they carry the session's hash tag
# (`Keys.idempotency`), so on a cluster they are in this script's slot.
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'missing'} end
for _, record in ipairs(redis.call('SMEMBERS', KEYS[3])) do redis.call('DEL', record) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {'ok'}
"""

# KEYS = owner index. A page of ids after the cursor id, newest first; nil if the cursor is not
# in the index.
_PAGE = """
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  if not rank then return false end
  start = rank + 1
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
"""

LIST_LIMIT_MAX = 100

Messages = list[dict[str, Any]]

IdPrefix = Literal["sess", "conv"]


def new_session_id(prefix: IdPrefix = "sess") -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes | str]) -> dict[str, str]:
    if flat and isinstance(flat[0], bytes):  # a client without decode_responses (cascade's)
        decoded = iter(map(bytes.decode, flat))  # type: ignore[arg-type]
        return dict(zip(decoded, decoded, strict=True))
    it = iter(flat)
    return {_text(k): _text(v) for k, v in zip(it, it, strict=True)}


def _info(fields: dict[str, str], message_count: int) -> SessionInfo:
    return SessionInfo(
        id=fields["id"],
        owner=fields["owner"],
        title=fields.get("title"),
        created_at=float(fields["created_at"]),
        updated_at=float(fields["updated_at"]),
        options=SessionOptions.model_validate_json(fields["options"]),
        message_count=message_count,
        version=int(fields["version"]),
        forked_from=fields.get("forked_from"),
        metadata=orjson.loads(fields["metadata"]) if "metadata" in fields else {},
    )


def _not_found(session_id: str) -> NotFoundError:
    return NotFoundError(f"no session {session_id!r}", code="session_not_found")


class SessionStore:
    """Sessions of many owners in one Redis; see the module docstring for the guarantees.

    Works with a client in either `decode_responses` mode. Every method that names a session
    raises `NotFoundError` when it does not exist, has expired, or belongs to another owner.
    """

    def __init__(self, redis: aioredis.Redis, settings: SessionSettings | None = None) -> None:
        self._redis = redis
        self.settings = settings or SessionSettings()
        self.keys = Keys(self.settings.key_prefix)
        # On one Redis the scripts update the owner index themselves; a cluster keeps it in
        # another slot, so there it is a second command (`_touch_index`).
        self._inline_index = not isinstance(redis, RedisCluster)
        self._create = redis.register_script(_INDEX_FN + _CREATE)
        self._read = redis.register_script(_INDEX_FN + _READ)
        self._lock_read = redis.register_script(_INDEX_FN + _LOCK_READ)
        self._lock_scripts = LockScripts(redis)
        self._append = redis.register_script(_INDEX_FN + _APPEND)
        self._delete = redis.register_script(_DELETE)
        self._set_metadata = redis.register_script(_INDEX_FN + _SET_METADATA)
        self._edit = redis.register_script(_INDEX_FN + _EDIT)
        self._page = redis.register_script(_PAGE)

    def _session_keys(self, session_id: str) -> list[str]:
        return self.keys.session_keys(session_id)

    def _index_keys(self, owner: str) -> list[str]:
        """The owner index as a script's last key, on a single Redis; else none."""
        return [self.keys.owner_index(owner)] if self._inline_index else []

    def _keys_and_index(self, session_id: str, owner: str) -> list[str]:
        """A session script's KEYS: the session's own, then the owner index (`_index_keys`)."""
        return [*self._session_keys(session_id), *self._index_keys(owner)]

    async def _touch_index(self, owner: str, session_id: str | None, updated_at: float) -> None:
        """On a cluster, after a script succeeded: the owner index's TTL renewed and, for a
        write (`session_id`), the session moved up to `updated_at` (never down: `GT`). On a
        single Redis the script did it already: nothing to do."""
        if self._inline_index:
            return
        index = self.keys.owner_index(owner)
        async with self._redis.pipeline(transaction=False) as pipe:
            if session_id is not None:
                pipe.zadd(index, {session_id: updated_at}, gt=True)
            pipe.pexpire(index, self.settings.session_ttl_ms)
            await pipe.execute()

    async def create(
        self,
        owner: str,
        *,
        title: str | None = None,
        options: SessionOptions | None = None,
        messages: Sequence[dict[str, Any]] = (),
        metadata: Mapping[str, str] | None = None,
        id_prefix: IdPrefix = "sess",
    ) -> SessionInfo:
        """A new session of `owner`, holding `messages` (version 0), its id `id_prefix_…`."""
        return await self._create_session(
            owner,
            title,
            options or SessionOptions(),
            messages,
            metadata=dict(metadata or {}),
            id_prefix=id_prefix,
        )

    async def _create_session(
        self,
        owner: str,
        title: str | None,
        options: SessionOptions,
        messages: Sequence[dict[str, Any]],
        forked_from: str | None = None,
        metadata: dict[str, str] | None = None,
        id_prefix: IdPrefix = "sess",
    ) -> SessionInfo:
        now = time.time()
        token = secrets.token_hex(8)
        encoded = [orjson.dumps(message) for message in messages]
        options_json = options.model_dump_json()
        while True:
            session_id = new_session_id(id_prefix)
            fields: dict[str, str] = {
                "id": session_id,
                "owner": owner,
                "created_at": repr(now),
                "updated_at": repr(now),
                "options": options_json,
                "version": "0",
                "last_write": token,
            }
            if title is not None:
                fields["title"] = title
            if forked_from is not None:
                fields["forked_from"] = forked_from
            if metadata:
                fields["metadata"] = orjson.dumps(metadata).decode()
            flat = [item for pair in fields.items() for item in pair]
            created = await self._create(
                keys=self._keys_and_index(session_id, owner),
                args=[
                    session_id,
                    repr(now),
                    self.settings.session_ttl_ms,
                    token,
                    orjson.dumps(flat),
                    *encoded,
                ],
            )
            if created:  # 0 only on an id collision: draw another id
                break
        await self._touch_index(owner, session_id, now)
        return SessionInfo(
            id=session_id,
            owner=owner,
            title=title,
            created_at=now,
            updated_at=now,
            options=options,
            message_count=len(encoded),
            version=0,
            forked_from=forked_from,
            metadata=metadata or {},
        )

    async def _read_session(self, session_id: str, owner: str, *, with_messages: bool) -> list[Any]:
        if not SESSION_ID_RE.fullmatch(session_id):
            raise _not_found(session_id)
        reply: list[Any] = await self._read(
            keys=self._keys_and_index(session_id, owner),
            args=[owner, self.settings.session_ttl_ms, "1" if with_messages else "0"],
        )
        if _text(reply[0]) != "ok":
            raise _not_found(session_id)
        await self._touch_index(owner, None, 0.0)
        return reply

    async def load(self, session_id: str, owner: str) -> tuple[SessionInfo, list[dict[str, Any]]]:
        """Info and every message, oldest first, in one round trip; refreshes the TTL."""
        reply = await self._read_session(session_id, owner, with_messages=True)
        messages: list[dict[str, Any]] = [orjson.loads(raw) for raw in reply[3]]
        return _info(_pairs(reply[1]), int(reply[2])), messages

    async def get_info(self, session_id: str, owner: str) -> SessionInfo:
        """The session's info without its messages; refreshes the TTL."""
        reply = await self._read_session(session_id, owner, with_messages=False)
        return _info(_pairs(reply[1]), int(reply[2]))

    async def append_turn(
        self,
        session_id: str,
        owner: str,
        messages: Sequence[dict[str, Any]],
        *,
        expected_version: int,
        title: str | None = None,
        options: SessionOptions | None = None,
        turn_id: str | None = None,
        release: RedisLock | None = None,
    ) -> SessionInfo:
        """Append one turn's messages atomically: all of them or none.

        Commits only if the session is at `expected_version` (else `ConflictError`, nothing
        written); bumps `version` by one and sets `updated_at`; `title`/`options`, when given,
        replace the stored ones. Refreshes the TTL of every key of the session.

        A call repeated with the same `turn_id` right after it committed (a retry after a lost
        reply) returns the session as it is instead of a conflict, and appends nothing. Without
        one, a random id covers the client library's own retries of this call.

        `release`, this session's held turn lock, is released by the same step when the turn
        commits (one round trip, not two); otherwise it stays held.
        """
        if not SESSION_ID_RE.fullmatch(session_id):
            raise _not_found(session_id)
        now = time.time()
        token = release.token if release is not None else None
        reply: list[Any] = await self._append(
            keys=[
                *self._session_keys(session_id),
                self.keys.lock(session_id),
                *self._index_keys(owner),
            ],
            args=[
                owner,
                expected_version,
                repr(now),
                self.settings.session_ttl_ms,
                session_id,
                turn_id or secrets.token_hex(8),
                "1" if title is not None else "0",
                title or "",
                options.model_dump_json() if options is not None else "",
                token or "",
                *(orjson.dumps(message) for message in messages),
            ],
        )
        status = _text(reply[0])
        if status == "missing":
            raise _not_found(session_id)
        if status == "conflict":
            raise ConflictError(
                f"session {session_id!r} changed while this turn ran (version {int(reply[1])}, "
                f"expected {expected_version}); reload it and retry",
                code="session_version_conflict",
            )
        if release is not None and token is not None:
            release.released()  # the script let the lock go: whatever follows, it is gone
        await self._touch_index(owner, session_id, now)
        return _info(_pairs(reply[1]), int(reply[2]))

    async def set_metadata(
        self, session_id: str, owner: str, metadata: Mapping[str, str]
    ) -> SessionInfo:
        """Replace the session's metadata (`{}` clears it) and set `updated_at`; refreshes the
        TTL. Not a turn: `version` stays, so a turn running meanwhile still commits."""
        if not SESSION_ID_RE.fullmatch(session_id):
            raise _not_found(session_id)
        now = time.time()
        reply: list[Any] = await self._set_metadata(
            keys=self._keys_and_index(session_id, owner),
            args=[
                owner,
                orjson.dumps(dict(metadata)),
                repr(now),
                self.settings.session_ttl_ms,
                session_id,
            ],
        )
        if _text(reply[0]) != "ok":
            raise _not_found(session_id)
        await self._touch_index(owner, session_id, now)
        return _info(_pairs(reply[1]), int(reply[2]))

    async def edit_messages(
        self,
        session_id: str,
        owner: str,
        *,
        expected_version: int,
        replace: Mapping[int, dict[str, Any]] | None = None,
        remove: Collection[int] = (),
    ) -> SessionInfo:
        """Rewrite history in place, atomically: the messages at the indices of `replace` are
        replaced, those at `remove` taken out (indices as of `expected_version`, oldest = 0).

        Like a turn, commits only at `expected_version` (else `ConflictError`, nothing
        written) and bumps `version`, so a turn that read the old history cannot commit over
        it. An index outside the history is an `UnprocessableError`, nothing written.
        """
        if not SESSION_ID_RE.fullmatch(session_id):
            raise _not_found(session_id)
        replace = replace or {}
        if set(replace) & set(remove):
            raise ValueError("a message is either replaced or removed")
        now = time.time()
        pairs = [arg for index, m in replace.items() for arg in (index, orjson.dumps(m))]
        reply: list[Any] = await self._edit(
            keys=self._keys_and_index(session_id, owner),
            args=[
                owner,
                expected_version,
                repr(now),
                self.settings.session_ttl_ms,
                session_id,
                secrets.token_hex(8),
                # Never a message: stored messages are JSON objects.
                "removed:" + secrets.token_hex(16),
                len(replace),
                *pairs,
                *remove,
            ],
        )
        status = _text(reply[0])
        if status == "missing":
            raise _not_found(session_id)
        if status == "conflict":
            raise ConflictError(
                f"session {session_id!r} changed meanwhile (version {int(reply[1])}, expected "
                f"{expected_version}); reload it and retry",
                code="session_version_conflict",
            )
        if status == "range":
            raise UnprocessableError(f"no such message: the session holds {int(reply[1])}")
        await self._touch_index(owner, session_id, now)
        return _info(_pairs(reply[1]), int(reply[2]))

    async def list(
        self, owner: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[SessionInfo], bool]:
        """The owner's sessions, most recently updated first, `limit` per page.

        `after` is the last id of the previous page. Returns the page and whether more follow.
        Expired sessions are skipped and dropped from the index.
        """
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise UnprocessableError(f"limit must be between 1 and {LIST_LIMIT_MAX}", param="limit")
        index = self.keys.owner_index(owner)
        found: list[SessionInfo] = []
        stale: list[str] = []
        cursor = after or ""
        while len(found) <= limit:
            ids: list[Any] | None = await self._page(
                keys=[index], args=[cursor, limit + 1 - len(found)]
            )
            if ids is None:
                if cursor == (after or ""):
                    raise NotFoundError(f"no session {after!r} to list after", param="after")
                break  # the page's last id vanished meanwhile: end here
            if not ids:
                break
            session_ids = [_text(raw) for raw in ids]
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    pipe.hgetall(self.keys.info(session_id))
                    pipe.llen(self.keys.messages(session_id))
                replies = await pipe.execute()
            for i, session_id in enumerate(session_ids):
                raw_fields: dict[Any, Any] = replies[2 * i]
                fields = {_text(k): _text(v) for k, v in raw_fields.items()}
                if fields.get("owner") != owner:
                    stale.append(session_id)
                else:
                    found.append(_info(fields, int(replies[2 * i + 1])))
            cursor = session_ids[-1]
        if stale:
            await self._redis.zrem(index, *stale)
        return found[:limit], len(found) > limit

    async def delete(self, session_id: str, owner: str) -> None:
        """Remove the session and everything stored about it (messages, linked idempotency
        results), atomically; then its id from the owner index. `NotFoundError` if it does not
        exist."""
        if not SESSION_ID_RE.fullmatch(session_id):
            raise _not_found(session_id)
        reply: list[Any] = await self._delete(
            keys=self._session_keys(session_id), args=[owner, session_id]
        )
        if _text(reply[0]) != "ok":
            raise _not_found(session_id)
        await self._redis.zrem(self.keys.owner_index(owner), session_id)

    async def fork(self, session_id: str, owner: str, *, upto: int | None = None) -> SessionInfo:
        """A new session of `owner` holding the first `upto` messages (None = all) of this one,
        with its title and options and `forked_from` set to it."""
        info, messages = await self.load(session_id, owner)
        if upto is not None and not 0 <= upto <= len(messages):
            raise UnprocessableError(
                f"upto must be between 0 and {len(messages)} (the message count)", param="upto"
            )
        return await self._create_session(
            owner, info.title, info.options, messages[:upto], forked_from=session_id
        )

    async def export(self, session_id: str, owner: str) -> dict[str, Any]:
        """The whole session as one JSON-able document."""
        info, messages = await self.load(session_id, owner)
        return {
            "object": "session.export",
            "format_version": 1,
            "exported_at": time.time(),
            "session": info.model_dump(mode="json"),
            "messages": messages,
        }

    async def lock_and_load(
        self, session_id: str, owner: str
    ) -> tuple[RedisLock, SessionInfo, Messages]:
        """`turn_lock` taken, then `load`, in one round trip per try (the owner index's TTL
        renewed as `load` renews it): the held lock (release it), the info and every message.

        As with the two calls: the lock is taken before the owner check, so a stranger (or a
        missing session) gets `NotFoundError` with the lock released; a lock that stays held
        is a `ConflictError`.
        """
        if not SESSION_ID_RE.fullmatch(session_id):
            raise _not_found(session_id)
        lock = self._turn_lock(session_id)
        keys = [
            self.keys.lock(session_id),
            *self._session_keys(session_id),
            *self._index_keys(owner),
        ]
        reply: list[Any] = []

        async def attempt(token: str, ttl_ms: int) -> bool:
            nonlocal reply
            reply = await self._lock_read(
                keys=keys, args=[token, ttl_ms, owner, self.settings.session_ttl_ms]
            )
            return _text(reply[0]) != "locked"

        await lock.acquire(attempt)
        try:
            if _text(reply[0]) != "ok":
                raise _not_found(session_id)
            messages: Messages = [orjson.loads(raw) for raw in reply[3]]
            await self._touch_index(owner, None, time.time())  # as `load` does
            return lock, _info(_pairs(reply[1]), int(reply[2])), messages
        except BaseException:
            await lock.release()
            raise

    def turn_lock(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """Hold this for a whole turn (load → run → append_turn).

        A second turn waits up to `turn_lock_wait` seconds, then gets `ConflictError`. The lock
        is renewed while held and expires `turn_lock_ttl` seconds after a holder crashed; a
        release that Redis could not take (down, frozen) is repeated as soon as Redis is back.
        """
        return self._turn_lock(session_id)

    def _turn_lock(self, session_id: str) -> RedisLock:
        return RedisLock(
            self._redis,
            self.keys.lock(session_id),
            ttl=self.settings.turn_lock_ttl,
            wait=self.settings.turn_lock_wait,
            message=("another turn is running on this session; retry when it has finished"),
            code="session_busy",
            scripts=self._lock_scripts,
        )
