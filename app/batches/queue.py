"""The job queue of batch items over Redis Streams: the one owner of the stream, its consumer
group, the set of items waiting for a retry, and the record of which worker runs which item.

Every stream command cascade sends is here; workers and the coordinator call `JobQueue`
methods, never the keys. The operations that conclude an item touch both the item's batch and
the queue, which are in different Redis Cluster slots (`app.batches.keys`), so each is two
steps, each one Lua script (atomic): the batch's step first (the result, the counts, the running
mark), then the queue's (the entry acknowledged, and parked or queued again). A crash or a Redis
error between the two leaves the entry pending, so it is delivered again; every batch step is
idempotent, so that second delivery changes nothing but what the first one did not finish.

Contracts:
- Delivery is at least once. A claimed entry stays pending under its consumer until it is
  concluded (`finish_item`, `dead_letter`, `retry_later`, `release`); a consumer that stops
  `touch`ing its entries for `idle` seconds (it died or hung) loses them to `reclaim`. So an
  item may run more than once: after a reclaim, or after a crash before its result was written.
- Result writes are idempotent: an item's result is written at most once (`HSETNX` on the
  batch's results keyed by custom_id), the batch's counts and image references move in the
  same script, and the entry is acknowledged (XACK + XDEL) right after it. However often an
  item ran, exactly one result is visible, and a crash never loses an item that was not
  concluded (one that crashed between the two steps is delivered again, finds its result
  written, 'duplicate', and is acknowledged then).
- A retry repeats the whole run (the runtime call, tools, image fetches), never the result
  write: `retry_later` acknowledges the entry and parks the next attempt in one script (the
  queue's step); it comes back as a new entry once due (`move_due`), with `attempt` one
  higher.
- Ordering: entries are claimed in the order they were queued, but run concurrently; retries
  and hand-backs go to the end. Nothing downstream depends on order: the coordinator writes
  results in input order when it writes the files.
- Cancel: `start_item` refuses the items of a batch that is not `in_progress` or is sealed, in
  the same script that marks the item running, so once a cancel is recorded no item of the
  batch starts; `seal_when_idle` seals a batch only once no live worker runs one of its items.
- Priority lane: background responses of the Responses API (`ResponseJob`) have a stream of
  their own in the same consumer group, with the same claims, touches and reclaims. A worker
  reads it before the batch items (`claim_responses`, then `claim`), so a queued response is
  taken before any waiting batch item. Its state lives with the stored response
  (`app.sessions.responses_store`); here it is only delivered, at least once.
- Counts for the metrics (`stats`): retries and dead letters are counted in a stats hash right
  after the script that concluded the item (best effort: a crash in between loses one count).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from app.batches.keys import GROUP, BatchKeys
from app.batches.lines import ResultRecord
from app.batches.models import BatchObject

log = structlog.get_logger(__name__)

# The first step of concluding an item, in the batch's slot. KEYS: batch, results, running,
# images. ARGV: cid, record, kind, usage x4, worker, body size, image sha256s...
_FINISH = """
local function unmark()
  if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[8] then
    redis.call('HDEL', KEYS[3], ARGV[1])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'sealed') == '1' then
  unmark()
  return 'sealed'
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
  redis.call('HINCRBY', KEYS[1], 'done', 1)
  redis.call('HINCRBY', KEYS[1], 'done_bytes', ARGV[9])
  redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'reasoning_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'cached_tokens', ARGV[7])
  redis.call('HDEL', KEYS[3], ARGV[1])
  for i = 10, #ARGV do redis.call('SADD', KEYS[4], ARGV[i]) end
  return 'written'
end
unmark()
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

# The first step of a retry or a release, in the batch's slot: the item is no longer running
# by this worker. KEYS: running, batch. ARGV: cid, worker. 1 when the batch is sealed.
_UNMARK = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if redis.call('HGET', KEYS[2], 'sealed') == '1' then return 1 end
return 0
"""

# The second step of a retry, in the queue's slot: the entry acknowledged and, unless the
# payload is '', the next attempt parked, at once. KEYS: stream, delayed.
# ARGV: group, msg id, payload, due.
_PARK = """
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
return 1
"""

# The second step of a release, in the queue's slot: the entry acknowledged and, with
# requeue, queued again at once. KEYS: stream. ARGV: group, msg id, requeue (1/0), fields...
_REQUEUE = """
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
if ARGV[3] == '1' then
  local fields = {}
  for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[1], '*', unpack(fields))
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

# KEYS: batch, running. ARGV: number of running entries that belong to dead workers.
_SEAL = """
if redis.call('HLEN', KEYS[2]) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'sealed', '1')
return 1
"""

# Entries touched per XCLAIM call (one round trip each).
_TOUCH_CHUNK = 256

StartOutcome = Literal["run", "skip", "done"]
FinishOutcome = Literal["written", "duplicate", "sealed"]


@dataclass(frozen=True, slots=True)
class WorkerState:
    """A batch worker as Redis sees it: `alive` (its heartbeat key exists), the queue entries
    it holds (`pending`) and the seconds since it last read the queue (None: it never did)."""

    name: str
    alive: bool
    pending: int
    idle_seconds: float | None


def _glob_escape(text: str) -> str:
    """`text` matched literally in a Redis MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


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


@dataclass(frozen=True, slots=True)
class ResponseJob:
    """One queued background response as a worker receives it: the request as its client sent
    it, to be made as `response_id` for `owner`."""

    msg_id: str
    response_id: str
    owner: str
    body: bytes

    @property
    def key(self) -> str:
        """Its name among a worker's jobs (entry ids are unique within one stream only)."""
        return f"response:{self.msg_id}"

    def fields(self) -> dict[FieldT, EncodableT]:
        return {"r": self.response_id, "o": self.owner, "body": self.body}

    @classmethod
    def from_entry(cls, msg_id: Any, fields: dict[Any, Any]) -> ResponseJob:
        def value(name: str) -> Any:
            return fields.get(name.encode(), fields.get(name))

        response_id, owner, body = value("r"), value("o"), value("body")
        if response_id is None or owner is None or body is None:
            raise ValueError("a response entry needs r, o and body")
        return cls(
            msg_id=_s(msg_id),
            response_id=_s(response_id),
            owner=_s(owner),
            body=body if isinstance(body, bytes) else str(body).encode(),
        )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _lost_group(exc: ResponseError) -> bool:
    """Redis no longer has the stream or its group (it restarted without its data)."""
    return "NOGROUP" in str(exc)


@dataclass(frozen=True)
class QueueStats:
    """Entries in each stream (waiting or in flight), those delivered and not concluded (in
    flight), items parked for a retry, and the counts of retries and dead letters so far."""

    items: int
    items_in_flight: int
    responses: int
    responses_in_flight: int
    delayed: int
    retried: int
    dead: int


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int) else 0


def _pending(summary: Any) -> int:
    return int(summary.get("pending") or 0) if isinstance(summary, dict) else 0


class JobQueue:
    """The batch items' queue over one Redis connection pool (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "cascade") -> None:
        self.redis = redis
        self.keys = BatchKeys(prefix)
        self._stream = self.keys.stream()
        self._responses = self.keys.responses()
        # (stream, consumer) → where its next XAUTOCLAIM scan goes on (the scan wraps around)
        self._cursors: dict[tuple[str, str], str] = {}
        self._finish = redis.register_script(_FINISH)
        self._start = redis.register_script(_START)
        self._unmark = redis.register_script(_UNMARK)
        self._park = redis.register_script(_PARK)
        self._requeue = redis.register_script(_REQUEUE)
        self._move_due = redis.register_script(_MOVE_DUE)
        self._seal = redis.register_script(_SEAL)

    # ------------------------------------------------------------------ enqueue

    async def ensure_group(self) -> None:
        """Create the streams and their consumer group if missing (it reads from the start, so
        entries queued before it existed are delivered too)."""
        for stream in (self._responses, self._stream):
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def queue_response(self, response_id: str, owner: str, body: bytes) -> None:
        """Queue a background response on the priority lane."""
        job = ResponseJob(msg_id="", response_id=response_id, owner=owner, body=body)
        await self.redis.xadd(self._responses, job.fields())

    async def feed(
        self,
        batch: BatchObject,
        items: Sequence[tuple[str, int, bytes]],
        *,
        offset: int,
        line: int,
        complete: bool = False,
    ) -> None:
        """Queue `items` (custom_id, line, body) as attempt 1, then move the batch's feed
        position past them (`complete`: the input is exhausted): two transactions, the queue's
        and the batch's (two cluster slots), in that order. A feed repeated after an error the
        caller could not read (either one) queues the items again; their results are still
        written once, and the position and `fed` counts move once per successful feed."""
        if items:
            async with self.redis.pipeline(transaction=True) as pipe:
                for custom_id, number, body in items:
                    pipe.xadd(
                        self._stream,
                        {
                            "b": batch.id,
                            "c": custom_id,
                            "n": str(number),
                            "o": batch.owner,
                            "a": "1",
                            "body": body,
                        },
                    )
                await pipe.execute()
        key = self.keys.batch(batch.id)
        async with self.redis.pipeline(transaction=True) as pipe:
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

    async def move_due(self, *, limit: int = 200) -> int:
        """Queue up to `limit` parked retries whose time came; how many (any worker may call
        it: each parked item is moved once)."""
        k = self.keys
        moved = await self._move_due(keys=[k.delayed(), k.stream()], args=[time.time(), limit])
        return int(moved)

    # ------------------------------------------------------------------ claim

    async def claim(self, consumer: str, count: int, *, block_ms: int) -> list[QueueItem]:
        """Up to `count` entries never delivered before, for `consumer`; waits up to
        `block_ms` for the first. Each stays pending under `consumer` until it is concluded or
        reclaimed. A lost group is created again (and nothing returned this time)."""
        items: list[QueueItem] = []
        for msg_id, fields in await self._read(self._stream, consumer, count, block_ms):
            item = await self._item(consumer, msg_id, fields)
            if item is not None:
                items.append(item)
        return items

    async def claim_responses(self, consumer: str, count: int) -> list[ResponseJob]:
        """Up to `count` queued background responses never delivered before, for `consumer`,
        without waiting; each stays pending under it until `conclude_response` or
        `release_response` (or a reclaim)."""
        jobs: list[ResponseJob] = []
        for msg_id, fields in await self._read(self._responses, consumer, count, None):
            job = await self._job(consumer, msg_id, fields)
            if job is not None:
                jobs.append(job)
        return jobs

    async def _read(
        self, stream: str, consumer: str, count: int, block_ms: int | None
    ) -> list[tuple[Any, Any]]:
        """New entries of `stream` for `consumer` (XREADGROUP; `block_ms` None: no wait)."""
        try:
            response: Any = await self.redis.xreadgroup(
                GROUP, consumer, {stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if not _lost_group(exc):
                raise
            await self.ensure_group()
            return []
        return [entry for _stream, entries in response or [] for entry in entries]

    async def reclaim(self, consumer: str, count: int, *, idle: float) -> list[QueueItem]:
        """Up to `count` entries of other consumers that nobody touched for `idle` seconds, now
        pending under `consumer` (its own idle ones too: the caller skips those it still runs).
        Successive calls scan the pending entries round-robin."""
        items = []
        for msg_id, fields in await self._autoclaim(self._stream, consumer, count, idle):
            item = await self._item(consumer, msg_id, fields)
            if item is not None:
                items.append(item)
        return items

    async def reclaim_responses(
        self, consumer: str, count: int, *, idle: float
    ) -> list[ResponseJob]:
        """`reclaim` on the priority lane: background responses whose worker went silent."""
        jobs = []
        for msg_id, fields in await self._autoclaim(self._responses, consumer, count, idle):
            job = await self._job(consumer, msg_id, fields)
            if job is not None:
                jobs.append(job)
        return jobs

    async def _autoclaim(
        self, stream: str, consumer: str, count: int, idle: float
    ) -> list[tuple[Any, Any]]:
        try:
            result: Any = await self.redis.xautoclaim(
                stream,
                GROUP,
                consumer,
                int(idle * 1000),
                start_id=self._cursors.get((stream, consumer), "0-0"),
                count=count,
            )
        except ResponseError as exc:
            if not _lost_group(exc):
                raise
            await self.ensure_group()
            return []
        self._cursors[(stream, consumer)] = _s(result[0])
        # An entry deleted meanwhile comes back without fields.
        return [(msg_id, fields) for msg_id, fields in result[1] if fields]

    async def touch(self, consumer: str, msg_ids: Sequence[str]) -> None:
        """Reset the idle time of `consumer`'s entries `msg_ids` (it is alive and working on
        them), so `reclaim` leaves them alone."""
        await self._touch(self._stream, consumer, msg_ids)

    async def touch_responses(self, consumer: str, msg_ids: Sequence[str]) -> None:
        """`touch` on the priority lane."""
        await self._touch(self._responses, consumer, msg_ids)

    async def _touch(self, stream: str, consumer: str, msg_ids: Sequence[str]) -> None:
        ids: list[Any] = list(msg_ids)
        try:
            for start in range(0, len(ids), _TOUCH_CHUNK):
                await self.redis.xclaim(
                    stream, GROUP, consumer, 0, ids[start : start + _TOUCH_CHUNK], justid=True
                )
        except ResponseError as exc:
            if not _lost_group(exc):
                raise
            await self.ensure_group()

    async def _item(self, consumer: str, msg_id: Any, fields: dict[Any, Any]) -> QueueItem | None:
        """The entry as an item; a malformed one (no item can be made of it, so no batch's
        line can fail with it) is logged and removed, not delivered again and again."""
        try:
            return QueueItem.from_entry(msg_id, fields)
        except (ValueError, TypeError, AttributeError) as exc:
            entry = _s(msg_id)
            log.error(
                "batch_entry_malformed", worker=consumer, entry=entry, exc_type=type(exc).__name__
            )
            await self.redis.xack(self._stream, GROUP, entry)
            await self.redis.xdel(self._stream, entry)
            return None

    async def _job(self, consumer: str, msg_id: Any, fields: dict[Any, Any]) -> ResponseJob | None:
        """`_item` for the priority lane."""
        try:
            return ResponseJob.from_entry(msg_id, fields)
        except (ValueError, TypeError, AttributeError) as exc:
            entry = _s(msg_id)
            log.error(
                "response_entry_malformed",
                worker=consumer,
                entry=entry,
                exc_type=type(exc).__name__,
            )
            await self.redis.xack(self._responses, GROUP, entry)
            await self.redis.xdel(self._responses, entry)
            return None

    # ------------------------------------------------------------------ one response

    async def conclude_response(self, job: ResponseJob) -> None:
        """Acknowledge and drop a background response's entry: it will not be delivered again
        (its final state is stored, or it may not run)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._responses, GROUP, job.msg_id)
            pipe.xdel(self._responses, job.msg_id)
            await pipe.execute()

    async def release_response(self, job: ResponseJob, *, requeue: bool) -> None:
        """`release` for a background response: acknowledged and, with `requeue`, queued again
        at once (at the end of the priority lane) for another worker."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._responses, GROUP, job.msg_id)
            pipe.xdel(self._responses, job.msg_id)
            if requeue:
                pipe.xadd(self._responses, job.fields())
            await pipe.execute()

    # ------------------------------------------------------------------ one item

    async def start_item(self, item: QueueItem, worker: str) -> tuple[StartOutcome, int]:
        """May this item run now? ('run', starts so far, this one included: a count that keeps
        growing means it keeps killing workers) / ('skip', 0): its batch is not in progress or
        is sealed / ('done', 0): it has its result. Only 'run' marks it running by `worker`;
        after 'skip' or 'done' the caller lets go of it (`release`)."""
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
        """Store the item's one result (if it has none yet) and acknowledge the entry, at once:
        'written', 'duplicate' (another delivery wrote first) or 'sealed' (the batch ended).

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
                k.images(item.batch_id),
            ],
            args=[
                item.custom_id,
                record.dumps(),
                "completed" if record.kind == "output" else "failed",
                usage.get("input_tokens", 0),
                usage.get("output_tokens", 0),
                usage.get("reasoning_tokens", 0),
                usage.get("cached_tokens", 0),
                worker,
                len(item.body),
                *images,
            ],
        )
        await self._park(keys=[k.stream(), k.delayed()], args=[GROUP, item.msg_id, "", 0])
        return _s(outcome)  # type: ignore[return-value]

    async def dead_letter(self, item: QueueItem, failure: ResultRecord, *, worker: str) -> bool:
        """Give up on an item (it used its tries, or keeps killing workers): its `failure` (an
        error line) becomes its one result and the entry is acknowledged, so it is never
        delivered again. Whether this was the result written (see `finish_item`)."""
        if failure.kind != "error":
            raise ValueError("a dead-lettered item's result is an error line")
        written = await self.finish_item(item, failure, worker=worker) == "written"
        if written:
            await self.redis.hincrby(self.keys.queue_stats(), "dead", 1)
        return written

    async def retry_later(self, item: QueueItem, *, due: float, worker: str) -> bool:
        """Acknowledge the entry and park the item (next attempt) until `due` (epoch s), at
        once; false if its batch was sealed (the item is dropped: it can have no result)."""
        payload = {
            _s(key): (value.decode() if isinstance(value, bytes) else value)
            for key, value in item.fields(attempt=item.attempt + 1).items()
        }
        # Two parked tries of one item (two deliveries that both failed) stay two members.
        payload["nonce"] = secrets.token_hex(4)
        k = self.keys
        sealed = await self._unmark(
            keys=[k.running(item.batch_id), k.batch(item.batch_id)], args=[item.custom_id, worker]
        )
        parked = b"" if sealed else orjson.dumps(payload)
        await self._park(keys=[k.stream(), k.delayed()], args=[GROUP, item.msg_id, parked, due])
        if not sealed:
            await self.redis.hincrby(self.keys.queue_stats(), "retried", 1)
        return not sealed

    async def release(self, item: QueueItem, *, worker: str, requeue: bool) -> None:
        """Let go of an item: acknowledge it and, with `requeue` (a drain that ran out of
        time), queue it again at once, same attempt, for another worker."""
        fields: list[Any] = []
        for key, value in item.fields().items():
            fields += [key, value]
        k = self.keys
        await self._unmark(
            keys=[k.running(item.batch_id), k.batch(item.batch_id)], args=[item.custom_id, worker]
        )
        await self._requeue(
            keys=[k.stream()], args=[GROUP, item.msg_id, "1" if requeue else "0", *fields]
        )

    async def stats(self) -> QueueStats:
        """The queue's sizes now and its kept counts, in one round trip of cheap commands
        (XLEN, the XPENDING summary, ZCARD, HMGET); a stream or group not made yet reads 0."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self._stream)
            pipe.xpending(self._stream, GROUP)
            pipe.xlen(self._responses)
            pipe.xpending(self._responses, GROUP)
            pipe.zcard(self.keys.delayed())
            pipe.hmget(self.keys.queue_stats(), ["retried", "dead"])
            (
                items,
                items_pending,
                responses,
                responses_pending,
                delayed,
                counts,
            ) = await pipe.execute(raise_on_error=False)
        for value in (items, items_pending, responses, responses_pending, delayed, counts):
            if isinstance(value, Exception) and not isinstance(value, ResponseError):
                raise value  # a connection error; NOGROUP / no such key read as empty
        retried, dead = counts if isinstance(counts, list) else (None, None)
        return QueueStats(
            items=_count(items),
            items_in_flight=_pending(items_pending),
            responses=_count(responses),
            responses_in_flight=_pending(responses_pending),
            delayed=_count(delayed),
            retried=int(retried or 0),
            dead=int(dead or 0),
        )

    # ------------------------------------------------------------------ who runs what

    async def running_workers(self, batch_id: str) -> dict[str, str]:
        """custom_id → the worker running it now, for the batch's started, unfinished items."""
        raw = await self.redis.hgetall(self.keys.running(batch_id))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def workers(self, *, limit: int = 100) -> list[WorkerState]:
        """The workers Redis knows of, by name: those with a live heartbeat key, and the
        consumers of the queue's group (a consumer without a heartbeat is a worker that died
        or stopped; its pending entries wait for a reclaim). At most `limit`, live ones first.
        """
        pattern = _glob_escape(self.keys.worker("")) + "*"
        names: set[str] = set()
        async for key in self.redis.scan_iter(match=pattern, count=200):
            names.add(_s(key)[len(self.keys.worker("")) :])
            if len(names) >= limit:
                break
        try:
            consumers = await self.redis.xinfo_consumers(self._stream, GROUP)
        except ResponseError as exc:
            if "no such key" not in str(exc).lower() and not _lost_group(exc):
                raise
            consumers = []  # no batch was ever queued, or Redis lost the stream
        by_name = {_s(c.get("name")): c for c in consumers}
        states = [
            WorkerState(
                name=name,
                alive=name in names,
                pending=int(by_name[name].get("pending", 0)) if name in by_name else 0,
                idle_seconds=(
                    int(by_name[name].get("idle", 0)) / 1000 if name in by_name else None
                ),
            )
            for name in names | set(by_name)
        ]
        states.sort(key=lambda w: (not w.alive, w.name))
        return states[:limit]

    async def seal_when_idle(self, batch_id: str) -> bool:
        """Seal the batch if no live worker (one with a heartbeat) runs one of its items."""
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

    async def forget_idle_consumers(self, keep: str, *, idle: float) -> None:
        """Drop the group's consumers (but `keep`) that hold no entries and were idle for
        `idle` seconds: consumer names are per process, so dead workers' names pile up."""
        for stream in (self._stream, self._responses):
            try:
                consumers = await self.redis.xinfo_consumers(stream, GROUP)
            except ResponseError as exc:
                if not _lost_group(exc) and "no such key" not in str(exc):
                    raise
                continue
            for consumer in consumers:
                name = _s(consumer.get("name"))
                if (
                    name != keep
                    and int(consumer.get("pending", 0)) == 0
                    and int(consumer.get("idle", 0)) > idle * 1000
                ):
                    await self.redis.xgroup_delconsumer(stream, GROUP, name)
