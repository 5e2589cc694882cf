"""Stored responses of the Responses API in Redis: one hash per response, with a fixed TTL.

A response's hash holds its owner, the `Response` body, its input items, the input and output
items of its whole chain (for `item_reference`) and the whole running history of its chain
(the chat messages so far, in the session store's form: the previous response's history plus
this turn's new messages). Continuing a chain is therefore one read, and the prompt rebuilt
from it is byte-identical to the one before. A response is immutable once it ended (a
background one ends after it is first written, see below); two requests continuing the same
response each write their own (branching).

Another owner's response answers exactly like a missing one (`NotFoundError`): the owner is
checked on every read, and inside the delete script.

A background response is written first as `queued` and then changes status in place: its hash
has a `status` field, the one authority on the status (a read puts it into the body). Every
change is a compare-and-set script: `start` (queued or in progress → in progress, counting the
starts), `finish` (in progress → the final body, written whole) and `cancel` (queued or in
progress → cancelled). So a cancel is never overwritten by a run that ends after it, and of two
runs of one response (a worker thought dead, and the one that took it over) one result is
stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from app.errors import NotFoundError
from app.sessions.config import SessionSettings

_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


# KEYS: response. ARGV: owner, new status, n, n allowed statuses, then (field, value) pairs.
# The status before, when it was one of the allowed ones (and is now the new one), else ''.
_TRANSITION = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return '' end
local current = redis.call('HGET', KEYS[1], 'status')
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[2])
    for j = 4 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
    return current
  end
end
return ''
"""

# KEYS: response. ARGV: owner. Starts so far (this one included), or 0: it may not run.
_START = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
local current = redis.call('HGET', KEYS[1], 'status')
if current ~= 'queued' and current ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'in_progress')
return redis.call('HINCRBY', KEYS[1], 'starts', 1)
"""

QUEUED: Final = "queued"
IN_PROGRESS: Final = "in_progress"
CANCELLED: Final = "cancelled"
PENDING = (QUEUED, IN_PROGRESS)  # a background response not yet in a final state


@dataclass
class StoredResponse:
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]
    # Every input and output item of the chain so far, this response's last: what an
    # `item_reference` may name. Empty in a response stored before it was kept; then the
    # response's own input and output items stand in (`chain_items`).
    items: list[dict[str, Any]] = field(default_factory=list)

    def chain_items(self) -> list[dict[str, Any]]:
        if self.items:
            return self.items
        return [*self.input_items, *self.body.get("output", [])]


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(f"no response {response_id!r}", code="response_not_found", param="id")


class ResponseStore:
    """Responses of many owners in one Redis; see the module docstring for the guarantees."""

    def __init__(self, redis: aioredis.Redis, settings: SessionSettings | None = None) -> None:
        self._redis = redis
        self.settings = settings or SessionSettings()
        self._delete = redis.register_script(_DELETE)
        self._transition = redis.register_script(_TRANSITION)
        self._start = redis.register_script(_START)

    def key(self, response_id: str) -> str:
        """Hash: owner, body, input items and history of one response."""
        return f"{self.settings.key_prefix}:response:{{{response_id}}}"

    async def put(self, owner: str, stored: StoredResponse) -> None:
        """Write a response whole, with its TTL, in one transaction."""
        key = self.key(stored.body["id"])
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "owner": owner,
                    "body": orjson.dumps(stored.body),
                    "input": orjson.dumps(stored.input_items),
                    "history": orjson.dumps(stored.history),
                    "items": orjson.dumps(stored.items),
                    "status": stored.body["status"],
                },
            )
            pipe.pexpire(key, self.settings.response_ttl_ms)
            await pipe.execute()

    async def get(self, owner: str, response_id: str) -> StoredResponse:
        """The stored response; `NotFoundError` when missing, expired or another owner's."""
        raw = await self._redis.hgetall(self.key(response_id))
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (raw or {}).items()}
        owner_field = fields.get("owner")
        if (
            owner_field is None
            or (owner_field.decode() if isinstance(owner_field, bytes) else owner_field) != owner
        ):
            raise _not_found(response_id)
        body = orjson.loads(fields["body"])
        status = fields.get("status")
        if status is not None:
            body["status"] = status.decode() if isinstance(status, bytes) else status
        return StoredResponse(
            body=body,
            input_items=orjson.loads(fields["input"]),
            history=orjson.loads(fields["history"]),
            items=orjson.loads(fields["items"]) if "items" in fields else [],
        )

    def approval_key(self, pause_id: str) -> str:
        """String: set once, when a paused step's approval requests are first answered."""
        return f"{self.settings.key_prefix}:response-approval:{{{pause_id}}}"

    async def claim_approval(self, pause_id: str) -> bool:
        """Record that the pause `pause_id` is being answered; False when it was already.

        Responses are immutable and a chain may branch, so the paused response stays
        continuable: this one key is what keeps its call from being answered (and run) twice.
        """
        claimed = await self._redis.set(
            self.approval_key(pause_id), b"1", nx=True, px=self.settings.response_ttl_ms
        )
        return bool(claimed)

    async def delete(self, owner: str, response_id: str) -> None:
        """Delete a response; `NotFoundError` when missing, expired or another owner's."""
        if not await self._delete(keys=[self.key(response_id)], args=[owner]):
            raise _not_found(response_id)

    async def status(self, owner: str, response_id: str) -> str | None:
        """The response's status now (None when missing, expired or another owner's)."""
        stored_owner, status = await self._redis.hmget(self.key(response_id), ["owner", "status"])
        if stored_owner is None or _text(stored_owner) != owner or status is None:
            return None
        return _text(status)

    async def start(self, owner: str, response_id: str) -> int:
        """Mark a queued (or, run again, in-progress) response in progress: how many times it
        was started, this one included; 0 when it may not run (cancelled, finished, gone)."""
        return int(await self._start(keys=[self.key(response_id)], args=[owner]))

    async def finish(self, owner: str, stored: StoredResponse) -> bool:
        """Store an in-progress response's final state (its body's status) whole; false, and
        nothing written, when it is no longer in progress (cancelled, or finished already)."""
        body = stored.body
        before = await self._transition(
            keys=[self.key(body["id"])],
            args=[
                owner,
                body["status"],
                1,
                IN_PROGRESS,
                "body",
                orjson.dumps(body),
                "input",
                orjson.dumps(stored.input_items),
                "history",
                orjson.dumps(stored.history),
            ],
        )
        return bool(before)

    async def cancel(self, owner: str, response_id: str) -> bool:
        """Cancel a queued or in-progress response; false when it was in neither state."""
        before = await self._transition(
            keys=[self.key(response_id)], args=[owner, CANCELLED, len(PENDING), *PENDING]
        )
        return bool(before)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
