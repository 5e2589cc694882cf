"""What a worker takes from the runtime's `/server_info`: the SGLang `priority` of batch items
(so interactive chat goes first) and how many items to keep in flight (enough to keep every
running slot busy, plus a margin that waits in the runtime's queue).

Priority.

SGLang 0.5.23 (`managers/scheduler.py` `_set_or_validate_priority`, `schedule_policy.py`):
- with `--enable-priority-scheduling`, higher values run first unless
  `--schedule-low-priority-values-first`; a request without a priority gets
  `--default-priority-value`, or, when that is unset, the lowest rank there is
  (`-sys.maxsize - 1`, or `sys.maxsize` when low values go first);
- a waiting request may preempt running ones when it outranks them by more than
  `--priority-scheduling-preemption-threshold` (10);
- without priority scheduling a request's priority is ignored, or the request is aborted
  when `--abort-on-priority-when-disabled` is set.

cascade's chat requests carry no priority. So batch items get one only when priority
scheduling is on and chat requests have a default to rank below: `default ∓ offset`.
Otherwise they carry none (chat already ranks lowest there, nothing can go below it).
"""

from __future__ import annotations

import math
from typing import Any

import structlog

from app.batches.config import BatchSettings
from app.runtime.client import SGLangClient

log = structlog.get_logger(__name__)

DEFAULT_INFLIGHT = 32


def batch_priority(config: BatchSettings, server_info: dict[str, Any] | None) -> int | None:
    """The priority for batch items given the runtime's `/server_info` (None = send none)."""
    if config.batch_priority is not None:
        return config.batch_priority
    if not server_info or not server_info.get("enable_priority_scheduling"):
        return None
    default = server_info.get("default_priority_value")
    if not isinstance(default, int) or isinstance(default, bool):
        log.warning(
            "batch_priority_unavailable",
            detail="priority scheduling is on but --default-priority-value is unset, so chat "
            "requests already rank lowest; batch items are sent without a priority",
        )
        return None
    if server_info.get("schedule_low_priority_values_first"):
        return default + config.batch_priority_offset
    return default - config.batch_priority_offset


def runtime_slots(server_info: dict[str, Any] | None) -> int | None:
    """Requests the runtime runs at once: the scheduler's effective limit summed over its
    data-parallel ranks (`internal_states[*].effective_max_running_requests_per_dp`, from
    `scheduler_components/internal_state.py`), else `max_running_requests` × `dp_size`."""
    if not server_info:
        return None
    states = server_info.get("internal_states")
    if isinstance(states, list):
        per_rank = [
            s.get("effective_max_running_requests_per_dp") for s in states if isinstance(s, dict)
        ]
        counts = [n for n in per_rank if isinstance(n, int) and n > 0]
        if counts:
            return sum(counts)
    limit = server_info.get("max_running_requests")
    dp = server_info.get("dp_size") or 1
    if isinstance(limit, int) and limit > 0 and isinstance(dp, int):
        return limit * max(1, dp)
    return None


def inflight_target(config: BatchSettings, server_info: dict[str, Any] | None) -> int:
    """Items one worker keeps in flight: the configured number, else the runtime's slots times
    `batch_inflight_factor` (so a finished slot is refilled from the runtime's own queue, not
    after a round trip), else 32."""
    if config.batch_inflight is not None:
        return config.batch_inflight
    slots = runtime_slots(server_info)
    if slots is None:
        return DEFAULT_INFLIGHT
    return max(4, min(1024, math.ceil(slots * config.batch_inflight_factor)))


async def runtime_server_info(client: SGLangClient) -> dict[str, Any] | None:
    """The runtime's `/server_info`, or None when it cannot be read now."""
    return await client.server_info()
