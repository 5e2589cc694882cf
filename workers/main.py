"""`cascade worker`: the worker process.

A worker registers itself in Redis (a heartbeat key with a TTL, so `cascade up`, the batch
coordinator and the operator can see it) and consumes batch items and background responses
(`workers.consumer`).
The consumer loop runs under `app.batches.supervise` (a loop that dies is started again).
Contract: the heartbeat key `cascade:workers:<name>` exists while the worker runs and expires
within `HEARTBEAT_TTL` seconds of it dying; a graceful stop (SIGTERM/SIGINT) drains in-flight
items within `CASCADE_BATCH_DRAIN_GRACE` seconds, then deletes the key at once.
Workers need Redis and the runtime; images given as uploaded file ids or server paths also
need the API's `CASCADE_STATE_DIR` (and `CASCADE_LOCAL_IMAGE_DIRS`) on the same filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app import metrics, tracing
from app.agent.responses_turn import ResponsesServices
from app.batches.config import BatchSettings, load_batch_settings
from app.batches.keys import BatchKeys
from app.batches.queue import JobQueue
from app.batches.supervise import supervise
from app.config import Settings
from app.redis_client import RedisSettings, redis_client
from app.runtime.client import SGLangClient
from app.services import open_services
from app.worker_metrics import push_loop
from workers.consumer import BatchWorker
from workers.tuning import batch_priority, inflight_target, runtime_server_info

log = structlog.get_logger(__name__)

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15
RUNTIME_REFRESH = 60.0
CONSUMER_IDLE_FORGET = 3600.0


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def _heartbeat(
    client: aioredis.Redis, key: str, stop: asyncio.Event, worker: BatchWorker
) -> None:
    while not stop.is_set():
        try:
            await client.set(key, "alive", ex=HEARTBEAT_TTL)
            await _forget_idle_consumers(worker)
        except RedisError as exc:
            log.warning("worker_redis_unavailable", worker=worker.name, exc_type=type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL)


async def _forget_idle_consumers(worker: BatchWorker) -> None:
    """Drop consumers of dead workers that hold nothing (names are per process)."""
    with contextlib.suppress(RedisError):
        await worker.queue.forget_idle_consumers(worker.name, idle=CONSUMER_IDLE_FORGET)


async def _track_runtime(worker: BatchWorker, config: BatchSettings, client: SGLangClient) -> None:
    """Keep the batch priority and the in-flight target in line with the runtime's settings."""
    while True:
        info = await runtime_server_info(client)
        if info is not None:
            priority = batch_priority(config, info)
            inflight = inflight_target(config, info)
            if (priority, inflight) != (worker.priority, worker.inflight):
                log.info("batch_tuning", worker=worker.name, priority=priority, inflight=inflight)
                worker.priority, worker.inflight = priority, inflight
        await asyncio.sleep(RUNTIME_REFRESH if info is not None else 5.0)


def worker_redis_settings(config: BatchSettings) -> RedisSettings:
    """The Redis client settings of a worker: a reply timeout that outlasts the queue read's
    BLOCK, so an idle read is never mistaken for a frozen Redis."""
    redis = RedisSettings.load()
    floor = config.batch_block_ms / 1000 + 1.0
    if redis.redis_socket_timeout >= floor:
        return redis
    return redis.model_copy(update={"redis_socket_timeout": floor})


async def run_worker(
    settings: Settings, *, name: str | None = None, config: BatchSettings | None = None
) -> int:
    if not settings.redis_url:
        log.error("worker_needs_redis", detail="set CASCADE_REDIS_URL (or use `cascade up`)")
        return 2
    config = config or load_batch_settings()
    name = name or default_name()
    metrics.set_default_door("batch")  # the runs of this process are batch items
    traced = tracing.setup("cascade-worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = redis_client(settings.redis_url, worker_redis_settings(config))
    try:
        async with opened_worker(
            client, settings, config, name=name, inflight=inflight_target(config, None)
        ) as (worker, runtime_client):
            await _serve(client, worker, runtime_client, config, stop)
    finally:
        await client.aclose()
        if traced:
            tracing.shutdown()
    return 0


@contextlib.asynccontextmanager
async def opened_worker(
    client: aioredis.Redis,
    settings: Settings,
    config: BatchSettings,
    *,
    name: str,
    inflight: int | None = None,
    store: JobQueue | None = None,
) -> AsyncIterator[tuple[BatchWorker, SGLangClient]]:
    """A `BatchWorker` with the services and runtime client it uses, closed on exit (`store`:
    the queue it works with, e.g. a `BatchStore`; by default one over `client`)."""
    services = await open_services(client, settings, batch_settings=config)
    worker = BatchWorker(
        client,
        name=name,
        config=config,
        turn=services.turn,
        priority=config.batch_priority,
        inflight=inflight,
        queue=store,
        responses=ResponsesServices(
            turn=services.turn,
            store=services.responses,
            sealer=services.sealer,
            sessions=services.sessions,
            context_length=services.runtime_client.context_length,
        ),
    )
    try:
        yield worker, services.runtime_client
    finally:
        await services.aclose()


async def push_metrics(
    client: aioredis.Redis, name: str, stop: asyncio.Event, config: BatchSettings
) -> None:
    """This worker's metrics, pushed for the API's /metrics (`app.worker_metrics`)."""
    interval = config.batch_metrics_interval
    await push_loop(client, name, stop, prefix=config.key_prefix, interval=interval)


async def consume(worker: BatchWorker, stop: asyncio.Event) -> None:
    """The worker's consumer loop until `stop`, restarted whenever it dies."""
    await supervise(f"batch_worker {worker.name}", worker.run, stop)


async def _serve(
    client: aioredis.Redis,
    worker: BatchWorker,
    runtime_client: SGLangClient,
    config: BatchSettings,
    stop: asyncio.Event,
) -> None:
    name = worker.name
    key = BatchKeys(config.key_prefix).worker(name)
    with contextlib.suppress(RedisError):
        await client.set(key, "alive", ex=HEARTBEAT_TTL)
    log.info("worker_started", worker=name, inflight=worker.inflight)
    background = [
        asyncio.create_task(_heartbeat(client, key, stop, worker)),
        asyncio.create_task(_track_runtime(worker, config, runtime_client)),
        asyncio.create_task(push_metrics(client, name, stop, config)),
    ]
    try:
        await consume(worker, stop)
    finally:
        stop.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        with contextlib.suppress(RedisError):
            await client.delete(key)
        log.info("worker_stopped", worker=name, processed=worker.processed)
