"""The Redis client every cascade process uses.

Contracts:
- Every command is bounded: connecting gives up after `redis_connect_timeout` seconds and a
  reply that does not come within `redis_socket_timeout` seconds fails the command with a
  `TimeoutError`, so an unresponsive (paused, overloaded) Redis turns into a quick error
  (503 `storage_unavailable` at the API) instead of a hang.
- Commands that fail on a broken connection (Redis restarted, a blip, a refused connect) are
  retried with jittered backoff, every write cascade makes being either idempotent or guarded by
  a version/lock check. Retries stop `redis_retry_budget` seconds after the first attempt
  started, so one call takes at most about the budget plus one attempt.
- A timeout is not retried: the server may be alive but stuck, and waiting again only
  multiplies the hang.

Blocking commands (XREADGROUP with BLOCK) must block for less than `redis_socket_timeout`.

Redis Cluster (and Valkey Cluster): a URL `redis+cluster://host:port` (or `rediss+cluster://`
for TLS) names any one node of a cluster; the client is redis-py's `RedisCluster`, which reads
the slot map from it and sends each command to the node owning its keys, with the same connect
and reply timeouts. Its retries are its own: a connection error, a timeout or a cluster-down
reply re-reads the slot map and tries again, at most `CLUSTER_RETRIES` more times, with no
budget (a failover is exactly a timeout worth retrying on a cluster). Every key set a script,
transaction or multi-key command of cascade's touches shares one hash tag (see the key
modules), as a cluster requires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from pydantic import Field
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis

from app.settings_base import CascadeSettings

T = TypeVar("T")

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
# Further tries of a command a cluster node failed (connection, timeout, cluster down).
CLUSTER_RETRIES = 3


class RedisSettings(CascadeSettings):
    """Field `x` is read from env `CASCADE_X`."""

    redis_connect_timeout: float = Field(
        default=1.0, gt=0, description="Seconds to open a connection to Redis."
    )
    redis_socket_timeout: float = Field(
        default=2.0,
        gt=0,
        description="Seconds a Redis command may wait for its reply before it fails.",
    )
    redis_retry_budget: float = Field(
        default=1.0,
        ge=0,
        description="Seconds after a command's first try during which connection errors "
        "are retried.",
    )


class BoundedRetry(Retry):
    """redis-py's retry with a deadline: no new attempt starts once `budget` seconds have
    passed since the first one, whatever the attempt count left. The backoff must depend on
    the failure count only (as redis-py's exponential ones do): it is never reset."""

    def __init__(self, backoff: AbstractBackoff, retries: int, *, budget: float) -> None:
        super().__init__(backoff, retries, supported_errors=(RedisConnectionError,))
        self.budget = budget

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        deadline = time.monotonic() + self.budget
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                if with_failure_count:
                    await fail(error, failures)
                else:
                    await fail(error)
                backoff = self._backoff.compute(failures)
                if failures > self._retries or time.monotonic() + backoff >= deadline:
                    raise error
                await asyncio.sleep(backoff)


def cluster_url(url: str) -> str | None:
    """The plain `redis://` (`rediss://`) URL of a `redis+cluster://` one; None for a URL of
    a single Redis."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    return f"{plain}://{rest}" if plain is not None else None


class _HiredisPacking:
    """Commands packed by hiredis (C), as redis-py's synchronous client does; its asyncio
    connections pack in Python, which was a large share of a session turn's CPU. Same bytes:
    the same split of a multi-word command name, the same UTF-8 encoding of text."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass  # e.g. a bytearray or memoryview: retried as bytes, as redis-py does
        args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from None


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _hiredis_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """`cls` (plain, TLS or Unix socket, as the URL chose) with the C packer; one per class."""
    if cls not in _PACKING:
        _PACKING[cls] = type(f"Hiredis{cls.__name__}", (_HiredisPacking, cls), {})
    return _PACKING[cls]


def redis_client(url: str, settings: RedisSettings | None = None) -> aioredis.Redis:
    """A client for `url` with the timeouts and retry policy above (settings from env).

    A `redis+cluster://` URL gets a `RedisCluster`. It is typed as `Redis` because cascade
    calls only the commands, scripts and pipelines both clients implement; the cluster tests
    run every store against a real cluster to keep that true.
    """
    settings = settings or RedisSettings.load()
    plain = cluster_url(url)
    if plain is not None:
        cluster = RedisCluster.from_url(
            plain,
            decode_responses=False,
            socket_connect_timeout=settings.redis_connect_timeout,
            socket_timeout=settings.redis_socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), CLUSTER_RETRIES),
            health_check_interval=30,
        )
        return cast(aioredis.Redis, cluster)
    client = aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry=BoundedRetry(
            ExponentialWithJitterBackoff(base=0.05, cap=0.5), 4, budget=settings.redis_retry_budget
        ),
        health_check_interval=30,
    )
    pool = client.connection_pool
    if HIREDIS_AVAILABLE:  # connections open lazily: every one gets the C packer
        pool.connection_class = _hiredis_packing(pool.connection_class)
    return client
