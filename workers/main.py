"""`cascade worker`: the worker process.

Today a worker registers itself in Redis (a heartbeat key with a TTL, so `cascade up` and the
operator can see it) and drains on SIGTERM; job consumption is added by the batch queue.
Contract: the heartbeat key `cascade:workers:<name>` exists while the worker runs and expires
within `HEARTBEAT_TTL` seconds of it dying; a graceful stop deletes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app.config import Settings

log = structlog.get_logger(__name__)

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_worker(settings: Settings, *, name: str | None = None) -> int:
    if not settings.redis_url:
        log.error("worker_needs_redis", detail="set CASCADE_REDIS_URL (or use `cascade up`)")
        return 2
    name = name or default_name()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = aioredis.Redis.from_url(settings.redis_url)
    key = f"cascade:workers:{name}"
    log.info("worker_started", worker=name)
    try:
        while not stop.is_set():
            try:
                await client.set(key, "alive", ex=HEARTBEAT_TTL)
            except RedisError as exc:
                log.warning("worker_redis_unavailable", worker=name, exc_type=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_INTERVAL)
    finally:
        with contextlib.suppress(RedisError):
            await client.delete(key)
        await client.aclose()
        log.info("worker_stopped", worker=name)
    return 0
