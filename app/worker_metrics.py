"""Workers' metrics through Redis: each worker pushes, the API's `/metrics` shows them all.

Workers are separate processes, often on other machines or in containers no scraper knows of;
so instead of a port per worker, each one writes its whole registry (`app.metrics.REGISTRY`,
in the text exposition format) into a hash of its own every `batch_metrics_interval` seconds
(`push_loop`), with a TTL of three intervals, and records itself in an index (a sorted set
scored by the push time). The API reads them at scrape time (`worker_families`) and adds each
worker's samples to its own under a `worker` label. A worker that dies stops pushing: its hash
expires and its index entry is dropped, so it disappears from `/metrics` within three
intervals; one that stops gracefully removes itself at once.

Keys (both under one hash tag, one Redis Cluster slot): `{prefix}:{metrics}:workers` (the
index) and `{prefix}:{metrics}:worker:<name>` (fields `exposition`, `at`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

import redis.asyncio as aioredis
import structlog
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.exceptions import RedisError

from app import metrics

log = structlog.get_logger(__name__)

# Missed pushes after which a worker counts as gone (its hash's TTL, the index's cut-off).
STALE_AFTER_PUSHES = 3


class WorkerMetricsStore:
    """The workers' pushed registries in Redis (see the module docstring)."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "cascade") -> None:
        self.redis = redis
        self.index = f"{prefix}:{{metrics}}:workers"
        self._prefix = f"{prefix}:{{metrics}}:worker:"

    def key(self, name: str) -> str:
        return self._prefix + name

    async def push(self, name: str, exposition: bytes, *, interval: float) -> None:
        """Store `name`'s registry for `STALE_AFTER_PUSHES` intervals."""
        now = time.time()
        ttl = max(1, math.ceil(interval * STALE_AFTER_PUSHES))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(name), mapping={"exposition": exposition, "at": now})
            pipe.expire(self.key(name), ttl)
            pipe.zadd(self.index, {name: now})
            await pipe.execute()

    async def remove(self, name: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(name))
            pipe.zrem(self.index, name)
            await pipe.execute()

    async def pushed(self, *, max_age: float) -> dict[str, bytes]:
        """worker name → its last exposition, for the workers that pushed within `max_age`
        seconds (older index entries are dropped on the way)."""
        now = time.time()
        await self.redis.zremrangebyscore(self.index, "-inf", now - max_age)
        names = [_text(n) for n in await self.redis.zrange(self.index, 0, -1)]
        if not names:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.key(name), "exposition")
            values = await pipe.execute()
        return {name: value for name, value in zip(names, values, strict=True) if value}


def worker_families(pushed: dict[str, bytes]) -> list[Metric]:
    """The pushed registries as metric families, each sample labelled with its worker."""
    families: dict[str, Metric] = {}
    for worker, exposition in sorted(pushed.items()):
        for family in text_string_to_metric_families(exposition.decode()):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
                for s in family.samples
            )
    return list(families.values())


class MergedRegistry:
    """A collector for one scrape: this process's registry, plus `extra` families merged in by
    name (a family both have gets the extra samples; the exposition has each name once)."""

    def __init__(self, extra: list[Metric]) -> None:
        self.extra = extra

    def collect(self) -> list[Metric]:
        families = {family.name: family for family in metrics.REGISTRY.collect()}
        for family in self.extra:
            own = families.get(family.name)
            if own is None:
                families[family.name] = family
            elif own.type == family.type:
                own.samples.extend(family.samples)
            # A family of the same name and another type cannot be shown with it: dropped.
        return list(families.values())


async def push_loop(
    redis: aioredis.Redis, name: str, stop: asyncio.Event, *, prefix: str, interval: float
) -> None:
    """Push this process's registry every `interval` seconds until `stop` (or cancelled), then
    remove it."""
    store = WorkerMetricsStore(redis, prefix=prefix)
    try:
        while not stop.is_set():
            try:
                await store.push(name, generate_latest(metrics.REGISTRY), interval=interval)
            except RedisError as exc:
                log.warning("worker_metrics_push_failed", worker=name, exc_type=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        # Also when cancelled: a worker that stops is gone from /metrics at once.
        with contextlib.suppress(RedisError, OSError):
            await store.remove(name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
