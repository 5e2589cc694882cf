"""Batches in Redis: the batch objects, their items' results, and the queue operations whose
correctness depends on both (each one a Lua script, so it is atomic).

Contracts:
- An item's result is written at most once (`HSETNX` on the batch's results hash keyed by
  custom_id); the count it adds to (`completed` or `failed`) moves in the same script, so the
  counts always equal the results stored, however often an item was delivered.
- A worker may start an item only while its batch is `in_progress` and not sealed; the check
  and the `running` mark are one script, so after a cancel is acknowledged no item starts.
- Sealing a batch (before its files are written) makes every later result write a no-op.
- The images a batch references (for its thumbnails) are those of its written results, added
  in the same script as the result.
- Acknowledging a queue entry (XACK + XDEL) happens in the same script as the write or the
  retry it concludes, so a crash never loses an item that was not finished.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from app.batches.keys import BATCH_ID_RE, GROUP, BatchKeys
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
from app.errors import ConflictError, InvalidRequestError, NotFoundError

# KEYS: batch, results, running, stream, images.
# ARGV: cid, record, kind, group, msg id, usage x4, worker, body size, image sha256s...
_FINISH = """
local function ack()
  if ARGV[5] ~= '' then
    redis.call('XACK', KEYS[4], ARGV[4], ARGV[5])
    redis.call('XDEL', KEYS[4], ARGV[5])
  end
  if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[10] then
    redis.call('HDEL', KEYS[3], ARGV[1])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'sealed') == '1' then
  ack()
  return 'sealed'
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
  redis.call('HINCRBY', KEYS[1], 'done', 1)
  redis.call('HINCRBY', KEYS[1], 'done_bytes', ARGV[11])
  redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[7])
  redis.call('HINCRBY', KEYS[1], 'reasoning_tokens', ARGV[8])
  redis.call('HINCRBY', KEYS[1], 'cached_tokens', ARGV[9])
  redis.call('HDEL', KEYS[3], ARGV[1])
  for i = 12, #ARGV do redis.call('SADD', KEYS[5], ARGV[i]) end
  ack()
  return 'written'
end
ack()
return 'duplicate'
"""

# KEYS: batch, results, running, starts. ARGV: cid, worker.
_START = """
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress'
   or redis.call('HGET', KEYS[1], 'sealed') == '1' then
  return {'skip', 0}
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {'done', 0}
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
local n = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
return {'run', n}
"""

# KEYS: batch, running, stream, delayed. ARGV: cid, group, msg id, due, payload, worker.
_RETRY = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[6] then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if ARGV[3] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
  redis.call('XDEL', KEYS[3], ARGV[3])
end
if redis.call('HGET', KEYS[1], 'sealed') == '1' then
  return 0
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
return 1
"""

# KEYS: running, stream. ARGV: cid, group, msg id, worker, requeue (1/0), fields... (k, v)*
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[4] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if ARGV[3] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
end
if ARGV[5] == '1' then
  local fields = {}
  for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
end
return 1
"""

# KEYS: delayed, stream. ARGV: now, limit.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local item = cjson.decode(member)
  local fields = {}
  for k, v in pairs(item) do
    fields[#fields + 1] = k
    fields[#fields + 1] = tostring(v)
  end
  redis.call('XADD', KEYS[2], '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""

# KEYS: batch, active. ARGV: allowed statuses (comma list), new status, then field/value pairs.
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

# KEYS: batch, running. ARGV: number of running entries that belong to dead workers.
_SEAL = """
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'sealed', '1')
return 1
"""

StartOutcome = Literal["run", "skip", "done"]
FinishOutcome = Literal["written", "duplicate", "sealed"]


@dataclass(frozen=True, slots=True)
class QueueItem:
    """One queued item as a worker receives it."""

    msg_id: str
    batch_id: str
    custom_id: str
    line: int
    owner: str
    attempt: int
    body: bytes

    def fields(self, *, attempt: int | None = None) -> dict[str, str | bytes]:
        return {
            "b": self.batch_id,
            "c": self.custom_id,
            "n": str(self.line),
            "o": self.owner,
            "a": str(self.attempt if attempt is None else attempt),
            "body": self.body,
        }

    @classmethod
    def from_entry(cls, msg_id: Any, fields: dict[Any, Any]) -> QueueItem:
        def text(name: str) -> str:
            value = fields.get(name.encode(), fields.get(name, b""))
            return value.decode() if isinstance(value, bytes) else str(value)

        body = fields.get(b"body", fields.get("body", b""))
        return cls(
            msg_id=msg_id.decode() if isinstance(msg_id, bytes) else str(msg_id),
            batch_id=text("b"),
            custom_id=text("c"),
            line=int(text("n") or 0),
            owner=text("o"),
            attempt=int(text("a") or 1),
            body=body if isinstance(body, bytes) else str(body).encode(),
        )


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchStore:
    """Batch objects and item bookkeeping over one Redis connection pool."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "cascade") -> None:
        self.redis = redis
        self.keys = BatchKeys(prefix)
        self._finish = redis.register_script(_FINISH)
        self._start = redis.register_script(_START)
        self._retry = redis.register_script(_RETRY)
        self._release = redis.register_script(_RELEASE)
        self._move_due = redis.register_script(_MOVE_DUE)
        self._transition = redis.register_script(_TRANSITION)
        self._seal = redis.register_script(_SEAL)

    # ------------------------------------------------------------------ batch objects

    async def create(
        self,
        owner: str,
        req: CreateBatchRequest,
        *,
        job: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> BatchObject:
        """A new batch in `validating`; the coordinator picks it up."""
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.batch(batch_id), mapping=fields)
            pipe.zadd(self.keys.owner_index(owner), {batch_id: int(now * 1_000_000)})
            pipe.sadd(self.keys.active(), batch_id)
            await pipe.execute()
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

    async def transition(
        self, batch_id: str, allowed: Sequence[str], status: BatchStatus, **fields: Any
    ) -> bool:
        """Move to `status` (setting `fields`) if the batch is in one of `allowed`."""
        argv: list[Any] = [",".join(allowed), status]
        for name, value in fields.items():
            argv += [name, "" if value is None else value]
        result = await self._transition(
            keys=[self.keys.batch(batch_id), self.keys.active()], args=argv
        )
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
        """A final batch: drop item bookkeeping, stop coordinating, keep the object a while."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self.keys.item_keys(batch_id))
            pipe.srem(self.keys.active(), batch_id)
            pipe.expire(self.keys.batch(batch_id), retention_seconds)
            pipe.expire(self.keys.images(batch_id), retention_seconds)
            await pipe.execute()

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

    # ------------------------------------------------------------------ feeding

    async def feed(
        self,
        batch: BatchObject,
        items: Sequence[tuple[str, int, bytes]],
        *,
        offset: int,
        line: int,
        complete: bool = False,
    ) -> None:
        """Queue `items` (custom_id, line, body) and move the feed position past them, at once
        (`complete`: the input is exhausted)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for custom_id, number, body in items:
                pipe.xadd(
                    self.keys.stream(),
                    {
                        "b": batch.id,
                        "c": custom_id,
                        "n": str(number),
                        "o": batch.owner,
                        "a": "1",
                        "body": body,
                    },
                )
            key = self.keys.batch(batch.id)
            pipe.hincrby(key, "fed", len(items))
            pipe.hincrby(key, "fed_bytes", sum(len(body) for _, _, body in items))
            position: dict[FieldT, EncodableT] = {
                "feed_offset": offset,
                "feed_line": line,
            }
            if complete:
                position["feed_complete"] = "1"
            pipe.hset(key, mapping=position)
            await pipe.execute()

    # ------------------------------------------------------------------ items (workers)

    async def start_item(self, item: QueueItem, worker: str) -> tuple[StartOutcome, int]:
        """May this item run now? ('run', starts so far) / ('skip', 0) / ('done', 0)."""
        k = self.keys
        outcome, starts = await self._start(
            keys=[
                k.batch(item.batch_id),
                k.results(item.batch_id),
                k.running(item.batch_id),
                k.starts(item.batch_id),
            ],
            args=[item.custom_id, worker],
        )
        return _s(outcome), int(starts)  # type: ignore[return-value]

    async def finish_item(
        self,
        item: QueueItem,
        record: ResultRecord,
        *,
        worker: str,
        usage: dict[str, int] | None = None,
        images: Sequence[str] = (),
    ) -> FinishOutcome:
        """Store the item's one result (if it has none yet) and acknowledge the entry.

        `images` (sha256s of the stored images the item used) become references of the batch
        when, and only when, this result is the one written.
        """
        k = self.keys
        usage = usage or {}
        outcome = await self._finish(
            keys=[
                k.batch(item.batch_id),
                k.results(item.batch_id),
                k.running(item.batch_id),
                k.stream(),
                k.images(item.batch_id),
            ],
            args=[
                item.custom_id,
                record.dumps(),
                "completed" if record.kind == "output" else "failed",
                GROUP,
                item.msg_id,
                usage.get("input_tokens", 0),
                usage.get("output_tokens", 0),
                usage.get("reasoning_tokens", 0),
                usage.get("cached_tokens", 0),
                worker,
                len(item.body),
                *images,
            ],
        )
        return _s(outcome)  # type: ignore[return-value]

    async def references_image(self, batch_id: str, sha256: str) -> bool:
        """Whether one of the batch's results used the stored image `sha256`."""
        return bool(await self.redis.sismember(self.keys.images(batch_id), sha256))

    async def retry_later(self, item: QueueItem, *, due: float, worker: str) -> bool:
        """Acknowledge the entry and park the item (next attempt) until `due` (epoch s)."""
        payload = {
            _s(key): (value.decode() if isinstance(value, bytes) else value)
            for key, value in item.fields(attempt=item.attempt + 1).items()
        }
        payload["nonce"] = secrets.token_hex(4)
        k = self.keys
        result = await self._retry(
            keys=[k.batch(item.batch_id), k.running(item.batch_id), k.stream(), k.delayed()],
            args=[item.custom_id, GROUP, item.msg_id, due, orjson.dumps(payload), worker],
        )
        return bool(result)

    async def release(self, item: QueueItem, *, worker: str, requeue: bool) -> None:
        """Let go of an item: acknowledge it and, with `requeue`, queue it again at once."""
        fields: list[Any] = []
        for key, value in item.fields().items():
            fields += [key, value]
        k = self.keys
        await self._release(
            keys=[k.running(item.batch_id), k.stream()],
            args=[item.custom_id, GROUP, item.msg_id, worker, "1" if requeue else "0", *fields],
        )

    async def move_due(self, *, limit: int = 200) -> int:
        """Queue parked items whose retry time came (any worker may call it)."""
        k = self.keys
        moved = await self._move_due(keys=[k.delayed(), k.stream()], args=[time.time(), limit])
        return int(moved)

    # ------------------------------------------------------------------ sealing

    async def running_workers(self, batch_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.running(batch_id))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def seal_when_idle(self, batch_id: str) -> bool:
        """Seal the batch if no live worker is running one of its items."""
        running = await self.running_workers(batch_id)
        dead = 0
        if running:
            names = sorted(set(running.values()))
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(self.keys.worker(name))
                flags = await pipe.execute()
            live = {name for name, flag in zip(names, flags, strict=True) if flag}
            dead = sum(1 for worker in running.values() if worker not in live)
        result = await self._seal(
            keys=[self.keys.batch(batch_id), self.keys.running(batch_id)], args=[dead]
        )
        return bool(result)

    async def seal(self, batch_id: str) -> None:
        """Seal now, whatever runs (expiry)."""
        await self.redis.hset(self.keys.batch(batch_id), "sealed", "1")

    async def is_final(self, batch_id: str) -> bool:
        status = await self.redis.hget(self.keys.batch(batch_id), "status")
        return status is None or _s(status) in FINAL_STATUSES
