"""Worker tuning from the runtime's /server_info (priority, in-flight target), retries."""

from __future__ import annotations

from typing import Any

import pytest

from app.batches.config import load_batch_settings
from app.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.media.errors import FetchError, FetchTooLargeError, ImageError, URLNotAllowedError
from workers.consumer import backoff_delay, is_permanent
from workers.tuning import batch_priority, inflight_target, runtime_slots


def info(**fields: Any) -> dict[str, Any]:
    return {"enable_priority_scheduling": True, **fields}


def test_no_priority_without_priority_scheduling() -> None:
    config = load_batch_settings()
    assert batch_priority(config, None) is None
    assert batch_priority(config, {"enable_priority_scheduling": False}) is None


def test_no_priority_when_chat_already_ranks_lowest() -> None:
    # SGLang gives a request without priority the lowest rank when no default is set
    # (scheduler.py `_set_or_validate_priority`): nothing can go below chat then.
    assert batch_priority(load_batch_settings(), info(default_priority_value=None)) is None


def test_priority_below_the_chat_default() -> None:
    config = load_batch_settings(batch_priority_offset=100)
    # higher values first (SGLang's default order)
    assert batch_priority(config, info(default_priority_value=0)) == -100
    # lower values first
    low_first = info(default_priority_value=5, schedule_low_priority_values_first=True)
    assert batch_priority(config, low_first) == 105


def test_configured_priority_wins() -> None:
    config = load_batch_settings(batch_priority=-7)
    assert batch_priority(config, None) == -7
    assert batch_priority(config, info(default_priority_value=0)) == -7


def test_runtime_slots_from_internal_states_or_args() -> None:
    states = {
        "internal_states": [
            {"effective_max_running_requests_per_dp": 48},
            {"effective_max_running_requests_per_dp": 48},
        ],
        "max_running_requests": 10,
    }
    assert runtime_slots(states) == 96
    assert runtime_slots({"max_running_requests": 32, "dp_size": 2}) == 64
    assert runtime_slots({"max_running_requests": None}) is None
    assert runtime_slots(None) is None


def test_inflight_target() -> None:
    derived = load_batch_settings()
    assert inflight_target(derived, {"max_running_requests": 48}) == 60  # 48 x 1.25
    assert inflight_target(derived, None) == 32
    assert inflight_target(derived, {"max_running_requests": 1}) == 4
    assert inflight_target(load_batch_settings(batch_inflight=9), {"max_running_requests": 48}) == 9


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    for attempt, middle in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)):
        delays = [backoff_delay(attempt, 1.0, 10.0) for _ in range(200)]
        assert all(0.5 * middle <= d <= 1.5 * middle for d in delays)
        assert max(delays) - min(delays) > 0.1 * middle  # jittered


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (InvalidRequestError("bad"), True),
        (PayloadTooLargeError("big"), True),
        (ImageError("broken"), True),
        (URLNotAllowedError("private address"), True),
        (FetchTooLargeError("too big", limit=1), True),
        (FetchError("host timed out"), False),
        (UpstreamError("HTTP 500"), False),
        (UpstreamTimeoutError("slow"), False),
    ],
)
def test_which_failures_are_retried(error: Any, permanent: bool) -> None:
    assert is_permanent(error) is permanent


def test_a_workers_redis_reply_timeout_outlasts_its_queue_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.batches.config import BatchSettings
    from workers.main import worker_redis_settings

    monkeypatch.setenv("CASCADE_REDIS_SOCKET_TIMEOUT", "2")
    assert worker_redis_settings(BatchSettings(batch_block_ms=500)).redis_socket_timeout == 2
    assert worker_redis_settings(BatchSettings(batch_block_ms=5000)).redis_socket_timeout == 6
