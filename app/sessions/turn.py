"""One turn's hold on its session: idempotency, lock, load, commit whole or nothing, release.

`SessionTurn` is an async context manager; every door that runs a turn uses it the same way:

    async with SessionTurn(sessions, idempotency, owner=..., session_id=..., ...) as turn:
        if turn.replay is not None:
            return turn.replay            # an idempotent retry: the first answer, nothing runs
        ... run with turn.history, turn.info ...
        session_id = await turn.commit(messages, ...)
        await turn.record(body)

Contracts:
- Entering: with a session id, an `Idempotency-Key` is claimed first (a stored answer is
  returned as `replay` without locking or loading anything); then the session's lock is taken
  (a concurrent turn waits briefly, then `ConflictError`), then the session is loaded for its
  owner (a stranger gets `NotFoundError`). Without a session id nothing is held.
- `commit` appends the turn's messages with a versioned append (whole or not at all), or, for a
  stateless request that asked to be stored, creates a session holding them. The append that
  commits also releases the session's lock, in the same step. Storage failures are retried for
  up to `commit_retry_seconds`; a retry that finds the session exactly one version ahead finds
  its own earlier attempt (whose reply was lost): no other turn can commit before this one has,
  as the lock is released only by this turn's own commit (or its expiry). Past the bound the
  `RedisError` propagates, logged as `turn_commit_failed`.
- `interrupted` stores what a cut turn produced, its last message marked interrupted.
- Leaving, on every path: an idempotency claim that got no `record` is given up (a retry runs
  the request again) and the lock is released, even when the turn's task is being cancelled.
  Leaving never raises because of cleanup.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import structlog
from redis.exceptions import RedisError

from app import metrics
from app.errors import CascadeError, ConflictError
from app.sessions.idempotency import IdempotencyStore
from app.sessions.lock import RedisLock
from app.sessions.models import SessionInfo, SessionOptions
from app.sessions.store import SessionStore

log = structlog.get_logger(__name__)

COMMIT_RETRY_SECONDS = 6.0


class SessionTurn:
    def __init__(
        self,
        sessions: SessionStore | None,
        idempotency: IdempotencyStore | None,
        *,
        owner: str,
        session_id: str | None,
        idempotency_key: str | None = None,
        body_hash: str = "",
        commit_retry_seconds: float = COMMIT_RETRY_SECONDS,
    ) -> None:
        self.sessions = sessions
        self.idempotency = idempotency
        self.owner = owner
        self.session_id = session_id
        self.body_hash = body_hash
        self.commit_retry_seconds = commit_retry_seconds
        self.info: SessionInfo | None = None
        self.history: list[dict[str, Any]] = []
        self.replay: dict[str, Any] | None = None
        self.committed = False
        self._key = idempotency_key if session_id is not None else None
        self._created: SessionInfo | None = None
        self._lock: RedisLock | None = None
        self._stack = AsyncExitStack()

    @property
    def options(self) -> SessionOptions | None:
        return self.info.options if self.info is not None else None

    async def __aenter__(self) -> SessionTurn:
        if self.session_id is None:
            return self
        if self.sessions is None:
            raise CascadeError("sessions need Redis; set CASCADE_REDIS_URL")
        try:
            if self._key:
                if self.idempotency is None:
                    raise CascadeError("idempotency needs Redis; set CASCADE_REDIS_URL")
                self.replay = await self.idempotency.begin(
                    self.owner, self._key, self.body_hash, session_id=self.session_id
                )
                if self.replay is not None:
                    self._key = None  # not ours to complete or give up
                    return self
            # Lock, then load (the load checks the owner: a stranger gets 404). Session ids
            # are unguessable, so locking before the owner check reveals nothing.
            # One round trip: `SessionStore.lock_and_load` (turn_lock, then load).
            lock, self.info, self.history = await self.sessions.lock_and_load(
                self.session_id, self.owner
            )
            self._stack.push_async_callback(lock.release)
            self._lock = lock
        except BaseException:
            await self._leave()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._leave()

    async def _leave(self) -> None:
        if self._key is None and (self._lock is None or self._lock.settled):
            # Nothing held (the commit released the lock): no cleanup to shield. A lock taken
            # by `__aenter__` is `self._lock`, the only thing the stack holds.
            self._stack.pop_all()
            return
        # Shielded: a turn left because its task was cancelled (a client that went away) must
        # still release what it holds, and a cancelled scope would cancel every await here.
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self._release_all()

    async def _release_all(self) -> None:
        key, self._key = self._key, None
        try:
            if key and self.idempotency is not None:
                await self.idempotency.abandon(self.owner, key, session_id=self.session_id)
        except RedisError as error:  # the claim expires on its own; the log says it stayed
            log.warning("idempotency_key_not_released", exc_type=type(error).__name__)
        try:
            await self._stack.aclose()
        except (RedisError, CascadeError) as error:
            log.warning("turn_release_failed", exc_type=type(error).__name__)

    # ------------------------------------------------------------------ ending a turn

    async def commit(
        self,
        messages: list[dict[str, Any]],
        *,
        options: SessionOptions | None = None,
        title: str | None = None,
        create: SessionOptions | None = None,
    ) -> str | None:
        """Store the turn whole; returns the session id the answer should carry.

        With a session, `options` (when given) replace the session's options and `title` is
        set if the session has none. Without one, `create` (when given) stores the exchange as
        a new session with those options; otherwise nothing is stored.
        """
        delay = 0.25
        deadline = time.monotonic() + self.commit_retry_seconds
        attempt = 0
        while True:
            attempt += 1
            try:
                session_id = await self._commit_once(
                    messages, options=options, title=title, create=create, retried=attempt > 1
                )
            except RedisError as error:
                if time.monotonic() + delay > deadline:
                    log.error(
                        "turn_commit_failed",
                        session_id=self.session_id,
                        attempts=attempt,
                        exc_type=type(error).__name__,
                    )
                    raise
                log.warning("turn_commit_retry", attempt=attempt, exc_type=type(error).__name__)
                metrics.REDIS_ERRORS.labels("commit_retry").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            else:
                self.committed = True
                return session_id

    async def _commit_once(
        self,
        messages: list[dict[str, Any]],
        *,
        options: SessionOptions | None,
        title: str | None,
        create: SessionOptions | None,
        retried: bool,
    ) -> str | None:
        if self.sessions is None:
            return None
        if self.info is not None:
            try:
                self.info = await self.sessions.append_turn(
                    self.info.id,
                    self.owner,
                    messages,
                    expected_version=self.info.version,
                    options=options,
                    title=self.info.title or title,
                    # Committed, the turn is over: the lock goes in the same step.
                    release=self._lock,
                )
            except ConflictError:
                if not retried:
                    raise
                current = await self.sessions.get_info(self.info.id, self.owner)
                if current.version != self.info.version + 1:
                    raise
                self.info = current
            return self.info.id
        if create is not None:
            if self._created is None:
                self._created = await self.sessions.create(
                    self.owner, title=title, options=create, messages=messages
                )
            return self._created.id
        return None

    async def record(self, body: dict[str, Any]) -> None:
        """After `commit`: keep `body` as the answer to replay for this turn's idempotency key.

        Best effort: the turn is stored either way; if Redis fails here only the replay is lost
        (the claim is given up when the turn is left, so a retry runs the request again).
        """
        key = self._key
        if not key or self.idempotency is None:
            return
        try:
            await self.idempotency.complete(
                self.owner,
                key,
                body,
                session_id=self.session_id,
            )
            self._key = None
        except RedisError as error:
            log.warning("idempotent_result_not_recorded", exc_type=type(error).__name__)

    async def interrupted(self, messages: list[dict[str, Any]]) -> None:
        """Store a cut turn's messages, the last marked interrupted. Never raises; once."""
        if self.committed or self.info is None or self.sessions is None or not messages:
            return
        self.committed = True
        messages[-1].setdefault("meta", {})["interrupted"] = True
        try:
            await self.sessions.append_turn(
                self.info.id, self.owner, messages, expected_version=self.info.version
            )
            log.info("turn_interrupted", session_id=self.info.id)
        except Exception as error:  # cleanup must not raise; the log says what failed
            log.warning("interrupted_turn_not_stored", exc_type=type(error).__name__)
