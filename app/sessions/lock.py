"""A Redis lock for one holder at a time, renewed while held.

Acquired with `SET key token NX PX ttl` (in a script); released and renewed by Lua scripts that
act only while the key still holds this holder's random token, so a holder whose lock expired can
never release or extend the next holder's lock. A crashed holder's lock expires after `ttl` seconds.

A release (or an acquire) that fails because Redis is down or not answering cannot tell whether
the lock is still there, so a background task owned by this module repeats the release until
Redis answers: the lock is gone as soon as Redis is back, not only when its lease runs out. The
task repeats the release once more after the first answer, because a command that timed out
while Redis was frozen may still run when it thaws (a late acquire re-taking the lock).

The lock keeps turns from overlapping; it is not what keeps the data consistent — the store's
versioned append is (a holder that stalled past its ttl still cannot overwrite a newer turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app.errors import ConflictError

log = structlog.get_logger(__name__)

# One try at the lock: (token, ttl in ms) → whether it is held now (see `RedisLock.acquire`).
Attempt = Callable[[str, int], Awaitable[bool]]

# Taking a lock we already hold succeeds too: a command retried after a lost reply must not
# find its own lock and wait for it.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Seconds between attempts while waiting for a held lock: the first pause, and the longest one
# it grows to. Growing (with jitter) keeps fifty waiters on one session from turning into
# thousands of Redis round trips a second that starve the event loop.
_POLL = 0.025
_POLL_MAX = 0.2

# Background releases: first and longest pause between attempts, and how long they keep trying
# beyond the lease (a frozen Redis that thaws later may still run a late acquire).
_CLEANUP_BACKOFF = 0.05
_CLEANUP_BACKOFF_MAX = 0.5
_CLEANUP_EXTRA = 60.0

# Running background releases; referenced here so they are not garbage-collected mid-way.
_cleanups: set[asyncio.Task[None]] = set()


async def settle_releases(seconds: float) -> None:
    """Wait up to `seconds` for the releases retried in the background to finish, then
    cancel the rest (their locks expire with their ttl). For a shutdown, before the Redis client
    closes: a release still running then would be dropped with its connection half-used."""
    pending = set(_cleanups)
    if not pending:
        return
    _, left = await asyncio.wait(pending, timeout=seconds)
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)


class LockScripts:
    """The lock's three scripts registered on one client: built once by a caller that makes
    many locks (one per session turn), instead of once per lock."""

    __slots__ = ("acquire", "release", "renew")

    def __init__(self, redis: aioredis.Redis) -> None:
        self.acquire = redis.register_script(_ACQUIRE)
        self.release = redis.register_script(_RELEASE)
        self.renew = redis.register_script(_RENEW)


class RedisLock:
    """An async context manager holding `key` for its body.

    Waits up to `wait` seconds for the lock, then raises `ConflictError(message)`. While held, the
    expiry is extended every `ttl / 3` seconds (a loop timer that starts a renewal task when it
    is due: a short hold, the common case, costs no task at all).
    `lost` turns true if a renewal found the lock no longer ours (it expired and someone else
    took it); the body keeps running, and its writes stay safe through versioned appends.
    `clock` (monotonic seconds) times the wait and how long a background release keeps trying;
    the lease itself is timed by Redis, its renewal by the event loop.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        *,
        ttl: float,
        wait: float,
        message: str,
        code: str = "conflict",
        clock: Callable[[], float] = time.monotonic,
        scripts: LockScripts | None = None,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._key = key
        self._ttl_ms = max(1, int(ttl * 1000))
        self._wait = wait
        self._message = message
        self._code = code
        self._token = secrets.token_hex(16)
        self._renewer: asyncio.Task[None] | None = None
        self._renew_timer: asyncio.TimerHandle | None = None
        self._held = False
        scripts = scripts or LockScripts(redis)
        self._acquire_script = scripts.acquire
        self._release_script = scripts.release
        self._renew_script = scripts.renew
        self.lost = False

    async def acquire(self, attempt: Attempt | None = None) -> None:
        """Take the lock, waiting up to `wait` seconds; `ConflictError` if it stays held.

        `attempt(token, ttl_ms)`, when given, makes each try instead of the plain acquire script:
        a script that takes the lock exactly as `_ACQUIRE` does (same token, same expiry) and
        does more in the same round trip (a session's turn reads the session with it); it
        returns whether the lock is now held.

        A `RedisError` propagates; the attempt may still have taken the lock, so it is released
        in the background once Redis answers.
        """
        self._token = secrets.token_hex(16)
        self._held = False
        deadline = self._clock() + self._wait
        pause = _POLL
        while True:
            try:
                if attempt is None:
                    taken = await self._acquire_script(
                        keys=[self._key], args=[self._token, self._ttl_ms]
                    )
                else:
                    taken = await attempt(self._token, self._ttl_ms)
            except RedisError as exc:
                log.warning("lock_acquire_failed", key=self._key, exc_type=type(exc).__name__)
                self._release_later(self._token)
                raise
            if taken:
                self._held = True
                break
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise ConflictError(self._message, code=self._code)
            await asyncio.sleep(min(pause * random.uniform(0.8, 1.2), remaining))
            pause = min(pause * 1.5, _POLL_MAX)
        self.lost = False
        self._schedule_renewal()

    async def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours. Never raises `RedisError`;
        without a successful `acquire` (a failed one cleans up on its own) it does nothing."""
        timer, self._renew_timer = self._renew_timer, None
        if timer is not None:
            timer.cancel()
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        held, self._held = self._held, False
        if not held:
            return
        try:
            await self._release_script(keys=[self._key], args=[self._token])
        except RedisError as exc:
            log.warning("lock_release_failed", key=self._key, exc_type=type(exc).__name__)
            self._release_later(self._token)

    @property
    def token(self) -> str | None:
        """This holder's token while the lock is held: for a script that releases the lock
        (as `_RELEASE` does) in the same step as a write; then call `released()`."""
        return self._token if self._held else None

    def released(self) -> None:
        """A script given `token` released the lock: renewals stop, `release()` does nothing
        more than wait for a renewal in flight."""
        self._held = False
        timer, self._renew_timer = self._renew_timer, None
        if timer is not None:
            timer.cancel()
        if self._renewer is not None:
            self._renewer.cancel()

    @property
    def settled(self) -> bool:
        """Not held and no renewal pending: `release()` has nothing to do."""
        return not self._held and self._renewer is None and self._renew_timer is None

    def _release_later(self, token: str) -> None:
        """Release `token`'s hold in a background task until Redis answers (see the module
        docstring). A later acquire uses a new token, so this never frees that one's hold."""
        task = asyncio.create_task(self._release_when_back(token), name=f"release {self._key}")
        _cleanups.add(task)
        task.add_done_callback(_cleanups.discard)

    async def _release_when_back(self, token: str) -> None:
        give_up = self._clock() + self._ttl_ms / 1000 + _CLEANUP_EXTRA
        pause = _CLEANUP_BACKOFF
        answered = 0
        while answered < 2 and self._clock() < give_up:
            try:
                await self._release_script(keys=[self._key], args=[token])
                answered += 1
                continue
            except RedisError:
                pass  # still away; logged once by the caller
            await asyncio.sleep(pause)
            pause = min(pause * 2, _CLEANUP_BACKOFF_MAX)
        if answered:
            log.info("lock_released_late", key=self._key)

    def _schedule_renewal(self) -> None:
        loop = asyncio.get_running_loop()
        self._renew_timer = loop.call_later(self._ttl_ms / 3000, self._renewal_due)

    def _renewal_due(self) -> None:
        self._renew_timer = None
        if self._held:
            self._renewer = asyncio.create_task(self._renew(), name=f"renew {self._key}")

    async def _renew(self) -> None:
        try:
            renewed = await self._renew_script(keys=[self._key], args=[self._token, self._ttl_ms])
        except RedisError as exc:
            # Try again next tick; a Redis away for longer than the ttl loses the lock.
            log.warning("lock_renew_failed", key=self._key, exc_type=type(exc).__name__)
            renewed = True
        if not renewed:
            if not self._held:
                return  # released meanwhile (`released`), not lost
            self.lost = True
            log.warning("lock_lost", key=self._key)
            return
        if self._held and self._renewer is asyncio.current_task():
            self._renewer = None
            self._schedule_renewal()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()
