"""Keeping a long-running loop alive inside a process.

`supervise(name, run, stop)` awaits `run(stop)`; when it raises, it is started again after a
delay that doubles from `first_delay` up to `max_delay` (reset once a run has lasted
`healthy_after` seconds), until `stop` is set. The batch coordinator and the worker's
consumer loop run under it: a bug that kills one of them costs a restart, not the service.
(Whole processes are restarted by `cascade up`, `app.cli.up`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


async def supervise(
    name: str,
    run: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    healthy_after: float = 60.0,
) -> int:
    """Run `run(stop)` until it returns or `stop` is set; restart it whenever it raises.

    Returns how many times it was restarted. Cancellation is not a failure: it propagates.
    """
    restarts = 0
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await run(stop)
            return restarts
        except Exception as exc:
            if time.monotonic() - started >= healthy_after:
                failures = 0
            failures += 1
            delay = min(max_delay, first_delay * 2 ** (failures - 1))
            log.error(
                "task_died",
                task=name,
                exc_type=type(exc).__name__,
                restart_in=delay,
                exc_info=exc,
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return restarts
        restarts += 1
        log.info("task_restarted", task=name, restarts=restarts)
