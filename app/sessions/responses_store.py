"""Stored responses of the Responses API in Redis: one hash per response, with a fixed TTL.

A response's hash holds its owner, the `Response` body, its input items, the input and output
items of its whole chain (for `item_reference`) and the whole running history of its chain
(the chat messages so far, in the session store's form: the previous response's history plus
this turn's new messages). Continuing a chain is therefore one read,
and the prompt rebuilt from it is byte-identical to the one before. Responses are immutable
once written; two requests continuing the same response each write their own (branching).

Another owner's response answers exactly like a missing one (`NotFoundError`): the owner is
checked on every read, and inside the delete script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from app.errors import NotFoundError
from app.sessions.config import SessionSettings

_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


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
        return StoredResponse(
            body=orjson.loads(fields["body"]),
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
