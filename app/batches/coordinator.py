"""The batch coordinator: validates input files, feeds items to the queue, writes result files.

It runs inside the API process (the one that holds the files); workers need only Redis and the
runtime. One coordinator is active at a time across API processes (a lease: the same
`RedisLock` the sessions use, renewed while held); all of its progress lives in Redis, so
another process (or this one after a restart) resumes it.

Per batch, each pass:
- `validating`: read the input file as a stream, check every line, record the bad ones (with
  their line numbers), count; then `in_progress`. An unusable file as a whole → `failed`.
- `in_progress`: queue the next lines while fewer than `batch_feed_window` items (and
  `batch_feed_bytes` bytes) are queued but unfinished; once every item has its result →
  `finalizing` → the files are written → `completed`. Past `expires_at` → sealed → `expired`.
- `cancelling`: once no live worker runs one of its items → sealed → files → `cancelled`.

A batch whose processing raises an unexpected exception (anything but Redis or file system
errors, which are retried) ends at once: `failed` with a `batch_internal_error`, or `cancelled`
if it was being cancelled. The other batches go on.

Files are written in input order in one streaming pass over the input: for each line its
validation error, its result, or (never ran) a `batch_cancelled`/`batch_expired` error line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app.batches.config import BatchSettings
from app.batches.jsonl import Line, LineReader
from app.batches.lines import (
    FileKind,
    ResultRecord,
    invalid_line,
    never_ran_line,
)
from app.batches.models import FINAL_STATUSES, BatchObject, LineError
from app.batches.store import BatchStore
from app.batches.validate import InvalidLine, check_line, parse_line
from app.config import Settings
from app.errors import CascadeError, ConflictError, NotFoundError
from app.media.files import FileObject, FileStore, FileWriter
from app.sessions.lock import RedisLock
from tools.registry import ToolPolicy, ToolRegistry

log = structlog.get_logger(__name__)

_CHUNK_LINES = 500
_WRITE_CHUNK = 1 << 18


class _Output:
    """One result file being written (created on its first line)."""

    def __init__(self, files: FileStore, owner: str, filename: str) -> None:
        self.files = files
        self.owner = owner
        self.filename = filename
        self.writer: FileWriter | None = None
        self.buffer: list[bytes] = []
        self.size = 0
        self.lines = 0

    async def add(self, line: dict[str, Any]) -> None:
        data = orjson.dumps(line) + b"\n"
        self.buffer.append(data)
        self.size += len(data)
        self.lines += 1
        if self.size >= _WRITE_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.writer = self.files.writer(self.owner, self.filename, purpose="batch_output")
        data = b"".join(self.buffer)
        self.buffer, self.size = [], 0
        await self.writer.write(data)

    async def commit(self, expires_after: int | None) -> FileObject | None:
        await self.flush()
        if self.writer is None:
            return None
        return await self.writer.commit("batch_output", expires_after=expires_after)

    async def abort(self) -> None:
        if self.writer is not None:
            await self.writer.abort()


class Coordinator:
    """Drives every active batch; `run(stop)` until `stop` is set."""

    def __init__(
        self,
        redis: aioredis.Redis,
        files: FileStore,
        settings: Settings,
        batch_settings: BatchSettings,
        registry: ToolRegistry | None,
        policy: ToolPolicy,
        *,
        store: BatchStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.files = files
        self.settings = settings
        self.config = batch_settings
        self.registry = registry
        self.policy = policy  # the operator's tool policy, as chat requests get it
        self.store = store or BatchStore(redis, prefix=batch_settings.key_prefix)
        self.clock = clock
        # The coordinator lease: renewed while held; a process that dies lets it expire and
        # another one takes over after `batch_lease_seconds`.
        self.lease = RedisLock(
            redis,
            self.store.keys.coordinator_lease(),
            ttl=batch_settings.batch_lease_seconds,
            wait=0,
            message="another process coordinates batches",
        )
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # batch id → (failures in a row, monotonic time before which it is not retried)
        self.backoff: dict[str, tuple[int, float]] = {}
        self.readers: dict[str, tuple[IO[bytes], LineReader]] = {}
        self._leased = False

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Coordinate until `stop` is set. Redis and file system errors are waited out; an
        exception from one batch ends that batch only; anything else ends `run` (after it let
        go of its tasks and the lease), for its supervisor to start it again."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if await self.hold_lease():
                        await self.step()
                    failures = 0
                except (RedisError, OSError) as exc:
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.warning("batch_coordinator_redis", exc_type=type(exc).__name__)
                    await self._drop_readers()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.batch_poll_interval)
        finally:
            for task in self.tasks.values():
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await self._drop_readers()
            if self._leased:
                self._leased = False
                await self.lease.release()

    async def hold_lease(self) -> bool:
        """Whether this coordinator may coordinate now: it keeps the lease it holds (the lock
        renews it in the background) or takes it when no one holds it. One whose lease was
        lost (it expired, and another process took it) stops coordinating until it can take
        the lease again. A `RedisError` propagates (the lease is then unknown)."""
        if self._leased and self.lease.lost:
            self._leased = False
            await self.lease.release()
            log.info("batch_coordinator_lease", held=False)
        if not self._leased:
            try:
                await self.lease.acquire()
            except ConflictError:
                return False
            self._leased = True
            log.info("batch_coordinator_lease", held=True)
        return True

    async def step(self) -> None:
        """One pass over every active batch."""
        self.tasks = {k: t for k, t in self.tasks.items() if not t.done()}
        now = time.monotonic()
        for batch_id in await self.store.active_ids():
            if batch_id in self.tasks or self.backoff.get(batch_id, (0, 0.0))[1] > now:
                continue
            try:
                batch = await self.store.load(batch_id)
                if batch is None:
                    await self.store.forget(batch_id)
                    await self._close_reader(batch_id)
                    continue
                await self._advance(batch)
            except (RedisError, OSError):
                raise  # the store is away: the whole pass waits (see `run`)
            except Exception as exc:
                # One batch's problem is that batch's: it ends, and the others go on.
                await self._abandon(batch_id, exc)

    def _spawn(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guarded(batch_id, work))
        self.tasks[batch_id] = task

    async def _guarded(self, batch_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run one batch's long step. After a Redis or file system error, wait (doubling,
        ≤ 60 s) before the next try; any other exception ends the batch (`_abandon`)."""
        try:
            try:
                await work
            except (RedisError, OSError):
                raise
            except Exception as exc:
                await self._abandon(batch_id, exc)
        except (RedisError, OSError) as exc:
            log.warning("batch_task_interrupted", batch_id=batch_id, exc_type=type(exc).__name__)
            failures = self.backoff.get(batch_id, (0, 0.0))[0] + 1
            self.backoff[batch_id] = (failures, time.monotonic() + min(60.0, 0.5 * 2**failures))
        else:
            self.backoff.pop(batch_id, None)

    async def _abandon(self, batch_id: str, exc: Exception) -> None:
        """End a batch whose processing raised unexpectedly (a retry would raise again).

        A batch being cancelled becomes `cancelled` (a cancel always finishes), any other one
        `failed`; either way with a `batch_internal_error` in its errors and no files. It is
        sealed first, so no result lands after it ended.
        """
        log.error("batch_task_failed", batch_id=batch_id, exc_type=type(exc).__name__, exc_info=exc)
        await self._close_reader(batch_id)
        listed: list[LineError] = []
        try:
            batch = await self.store.load(batch_id)
        except (RedisError, OSError):
            raise
        except Exception:  # the stored object itself is unreadable: end it by its status
            status = await self.store.status(batch_id)
        else:
            if batch is None:
                return
            status, listed = batch.status, batch.errors
        if status is None or status in FINAL_STATUSES:
            await self.store.forget(batch_id)
            return
        await self.store.seal(batch_id)
        error = LineError(
            code="batch_internal_error",
            message="cascade failed while processing this batch; it was stopped",
        )
        errors = orjson.dumps([e.model_dump() for e in [error, *listed]])
        now = int(self.clock())
        live = ("validating", "in_progress", "finalizing", "cancelling")
        if status == "cancelling":
            moved = await self.store.transition(
                batch_id, live, "cancelled", cancelled_at=now, errors=errors
            )
        else:
            moved = await self.store.transition(
                batch_id, live, "failed", failed_at=now, errors=errors
            )
        if moved:
            await self.store.retire(batch_id, self.config.batch_retention_days * 86400)
        log.info("batch_abandoned", batch_id=batch_id, status=status, moved=moved)

    async def _advance(self, batch: BatchObject) -> None:
        now = self.clock()
        status = batch.status
        if batch.is_final:
            await self.store.retire(batch.id, self.config.batch_retention_days * 86400)
            await self._close_reader(batch.id)
            return
        expired = batch.expires_at is not None and now >= batch.expires_at
        if status in ("validating", "in_progress") and expired:
            await self.store.seal(batch.id)
            self._spawn(batch.id, self._finalize(batch, "expired"))
        elif status == "validating":
            self._spawn(batch.id, self._validate(batch))
        elif status == "in_progress":
            if batch.feed_complete and batch.done >= batch.valid:
                if await self.store.transition(
                    batch.id, ("in_progress",), "finalizing", finalizing_at=int(now)
                ):
                    self._spawn(batch.id, self._finalize(batch, "completed"))
            elif not batch.feed_complete:
                await self._feed(batch)
        elif status == "cancelling":
            await self._close_reader(batch.id)
            if batch.sealed or await self.store.seal_when_idle(batch.id):
                self._spawn(batch.id, self._finalize(batch, "cancelled"))
        elif status == "finalizing":
            self._spawn(batch.id, self._finalize(batch, "completed"))

    # ------------------------------------------------------------------ validation

    async def _fail(self, batch: BatchObject, code: str, message: str) -> None:
        error = LineError(code=code, message=message)
        await self.store.transition(
            batch.id,
            ("validating",),
            "failed",
            failed_at=int(self.clock()),
            errors=orjson.dumps([error.model_dump()]),
        )
        log.info("batch_failed", batch_id=batch.id, code=code)

    async def _open_input(self, batch: BatchObject) -> IO[bytes] | None:
        try:
            obj = await self.files.get(batch.owner, batch.input_file_id)
            if obj.purpose != "batch":
                return None
            return await self.files.open(batch.owner, batch.input_file_id)
        except NotFoundError:
            return None

    async def _validate(self, batch: BatchObject) -> None:
        fh = await self._open_input(batch)
        if fh is None:
            await self._fail(
                batch,
                "invalid_input_file",
                f"input file {batch.input_file_id} not found or not uploaded with purpose 'batch'",
            )
            return
        try:
            reader = LineReader(fh, max_line_bytes=self.config.batch_max_line_bytes)
            total = valid = 0
            listed: list[LineError] = []
            pending: list[tuple[int, LineError]] = []
            invalid = 0
            seen: set[int] = set()
            while (line := await reader.next()) is not None:
                total += 1
                if total > self.config.batch_max_lines:
                    await self._fail(
                        batch,
                        "too_many_requests",
                        f"the input holds more than {self.config.batch_max_lines} requests",
                    )
                    return
                result = check_line(
                    line,
                    endpoint=batch.endpoint,
                    settings=self.settings,
                    registry=self.registry,
                    policy=self.policy,
                    seen=seen,
                )
                if isinstance(result, InvalidLine):
                    invalid += 1
                    pending.append((line.number, result.error))
                    if len(listed) < self.config.batch_max_errors_listed:
                        listed.append(result.error)
                else:
                    valid += 1
                if total % _CHUNK_LINES == 0:
                    await self.store.record_invalid(batch.id, pending)
                    pending = []
                    if await self.store.status(batch.id) != "validating":
                        return  # cancelled meanwhile; finalization reads the file again
                    await asyncio.sleep(0)
            await self.store.record_invalid(batch.id, pending)
        finally:
            await asyncio.to_thread(fh.close)
        if total == 0:
            await self._fail(batch, "empty_file", "the input file holds no requests")
            return
        await self.store.set_fields(
            batch.id,
            total=total,
            failed=invalid,
            valid=valid,
            errors=orjson.dumps([e.model_dump() for e in listed]) if listed else "",
        )
        moved = await self.store.transition(
            batch.id, ("validating",), "in_progress", in_progress_at=int(self.clock())
        )
        log.info("batch_validated", batch_id=batch.id, total=total, invalid=invalid, moved=moved)

    # ------------------------------------------------------------------ feeding

    async def _reader(self, batch: BatchObject) -> LineReader | None:
        held = self.readers.get(batch.id)
        if held is not None and held[1].offset == batch.feed_offset:
            return held[1]
        await self._close_reader(batch.id)
        fh = await self._open_input(batch)
        if fh is None:
            return None
        reader = LineReader(
            fh,
            offset=batch.feed_offset,
            number=batch.feed_line,
            max_line_bytes=self.config.batch_max_line_bytes,
        )
        self.readers[batch.id] = (fh, reader)
        return reader

    async def _close_reader(self, batch_id: str) -> None:
        held = self.readers.pop(batch_id, None)
        if held is not None:
            await asyncio.to_thread(held[0].close)

    async def _drop_readers(self) -> None:
        for batch_id in list(self.readers):
            await self._close_reader(batch_id)

    async def _feed(self, batch: BatchObject) -> None:
        room = self.config.batch_feed_window - (batch.fed - batch.done)
        room_bytes = self.config.batch_feed_bytes - (batch.fed_bytes - batch.done_bytes)
        if room <= 0 or room_bytes <= 0:
            return
        reader = await self._reader(batch)
        if reader is None:
            # The input vanished mid-batch: what was not queued can never run, so the batch
            # ends with what was.
            await self.store.set_fields(batch.id, valid=batch.fed)
            await self.store.feed(
                batch, [], offset=batch.feed_offset, line=batch.feed_line, complete=True
            )
            log.warning("batch_input_vanished", batch_id=batch.id)
            return
        lines = await reader.batch(room, room_bytes)
        invalid = await self.store.invalid_lines(batch.id, [line.number for line in lines])
        items: list[tuple[str, int, bytes]] = []
        for line in lines:
            if line.number in invalid:
                continue
            data, cid = parse_line(line)
            if data is None or cid is None:  # validated before: cannot happen
                log.error("batch_line_changed", batch_id=batch.id, line=line.number)
                continue
            items.append((cid, line.number, orjson.dumps(data["body"])))
        complete = reader.exhausted
        await self.store.feed(
            batch, items, offset=reader.offset, line=reader.number, complete=complete
        )
        if complete:
            await self._close_reader(batch.id)

    # ------------------------------------------------------------------ files

    async def _finalize(self, batch: BatchObject, final: str) -> None:
        """Write the output and error files and move the batch to `final` (once)."""
        await self.store.seal(batch.id)
        outputs: dict[FileKind, _Output] = {
            "output": _Output(self.files, batch.owner, f"{batch.id}_output.jsonl"),
            "error": _Output(self.files, batch.owner, f"{batch.id}_error.jsonl"),
        }
        never_code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(
            final, "batch_item_lost"
        )
        never_message = {
            "batch_cancelled": "the batch was cancelled before this request ran",
            "batch_expired": "the batch's completion window ended before this request ran",
            "batch_item_lost": "this request has no result",
        }[never_code]
        try:
            fh = await self._open_input(batch)
            if fh is not None:
                try:
                    total, never = await self._assemble_in_order(
                        batch, fh, outputs, never_code, never_message
                    )
                finally:
                    await asyncio.to_thread(fh.close)
            else:
                total, never = await self._assemble_unordered(batch, outputs)
            expires = batch.output_expires_after
            out = await outputs["output"].commit(expires)
            err = await outputs["error"].commit(expires)
        except BaseException:
            for output in outputs.values():
                await output.abort()
            raise
        now = int(self.clock())
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}
        moved = await self.store.transition(
            batch.id,
            ("validating", "in_progress", "finalizing", "cancelling"),
            final,  # type: ignore[arg-type]
            output_file_id=out.id if out else None,
            error_file_id=err.id if err else None,
            total=total,
            completed=outputs["output"].lines,
            failed=outputs["error"].lines - never,
            **{stamp[final]: now},
        )
        if not moved:
            # Someone else finished it first: ours are spare copies.
            for obj in (out, err):
                if obj is not None:
                    with contextlib.suppress(CascadeError):
                        await self.files.delete(batch.owner, obj.id)
            return
        await self.store.retire(batch.id, self.config.batch_retention_days * 86400)
        log.info(
            "batch_finished",
            batch_id=batch.id,
            status=final,
            total=total,
            output_lines=outputs["output"].lines,
            error_lines=outputs["error"].lines,
        )

    async def _assemble_in_order(
        self,
        batch: BatchObject,
        fh: IO[bytes],
        outputs: dict[FileKind, _Output],
        never_code: str,
        never_message: str,
    ) -> tuple[int, int]:
        """Write every line's outcome in input order; (lines, lines that never ran)."""
        reader = LineReader(fh, max_line_bytes=self.config.batch_max_line_bytes)
        total = never = 0
        while lines := await reader.batch(_CHUNK_LINES, 1 << 62):
            total += len(lines)
            invalid = await self.store.invalid_lines(batch.id, [line.number for line in lines])
            parsed: list[tuple[Line, str | None]] = [(line, parse_line(line)[1]) for line in lines]
            wanted = [cid for line, cid in parsed if cid is not None and line.number not in invalid]
            records = await self.store.results(batch.id, wanted)
            found: dict[str, ResultRecord | None] = dict(zip(wanted, records, strict=True))
            for line, cid in parsed:
                error = invalid.get(line.number)
                record = found.get(cid) if cid is not None and error is None else None
                if error is not None:
                    await outputs["error"].add(invalid_line(cid, error))
                elif record is not None:
                    await outputs[record.kind].add(record.line)
                else:
                    never += 1
                    message = f"line {line.number}: {never_message}"
                    await outputs["error"].add(
                        never_ran_line(cid, never_code, message, line.number)
                    )
        return total, never

    async def _assemble_unordered(
        self, batch: BatchObject, outputs: dict[FileKind, _Output]
    ) -> tuple[int, int]:
        log.warning("batch_input_missing_at_finalization", batch_id=batch.id)
        total = 0
        async for record in self.store.scan_results(batch.id):
            await outputs[record.kind].add(record.line)
            total += 1
        async for error in self.store.scan_invalid(batch.id):
            await outputs["error"].add(invalid_line(None, error))
            total += 1
        return max(total, batch.request_counts.total), 0
