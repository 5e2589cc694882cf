"""The Redis client's retry policy and timeouts (no server needed: the policy is plain code)."""

from __future__ import annotations

import time

import pytest
from redis.backoff import ConstantBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import ConfigError
from app.redis_client import BoundedRetry, RedisSettings, redis_client


async def _count_failures(retry: BoundedRetry, error: Exception, attempt_seconds: float) -> int:
    attempts = 0

    async def do() -> None:
        nonlocal attempts
        attempts += 1
        deadline = time.monotonic() + attempt_seconds
        while time.monotonic() < deadline:  # an attempt that takes its time, then fails
            pass
        raise error

    async def fail(_: Exception) -> None:
        return None

    with pytest.raises(type(error)):
        await retry.call_with_retry(do, fail)
    return attempts


async def test_connection_errors_are_retried_only_within_the_budget() -> None:
    retry = BoundedRetry(ConstantBackoff(0.01), 100, budget=0.3)
    started = time.monotonic()
    attempts = await _count_failures(retry, RedisConnectionError("refused"), 0.05)
    assert time.monotonic() - started < 0.5  # not 100 attempts of 0.06 s
    assert 2 <= attempts <= 6


async def test_connection_errors_are_retried_up_to_the_count() -> None:
    retry = BoundedRetry(ConstantBackoff(0.0), 3, budget=10.0)
    assert await _count_failures(retry, RedisConnectionError("refused"), 0.0) == 4


async def test_timeouts_are_not_retried() -> None:
    retry = BoundedRetry(ConstantBackoff(0.0), 3, budget=10.0)
    assert await _count_failures(retry, RedisTimeoutError("no reply"), 0.0) == 1


async def test_client_has_the_configured_timeouts() -> None:
    settings = RedisSettings(redis_connect_timeout=0.4, redis_socket_timeout=0.7)
    client = redis_client("redis://127.0.0.1:1/0", settings)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 0.4
        assert kwargs["socket_timeout"] == 0.7
    finally:
        await client.aclose()


def test_timeouts_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASCADE_REDIS_SOCKET_TIMEOUT", "0.25")
    assert RedisSettings.load().redis_socket_timeout == 0.25
    monkeypatch.setenv("CASCADE_REDIS_SOCKET_TIMEOUT", "0")
    with pytest.raises(ConfigError, match="CASCADE_REDIS_SOCKET_TIMEOUT"):
        RedisSettings.load()
