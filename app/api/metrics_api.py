"""`GET /metrics`: cascade's Prometheus metrics, with the batch queue's and every worker's.

Protected like the API (a Bearer key; open to everyone when auth is off, which is loopback only
unless the operator allowed more) unless `CASCADE_METRICS_PUBLIC=true`. Besides this process's
registry (`app.metrics`) a scrape reads, from Redis, the batch queue's sizes and counts
(`JobQueue.stats`: a handful of O(1) commands) and the registries workers pushed
(`app.worker_metrics`), their samples under a `worker` label. Without Redis, or with Redis not
answering, those are left out and `cascade_metrics_redis_ok` is 0.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError
from starlette.responses import Response

from app.api.auth import authenticate
from app.api.deps import ServicesDep
from app.batches.queue import JobQueue, QueueStats
from app.services import Services
from app.worker_metrics import (
    STALE_AFTER_PUSHES,
    MergedRegistry,
    WorkerMetricsStore,
    worker_families,
)

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request, services: ServicesDep) -> Response:
    if not services.settings.metrics_public:
        await authenticate(request)
    extra = await redis_families(services)
    return Response(generate_latest(MergedRegistry(extra)), media_type=CONTENT_TYPE_LATEST)


async def redis_families(services: Services) -> list[Metric]:
    """The queue's and the workers' families; `cascade_metrics_redis_ok` says if they could
    be read."""
    ok = GaugeMetricFamily(
        "cascade_metrics_redis_ok", "1 when this scrape could read the queue and the workers."
    )
    if services.redis is None:
        ok.add_metric([], 0)
        return [ok]
    prefix = services.batch_settings.key_prefix
    queue = services.batch_store or JobQueue(services.redis, prefix=prefix)
    store = WorkerMetricsStore(services.redis, prefix=prefix)
    max_age = services.batch_settings.batch_metrics_interval * STALE_AFTER_PUSHES
    try:
        stats = await queue.stats()
        pushed = await store.pushed(max_age=max_age)
    except (RedisError, OSError):
        ok.add_metric([], 0)
        return [ok]
    ok.add_metric([], 1)
    return [ok, *queue_families(stats), *worker_families(pushed)]


def queue_families(stats: QueueStats) -> list[Metric]:
    waiting = GaugeMetricFamily(
        "cascade_batch_queue_waiting",
        "Queue entries not yet delivered to a worker, by lane (items, responses).",
        labels=["lane"],
    )
    waiting.add_metric(["items"], max(0, stats.items - stats.items_in_flight))
    waiting.add_metric(["responses"], max(0, stats.responses - stats.responses_in_flight))
    in_flight = GaugeMetricFamily(
        "cascade_batch_queue_in_flight",
        "Queue entries delivered to a worker and not concluded yet, by lane.",
        labels=["lane"],
    )
    in_flight.add_metric(["items"], stats.items_in_flight)
    in_flight.add_metric(["responses"], stats.responses_in_flight)
    delayed = GaugeMetricFamily(
        "cascade_batch_queue_delayed", "Batch items parked until their retry is due."
    )
    delayed.add_metric([], stats.delayed)
    retried = CounterMetricFamily(
        "cascade_batch_items_retried", "Batch items parked for another try, ever (kept in Redis)."
    )
    retried.add_metric([], stats.retried)
    dead = CounterMetricFamily(
        "cascade_batch_items_dead", "Batch items dead-lettered, ever (kept in Redis)."
    )
    dead.add_metric([], stats.dead)
    return [waiting, in_flight, delayed, retried, dead]
