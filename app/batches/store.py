"""Batches in Redis: the batch objects, their validation errors and results, over the job queue
of their items (`app.batches.queue`, which owns every stream command and the item scripts).

Contracts:
- A batch moves between statuses only by `transition`, a script that checks the status it
  leaves, so two coordinators (or a coordinator and a cancel) never both move it.
- Once `cancel` returns, no further item of the batch starts (the queue's `start_item` checks
  the status the cancel set).
- Sealing a batch (before its files are written) makes every later result write a no-op.
- A batch's own keys share its hash tag; the owner index and the set of active batches are
  keys of their own (other Redis Cluster slots), so `create` and `retire` write them in separate
  steps, ordered so that a failure part-way never leaves a batch that is listed but not
  coordinated (see each method).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from app.batches.keys import BATCH_ID_RE
from app.batches.lines import ResultRecord
from app.batches.models import (
    FINAL_STATUSES,
    BatchObject,
    BatchStatus,
    CreateBatchRequest,
    LineError,
    batch_from_hash,
    window_seconds,
)
from app.batches.queue import FinishOutcome, JobQueue, QueueItem, StartOutcome
from app.errors import ConflictError, InvalidRequestError, NotFoundError

# KEYS: batch. ARGV: allowed statuses (comma list), new status, then field/value pairs.
_TRANSITION = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
local ok = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == status then ok = true end
end
if not ok then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 'ok'
"""

__all__ = ["BatchStore", "FinishOutcome", "QueueItem", "StartOutcome", "new_batch_id"]


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchStore(JobQueue):
    """Batch objects over the job queue of their items, on one Redis connection pool.

    A store is its batches' queue (the item scripts read and write the batch objects, so the
    two share one layout and connection); every queue operation is `JobQueue`'s. A store
    handed to a worker or the coordinator is the queue they use.
    """

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "cascade") -> None:
        super().__init__(redis, prefix=prefix)
        self._transition = redis.register_script(_TRANSITION)

    # ------------------------------------------------------------------ batch objects

    async def create(
        self,
        owner: str,
        req: CreateBatchRequest,
        *,
        job: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> BatchObject:
        """A new batch in `validating`; the coordinator picks it up.

        Three writes in this order: the object, then the active set (the coordinator's work
        list), then the owner index. A failure part-way raises, and the caller never learns the
        id: what was written stays unlisted (an object alone, or a batch that is coordinated to
        its end unlisted), never a listed batch nobody moves.
        """
        batch_id = new_batch_id()
        now = time.time()
        created = int(now)
        fields: dict[FieldT, EncodableT] = {
            "id": batch_id,
            "owner": owner,
            "status": "validating",
            "endpoint": req.endpoint,
            "input_file_id": req.input_file_id,
            "completion_window": req.completion_window,
            "created_at": created,
            "expires_at": created + window_seconds(req.completion_window),
            "metadata": orjson.dumps(req.metadata) if req.metadata is not None else "",
            "output_expires_after": (
                req.output_expires_after.seconds if req.output_expires_after else ""
            ),
            "job": orjson.dumps(job) if job is not None else "",
            "model": model or "",
            "sealed": "0",
        }
        await self.redis.hset(self.keys.batch(batch_id), mapping=fields)
        await self.redis.sadd(self.keys.active(), batch_id)
        await self.redis.zadd(self.keys.owner_index(owner), {batch_id: int(now * 1_000_000)})
        batch = await self.load(batch_id)
        assert batch is not None
        return batch

    async def load(self, batch_id: str) -> BatchObject | None:
        """The batch, whoever owns it (for workers and the coordinator)."""
        if not BATCH_ID_RE.fullmatch(batch_id):
            return None
        return batch_from_hash(await self.redis.hgetall(self.keys.batch(batch_id)))

    async def get(self, owner: str, batch_id: str) -> BatchObject:
        """The owner's batch; 404 for a missing one and for someone else's alike."""
        batch = await self.load(batch_id)
        if batch is None or batch.owner != owner:
            raise NotFoundError(f"no batch with id {batch_id!r}", code="batch_not_found")
        return batch

    async def list_batches(
        self, owner: str, *, limit: int = 20, after: str | None = None
    ) -> tuple[list[BatchObject], bool]:
        """The owner's batches, newest first, and whether more follow."""
        index = self.keys.owner_index(owner)
        start = 0
        if after is not None:
            rank: Any = await self.redis.zrevrank(index, after)
            if rank is None:
                raise InvalidRequestError(f"unknown cursor {after!r}", param="after")
            start = int(rank) + 1
        found: list[BatchObject] = []
        while len(found) <= limit:
            ids = [_s(i) for i in await self.redis.zrevrange(index, start, start + limit)]
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(self.keys.batch(batch_id))
                rows = await pipe.execute()
            stale = []
            for batch_id, raw in zip(ids, rows, strict=True):
                batch = batch_from_hash(raw)
                if batch is None:
                    stale.append(batch_id)
                else:
                    found.append(batch)
            if stale:
                await self.redis.zrem(index, *stale)
                start -= len(stale)
            start += len(ids)
        return found[:limit], len(found) > limit

    async def active_ids(self) -> list[str]:
        return sorted(_s(i) for i in await self.redis.smembers(self.keys.active()))

    async def forget(self, batch_id: str) -> None:
        """Stop coordinating a batch (its object is gone, or it is final already)."""
        await self.redis.srem(self.keys.active(), batch_id)

    async def status(self, batch_id: str) -> str | None:
        """The batch's status as stored (even when the object as a whole does not parse)."""
        value = await self.redis.hget(self.keys.batch(batch_id), "status")
        return None if value is None else _s(value)

    async def transition(
        self, batch_id: str, allowed: Sequence[str], status: BatchStatus, **fields: Any
    ) -> bool:
        """Move to `status` (setting `fields`) if the batch is in one of `allowed`."""
        argv: list[Any] = [",".join(allowed), status]
        for name, value in fields.items():
            argv += [name, "" if value is None else value]
        result = await self._transition(keys=[self.keys.batch(batch_id)], args=argv)
        return result is not None and _s(result) == "ok"

    async def cancel(self, owner: str, batch_id: str) -> BatchObject:
        """Ask to cancel. Once this returns, no further item of the batch starts."""
        batch = await self.get(owner, batch_id)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        moved = await self.transition(
            batch_id,
            ("validating", "in_progress"),
            "cancelling",
            cancelling_at=int(time.time()),
        )
        batch = await self.get(owner, batch_id)
        if not moved and batch.status not in ("cancelling", "cancelled"):
            raise ConflictError(
                f"cannot cancel a batch that is {batch.status}", code="batch_not_cancellable"
            )
        return batch

    async def set_fields(self, batch_id: str, **fields: Any) -> None:
        mapping: dict[FieldT, EncodableT] = {k: "" if v is None else v for k, v in fields.items()}
        await self.redis.hset(self.keys.batch(batch_id), mapping=mapping)

    async def retire(self, batch_id: str, retention_seconds: int) -> None:
        """A final batch: drop item bookkeeping and keep the object a while (one transaction),
        then stop coordinating it (a failure before that leaves it active: the coordinator
        meets the final batch again and retires it again)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self.keys.item_keys(batch_id))
            pipe.expire(self.keys.batch(batch_id), retention_seconds)
            pipe.expire(self.keys.images(batch_id), retention_seconds)
            await pipe.execute()
        await self.redis.srem(self.keys.active(), batch_id)

    # ------------------------------------------------------------------ validation results

    async def record_invalid(self, batch_id: str, errors: Sequence[tuple[int, LineError]]) -> None:
        if errors:
            await self.redis.hset(
                self.keys.invalid(batch_id),
                mapping={str(line): error.model_dump_json() for line, error in errors},
            )

    async def invalid_lines(self, batch_id: str, lines: Sequence[int]) -> dict[int, LineError]:
        if not lines:
            return {}
        values = await self.redis.hmget(self.keys.invalid(batch_id), [str(n) for n in lines])
        return {
            n: LineError.model_validate_json(v)
            for n, v in zip(lines, values, strict=True)
            if v is not None
        }

    async def results(self, batch_id: str, custom_ids: Sequence[str]) -> list[ResultRecord | None]:
        if not custom_ids:
            return []
        values = await self.redis.hmget(self.keys.results(batch_id), list(custom_ids))
        return [ResultRecord.loads(v) if v is not None else None for v in values]

    async def scan_results(self, batch_id: str) -> AsyncIterator[ResultRecord]:
        """Every result of the batch, in no particular order."""
        async for _, raw in self.redis.hscan_iter(self.keys.results(batch_id)):
            yield ResultRecord.loads(raw)

    async def scan_invalid(self, batch_id: str) -> AsyncIterator[LineError]:
        """Every validation error of the batch, in no particular order."""
        async for _, raw in self.redis.hscan_iter(self.keys.invalid(batch_id)):
            yield LineError.model_validate_json(raw)

    async def references_image(self, batch_id: str, sha256: str) -> bool:
        """Whether one of the batch's results used the stored image `sha256`."""
        return bool(await self.redis.sismember(self.keys.images(batch_id), sha256))

    # ------------------------------------------------------------------ sealing

    async def seal(self, batch_id: str) -> None:
        """Seal now, whatever runs (expiry)."""
        await self.redis.hset(self.keys.batch(batch_id), "sealed", "1")

    async def is_final(self, batch_id: str) -> bool:
        status = await self.redis.hget(self.keys.batch(batch_id), "status")
        return status is None or _s(status) in FINAL_STATUSES
