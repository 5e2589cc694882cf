"""The batch consumer: takes items from the job queue and runs each through the turn engine.

Delivery is at least once, results exactly once (see `app.batches.queue`, which does every
queue operation; this module decides what to do with an item):
- items are claimed from the queue; up to the in-flight target (`workers.tuning`) run at a
  time;
- the worker touches the entries it is working on, so only entries of a worker that stopped
  touching them (it died or hung) are reclaimed by others (after `batch_claim_idle` seconds);
- an item that fails in a way a retry may fix (runtime 5xx, timeouts, an image URL that could
  not be fetched) is parked with exponential backoff and jitter and tried again, up to
  `batch_max_attempts`; then its failure is its result (the error file). An item started more
  often than tries plus `batch_max_redeliveries` (it keeps killing workers) is dead-lettered;
- a request the runtime or cascade refuses (4xx) fails at once;
- when the runtime is unreachable (`RuntimeUnavailableError`) nothing fails: the item waits,
  the worker stops taking new items, checks the runtime's health, and resumes when it is back;
- Redis errors are retried with backoff; a result is never dropped while the worker lives;
- `stop` (SIGTERM): no new items; in-flight ones get `batch_drain_grace` seconds to finish,
  the rest are put back on the queue at once for other workers.

Background responses (`background: true` on `/v1/responses`) come on the queue's priority lane
and are read before batch items; each is made by `app.agent.responses_background` (the same
path as the door's), touched and reclaimed like an item, waits out runtime outages the same
way, and its entry is concluded once its end is stored (or it may not run). One that kept
killing workers (started more often than tries plus redeliveries) fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app import metrics
from app.agent.protocol import completion_body, completion_id, parse_chat_request
from app.agent.responses_background import BackgroundResponse
from app.agent.responses_turn import ResponsesServices
from app.agent.turn import TurnServices, assemble_turn
from app.batches.config import BatchSettings
from app.batches.lines import ResultRecord, failed_line, output_line
from app.batches.queue import JobQueue, QueueItem, ResponseJob
from app.errors import (
    CascadeError,
    InternalError,
    InvalidJsonAnswerError,
    InvalidRequestError,
    RuntimeUnavailableError,
)
from app.jsonbody import JsonBodyError, parse_json
from app.media.errors import FetchError, URLNotAllowedError
from app.media.intake import ImageBudget, ImageIntake

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Statuses that mean "this request cannot work as sent": retrying will not help.
_PERMANENT = frozenset({400, 401, 403, 404, 409, 413, 422})


class _Retryable(Exception):
    """An item failed in a way another try may fix."""

    def __init__(self, error: CascadeError) -> None:
        super().__init__(error.message)
        self.error = error


def is_permanent(error: CascadeError) -> bool:
    """Whether an item failure is final (a retry cannot help)."""
    if isinstance(error, FetchError) and not isinstance(error, URLNotAllowedError):
        # Unreachable or slow image hosts come back; a fetch that is too large does not.
        return error.code == "fetch_too_large"
    if isinstance(error, InvalidJsonAnswerError):
        return True  # the run already retried the answer once, with the reason
    return error.status in _PERMANENT


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds before try `attempt + 1`: exponential in the attempt, with ±50 % jitter."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return random.uniform(0.5 * delay, 1.5 * delay)


def usage_counts(body: dict[str, Any]) -> dict[str, int]:
    usage = body.get("usage") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "reasoning_tokens": int(usage.get("reasoning_tokens") or 0),
        "cached_tokens": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
    }


class SharedImages:
    """Single flight over the media intake: concurrent items naming the same image (the same
    photo asked several questions) wait for one fetch and decode instead of racing to do it
    each. Later items find the intake's own aliases (by URL and by content hash)."""

    def __init__(self, media: ImageIntake) -> None:
        self.media = media
        self.flights: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}

    async def ingest(
        self, parts: list[dict[str, Any]], *, owner: str, budget: ImageBudget
    ) -> list[dict[str, Any]]:
        """`parts` with images and videos replaced by `image_ref`/`video_ref` parts; `budget` is
        the item's limits."""
        out: list[dict[str, Any]] = []
        for index, part in enumerate(parts):
            if part.get("type") not in ("image_url", "video_url"):
                out.append(part)
                continue
            key = (
                owner,
                hashlib.sha256(orjson.dumps(part, option=orjson.OPT_SORT_KEYS)).hexdigest(),
            )
            flight = self.flights.get(key)
            if flight is not None:
                out.append(dict(await asyncio.shield(flight)))
                continue
            flight = asyncio.get_running_loop().create_future()
            flight.add_done_callback(_retrieve)
            self.flights[key] = flight
            try:
                [ref] = await self.media.ingest_message_parts([part], owner=owner, budget=budget)
            except BaseException as exc:
                if isinstance(exc, CascadeError) and exc.param == "content[0]":
                    exc.param = f"content[{index}]"
                flight.set_exception(exc)
                raise
            else:
                flight.set_result(ref)
            finally:
                self.flights.pop(key, None)
            out.append(ref)
        return out


def _retrieve(future: asyncio.Future[dict[str, Any]]) -> None:
    # A failed flight nobody else waited for must not be reported as "never retrieved".
    if not future.cancelled():
        future.exception()


class BatchWorker:
    """One worker process's consumer loop (`run(stop)`)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        name: str,
        config: BatchSettings,
        turn: TurnServices,
        priority: int | None = None,
        inflight: int | None = None,
        queue: JobQueue | None = None,
        responses: ResponsesServices | None = None,
    ) -> None:
        self.redis = redis
        self.name = name
        self.config = config
        # The process's turn services (`Services.turn`): the same runtime, registry, media and
        # operator tool policy the API's chat requests get, so an item runs under the policy
        # in force now even if it was queued under another one.
        self.turn_services = turn
        self.runtime = turn.runtime
        self.images = SharedImages(turn.media) if turn.media is not None else None
        self.priority = priority
        # Items kept in flight; `workers.tuning` may raise it once the runtime's slots are known.
        self.inflight = inflight or config.batch_inflight or 32
        self.queue = queue or JobQueue(redis, prefix=config.key_prefix)
        # What background responses need; None: this worker leaves the priority lane alone.
        self.responses = responses
        self.tasks: dict[str, asyncio.Task[None]] = {}  # by entry id (items) or `job.key`
        self.items: dict[str, QueueItem] = {}
        self.jobs: dict[str, ResponseJob] = {}  # by `job.key`
        self.runtime_ok = asyncio.Event()
        self.runtime_ok.set()
        self._probe: asyncio.Task[None] | None = None
        self.processed = 0  # results written by this worker (for tests and logs)

    @property
    def store(self) -> JobQueue:
        """The queue under the name of what a worker is handed (a `BatchStore` is its
        batches' queue); set-up code reaches the key layout through it."""
        return self.queue

    # ------------------------------------------------------------------ the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain (see the module docstring).

        Redis errors are waited out; an unexpected exception ends `run` without draining (the
        items in flight go on) for its supervisor (`app.batches.supervise`) to start it again.
        """
        next_move = next_refresh = next_claim = 0.0
        failures = 0
        refresh_every = self.config.batch_claim_idle / 3
        claim_every = max(0.2, self.config.batch_claim_idle / 4)
        move_every = min(0.5, self.config.batch_retry_base / 4)
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.queue.ensure_group()
                    group_ready = True
                now = time.monotonic()
                if now >= next_move:
                    await self.queue.move_due()
                    next_move = now + move_every
                if now >= next_refresh:
                    await self._refresh()
                    next_refresh = now + refresh_every
                free = self.inflight - len(self.tasks)
                if free <= 0 or not self.runtime_ok.is_set():
                    await self._wait_for_room(stop, 0.25)
                    continue
                if now >= next_claim:
                    for job in await self._reclaim_responses(free):
                        self._spawn_response(job)
                    free = self.inflight - len(self.tasks)
                    for item in await self._reclaim(free) if free > 0 else []:
                        self._spawn(item)
                    next_claim = now + claim_every
                    free = self.inflight - len(self.tasks)
                jobs = await self._read_responses(free) if free > 0 else []
                for job in jobs:
                    self._spawn_response(job)
                # Batch items only when the priority lane was empty: the next pass reads it
                # again first (at once, with no wait).
                free = self.inflight - len(self.tasks)
                if free > 0 and not jobs:
                    for item in await self._read(free):
                        self._spawn(item)
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                await self._pause_after_error(stop, exc, failures)
        await self._drain()

    async def _pause_after_error(self, stop: asyncio.Event, exc: Exception, failures: int) -> None:
        if failures in (1, 10) or failures % 100 == 0:
            log.warning("worker_redis_error", worker=self.name, exc_type=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(2.0, 0.05 * 2 ** min(failures, 6)))

    async def _wait_for_room(self, stop: asyncio.Event, seconds: float) -> None:
        waiters: list[asyncio.Future[Any]] = list(self.tasks.values())
        stopper = asyncio.ensure_future(stop.wait())
        waiters.append(stopper)
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()

    async def _read(self, count: int) -> list[QueueItem]:
        return await self.queue.claim(self.name, count, block_ms=self.config.batch_block_ms)

    async def _reclaim(self, count: int) -> list[QueueItem]:
        """Items of workers that went silent for `batch_claim_idle` seconds."""
        items = []
        for item in await self.queue.reclaim(self.name, count, idle=self.config.batch_claim_idle):
            if item.msg_id in self.tasks:
                continue  # ours already (we were slow to refresh)
            log.info(
                "batch_item_reclaimed",
                worker=self.name,
                batch_id=item.batch_id,
                custom_id=item.custom_id,
            )
            items.append(item)
        return items

    async def _read_responses(self, count: int) -> list[ResponseJob]:
        if self.responses is None:
            return []
        return await self.queue.claim_responses(self.name, count)

    async def _reclaim_responses(self, count: int) -> list[ResponseJob]:
        """Background responses of workers that went silent for `batch_claim_idle` seconds."""
        if self.responses is None or count <= 0:
            return []
        jobs = []
        idle = self.config.batch_claim_idle
        for job in await self.queue.reclaim_responses(self.name, count, idle=idle):
            if job.key in self.tasks:
                continue  # ours already (we were slow to refresh)
            log.info("background_response_reclaimed", worker=self.name, response_id=job.response_id)
            jobs.append(job)
        return jobs

    async def _refresh(self) -> None:
        """Touch the entries we are working on (we are alive)."""
        await self.queue.touch(self.name, list(self.items))
        if self.jobs:
            await self.queue.touch_responses(self.name, [j.msg_id for j in self.jobs.values()])

    def _spawn(self, item: QueueItem) -> None:
        self.items[item.msg_id] = item
        task = asyncio.create_task(self._process(item), name=f"item-{item.custom_id}")
        self.tasks[item.msg_id] = task

        def done(_: asyncio.Task[None], msg_id: str = item.msg_id) -> None:
            self.tasks.pop(msg_id, None)
            self.items.pop(msg_id, None)

        task.add_done_callback(done)

    def _spawn_response(self, job: ResponseJob) -> None:
        self.jobs[job.key] = job
        task = asyncio.create_task(self._process_response(job), name=job.key)
        self.tasks[job.key] = task

        def done(_: asyncio.Task[None], key: str = job.key) -> None:
            self.tasks.pop(key, None)
            self.jobs.pop(key, None)

        task.add_done_callback(done)

    async def _drain(self) -> None:
        if self.tasks:
            log.info("worker_draining", worker=self.name, in_flight=len(self.tasks))
            _, pending = await asyncio.wait(
                list(self.tasks.values()), timeout=self.config.batch_drain_grace
            )
            if pending:
                items = [self.items[m] for m in list(self.items) if self.tasks.get(m) in pending]
                jobs = [self.jobs[k] for k in list(self.jobs) if self.tasks.get(k) in pending]
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for item in items:
                    with contextlib.suppress(RedisError, OSError):
                        await self.queue.release(item, worker=self.name, requeue=True)
                for job in jobs:
                    with contextlib.suppress(RedisError, OSError):
                        await self.queue.release_response(job, requeue=True)
                log.info("worker_released_items", worker=self.name, count=len(items) + len(jobs))
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe

    # ------------------------------------------------------------------ one item

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation until it succeeds (the caller's task may be cancelled)."""
        delay = 0.05
        while True:
            try:
                return await op()
            except (RedisError, OSError) as exc:
                log.warning("worker_redis_retry", worker=self.name, exc_type=type(exc).__name__)
                metrics.REDIS_ERRORS.labels("worker").inc()
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    async def _process(self, item: QueueItem) -> None:
        try:
            await self._process_item(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never expected: the item fails with a reason
            log.error(
                "batch_item_crashed",
                worker=self.name,
                batch_id=item.batch_id,
                custom_id=item.custom_id,
                exc_type=type(exc).__name__,
                exc_info=exc,
            )
            error = InternalError(
                "cascade failed while running this request", code="batch_item_crashed"
            )
            record = ResultRecord("error", failed_line(item.custom_id, error, request_id=_rid()))
            try:
                await self._finish(item, record, None)
            except Exception as again:  # the entry stays pending: reclaimed, then dead-lettered
                log.error(
                    "batch_item_abandoned",
                    worker=self.name,
                    custom_id=item.custom_id,
                    exc_type=type(again).__name__,
                )

    async def _process_item(self, item: QueueItem) -> None:
        log_ = log.bind(worker=self.name, batch_id=item.batch_id, custom_id=item.custom_id)
        outcome, starts = await self._redis(lambda: self.queue.start_item(item, self.name))
        if outcome != "run":
            await self._redis(lambda: self.queue.release(item, worker=self.name, requeue=False))
            return
        limit = self.config.batch_max_attempts + self.config.batch_max_redeliveries
        if starts > limit:
            log_.warning("batch_item_dead_lettered", starts=starts)
            error = InternalError(
                f"the request was started {starts} times without finishing (it may crash "
                "the worker or the runtime)",
                code="batch_item_poison",
            )
            record = ResultRecord("error", failed_line(item.custom_id, error, request_id=_rid()))
            await self._dead_letter(item, record)
            return
        try:
            body = await self._execute(item)
        except _Retryable as retry:
            if item.attempt >= self.config.batch_max_attempts:
                log_.info("batch_item_failed", attempts=item.attempt, code=retry.error.code)
                record = ResultRecord(
                    "error", failed_line(item.custom_id, retry.error, request_id=_rid())
                )
                await self._dead_letter(item, record)
                return
            delay = backoff_delay(
                item.attempt, self.config.batch_retry_base, self.config.batch_retry_max
            )
            log_.info("batch_item_retry", attempt=item.attempt, delay=round(delay, 3))
            await self._redis(
                lambda: self.queue.retry_later(item, due=time.time() + delay, worker=self.name)
            )
            metrics.WORKER_ITEMS.labels("retried").inc()
            return
        except CascadeError as exc:
            log_.info("batch_item_refused", code=exc.code)
            record = ResultRecord("error", failed_line(item.custom_id, exc, request_id=_rid()))
            await self._finish(item, record, None)
            return
        record = ResultRecord("output", output_line(item.custom_id, body, request_id=_rid()))
        images = [image["sha256"] for image in body.get("cascade", {}).get("images", ())]
        await self._finish(item, record, usage_counts(body), images)

    async def _finish(
        self,
        item: QueueItem,
        record: ResultRecord,
        usage: dict[str, int] | None,
        images: list[str] | None = None,
    ) -> None:
        outcome = await self._redis(
            lambda: self.queue.finish_item(
                item, record, worker=self.name, usage=usage, images=images or ()
            )
        )
        if outcome == "written":
            self.processed += 1
            metrics.WORKER_ITEMS.labels("completed" if record.kind == "output" else "failed").inc()

    async def _dead_letter(self, item: QueueItem, failure: ResultRecord) -> None:
        if await self._redis(lambda: self.queue.dead_letter(item, failure, worker=self.name)):
            self.processed += 1
            metrics.WORKER_ITEMS.labels("dead").inc()

    async def _execute(self, item: QueueItem) -> dict[str, Any]:
        """The item's chat.completion body; waits out runtime outages (never fails on them)."""
        try:
            return await self._through_outages(lambda: self._run_once(item))
        except CascadeError as exc:
            if is_permanent(exc):
                raise
            raise _Retryable(exc) from None
        except Exception as exc:  # a bug or an unexpected library error: retry, log it
            log.exception("batch_item_crashed", custom_id=item.custom_id)
            raise _Retryable(InternalError("cascade failed while running this request")) from exc

    async def _run_once(self, item: QueueItem) -> dict[str, Any]:
        try:
            data = parse_json(item.body)
        except JsonBodyError as exc:
            raise InvalidRequestError(f"the queued request body: {exc}", param="body") from None
        req = parse_chat_request(data)
        turn = await assemble_turn(
            self.turn_services,
            req,
            owner=item.owner,
            stream=False,
            priority=self.priority,
            ingest=self.images.ingest if self.images is not None else None,
            ledger=False,  # a batch item is one-off: no client resends its conversation
        )
        run, images = turn.run, turn.images
        result = await run.run()
        model = req.model or await self.runtime.model_name()
        body = completion_body(result, cid=completion_id(), model=model, session_id=None)
        if images:
            body["cascade"]["images"] = images
        return body

    # ------------------------------------------------------------------ one background response

    async def _process_response(self, job: ResponseJob) -> None:
        assert self.responses is not None  # only claimed when set
        made = BackgroundResponse(
            self.responses,
            response_id=job.response_id,
            owner=job.owner,
            request=job.body,
            cancel_poll=self.config.response_cancel_poll,
        )
        log_ = log.bind(worker=self.name, response_id=job.response_id)
        try:
            starts = await self._redis(made.start)
            limit = self.config.batch_max_attempts + self.config.batch_max_redeliveries
            if starts == 0:
                log_.info("background_response_skipped")
            elif starts > limit:
                log_.warning("background_response_poison", starts=starts)
                error = InternalError(
                    f"the response was started {starts} times without finishing (it may crash "
                    "the worker or the runtime)",
                    code="response_poison",
                )
                await self._redis(lambda: made.fail(error))
            else:
                status = await self._make_response(made)
                log_.info("background_response_done", status=status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never expected: the response fails with a reason
            log_.error("background_response_crashed", exc_type=type(exc).__name__, exc_info=exc)
            crashed = InternalError("cascade failed while making this response")
            try:
                await made.fail(crashed)
            except Exception as again:  # the entry stays pending: reclaimed, started again
                log_.error("background_response_abandoned", exc_type=type(again).__name__)
                return
        await self._redis(lambda: self.queue.conclude_response(job))

    async def _make_response(self, made: BackgroundResponse) -> str:
        """Run it (waiting out runtime outages, as items do); a failure is its end."""
        ingest = self.images.ingest if self.images is not None else None
        try:
            return await self._through_outages(lambda: made.run(ingest=ingest))
        except CascadeError as exc:
            failed = await self._redis(functools.partial(made.fail, exc))
            return "failed" if failed else "stopped"

    # ------------------------------------------------------------------ runtime outages

    async def _through_outages(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`'s result, started again once the runtime is back after each outage it
        met (the runtime unavailable, or a connection that broke mid-response)."""
        while True:
            await self.runtime_ok.wait()
            try:
                return await attempt()
            except RuntimeUnavailableError as exc:
                self._runtime_down(exc)
            except httpx.TransportError as exc:
                # A connection that broke mid-response: the runtime went away under us.
                self._runtime_down(
                    RuntimeUnavailableError(
                        f"the runtime connection failed ({type(exc).__name__})", retry_after=1
                    )
                )

    def _runtime_down(self, exc: RuntimeUnavailableError) -> None:
        if self.runtime_ok.is_set():
            log.warning("worker_runtime_unavailable", worker=self.name, code=exc.code)
            self.runtime_ok.clear()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._wait_for_runtime(exc.retry_after))

    async def _wait_for_runtime(self, retry_after: float) -> None:
        await asyncio.sleep(min(retry_after, self.config.runtime_wait_interval))
        while True:
            health = await self.runtime.health()
            if health.reachable:
                log.info("worker_runtime_back", worker=self.name)
                self.runtime_ok.set()
                return
            await asyncio.sleep(self.config.runtime_wait_interval)


def _rid() -> str:
    return "req_" + secrets.token_hex(12)
