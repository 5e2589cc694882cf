"""`POST /v1/chat/completions`: one chat turn through the agent, with or without a session.

With `session_id` the server holds the history: the client sends only new messages; the turn runs
under the session's lock (a concurrent turn waits briefly, then gets 409) and is committed whole
with a versioned append, or not at all. Without it the request is stateless (the client sends
the whole history, as Open WebUI does); `store: true` saves the exchange as a new session.

Streaming: a client that disconnects mid-stream aborts the runtime request by rid, and the turn
is stored with what was produced so far, the cut message marked interrupted (never half-written).
`Idempotency-Key` with a session: a retry returns the first result without running the turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Request
from redis.exceptions import RedisError
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from app.agent.loop import AgentRun
from app.agent.models import (
    ClientToolCallDelta,
    ContentDelta,
    ReasoningDelta,
    RunDone,
    RunResult,
    ToolProgress,
)
from app.agent.requests import ChatRequest, parse_chat_request
from app.agent.responses import cascade_extension, completion_body, completion_id
from app.agent.turn import assemble_turn
from app.api.auth import authenticate
from app.api.responses import JSONResponse
from app.api.shapes import ChunkWriter
from app.config import Settings
from app.errors import (
    CascadeError,
    ConflictError,
    InvalidRequestError,
    RuntimeUnavailableError,
)
from app.jsonbody import JsonBodyError, parse_json
from app.sessions.models import SessionInfo, SessionOptions
from app.sessions.store import SessionStore

log = structlog.get_logger(__name__)
router = APIRouter()

COMMIT_RETRY_SECONDS = 6.0
STORAGE_LOST = RuntimeUnavailableError(
    "the answer could not be stored in the session: cascade's storage (Redis) is not "
    "answering; the turn is not in the history, send it again",
    retry_after=2,
    code="storage_unavailable",
)


def _options_update(req: ChatRequest, current: SessionOptions) -> SessionOptions | None:
    changes: dict[str, Any] = {}
    for name in ("thinking", "thinking_budget", "preserve_thinking", "server_tools"):
        value = getattr(req, name)
        if value is not None and value != getattr(current, name):
            changes[name] = value
    return current.model_copy(update=changes) if changes else None


def _title(messages: list[dict[str, Any]]) -> str | None:
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            text = content if isinstance(content, str) else ""
            if isinstance(content, list):
                text = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            text = " ".join(text.split())
            if text:
                return text[:80]
    return None


class Turn:
    """One request's turn: what it loaded, what it holds, and how it ends (exactly once)."""

    def __init__(self, request: Request, req: ChatRequest, owner: str) -> None:
        state = request.app.state
        self.state = state
        self.settings: Settings = state.settings
        self.req = req
        self.owner = owner
        self.store: SessionStore | None = state.sessions
        self.info: SessionInfo | None = None
        self.history: list[dict[str, Any]] = []
        self.lock: Any = None
        self.run: AgentRun | None = None
        self.finished = False
        self.idempotency_key: str | None = None
        self.body_hash = ""
        self.created: SessionInfo | None = None

    async def open(self, raw_body: bytes, idempotency_key: str | None) -> dict[str, Any] | None:
        """Load the session and take its lock; a stored idempotent result short-circuits."""
        req = self.req
        if req.session_id is not None:
            if self.store is None:
                raise CascadeError("sessions need Redis; set CASCADE_REDIS_URL")
            if idempotency_key:
                self.idempotency_key = idempotency_key
                self.body_hash = hashlib.sha256(raw_body).hexdigest()
                stored: dict[str, Any] | None = await self.state.idempotency.begin(
                    self.owner, idempotency_key, self.body_hash
                )
                if stored is not None:
                    self.idempotency_key = None  # not ours to complete
                    return stored
            try:
                # Lock, then load (the load checks the owner: a stranger gets 404). Session ids
                # are unguessable, so locking before the owner check reveals nothing.
                self.lock = self.store.turn_lock(req.session_id)
                await self.lock.__aenter__()
                self.info, self.history = await self.store.load(req.session_id, self.owner)
            except BaseException:
                await self._release()
                await self._abandon_key()
                raise
        return None

    async def build_run(self, *, stream: bool) -> AgentRun:
        turn = await assemble_turn(
            self.state.turn_services,
            self.req,
            owner=self.owner,
            stream=stream,
            history=self.history,
            options=self.info.options if self.info is not None else None,
        )
        self.run = turn.run
        return turn.run

    async def commit(self, messages: list[dict[str, Any]]) -> str | None:
        """Store the turn (whole); returns the session id the response should carry.

        Storage failures are retried for up to `COMMIT_RETRY_SECONDS` (Redis restarting, a
        blip). A retry that finds the session one version ahead, while this turn holds the
        session's lock, finds its own earlier attempt committed (its reply was lost). Past the
        bound the `RedisError` propagates, logged as `turn_commit_failed`.
        """
        delay = 0.25
        deadline = time.monotonic() + COMMIT_RETRY_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._commit_once(messages, retried=attempt > 1)
            except RedisError as exc:
                if time.monotonic() + delay > deadline:
                    log.error(
                        "turn_commit_failed",
                        session_id=self.info.id if self.info is not None else None,
                        attempts=attempt,
                        exc_type=type(exc).__name__,
                    )
                    raise
                log.warning("turn_commit_retry", attempt=attempt, exc_type=type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _commit_once(self, messages: list[dict[str, Any]], *, retried: bool) -> str | None:
        req = self.req
        if self.store is None:
            return None
        if self.info is not None:
            try:
                self.info = await self.store.append_turn(
                    self.info.id,
                    self.owner,
                    messages,
                    expected_version=self.info.version,
                    options=_options_update(req, self.info.options),
                    title=self.info.title or _title(messages),
                )
            except ConflictError:
                if not retried:
                    raise
                current = await self.store.get_info(self.info.id, self.owner)
                if current.version != self.info.version + 1:
                    raise
                self.info = current
            return self.info.id
        if req.store:
            if self.created is None:
                options = SessionOptions(
                    thinking=req.thinking,
                    thinking_budget=req.thinking_budget,
                    preserve_thinking=bool(req.preserve_thinking),
                    server_tools=req.server_tools,
                )
                self.created = await self.store.create(
                    self.owner, title=_title(messages), options=options, messages=messages
                )
            return self.created.id
        return None

    async def succeed(self, body: dict[str, Any]) -> None:
        """The turn is committed: record its replay (best effort) and release. Once."""
        if self.idempotency_key:
            try:
                await self.state.idempotency.complete(
                    self.owner,
                    self.idempotency_key,
                    body,
                    session_id=self.info.id if self.info is not None else None,
                )
                self.idempotency_key = None
            except RedisError as exc:
                # The turn is stored; only the replay is lost (`close` drops the pending key).
                log.warning("idempotent_result_not_recorded", exc_type=type(exc).__name__)
        try:
            await self.close()
        except RedisError as exc:
            log.warning("turn_release_failed", exc_type=type(exc).__name__)

    async def _abandon_key(self) -> None:
        if self.idempotency_key:
            key, self.idempotency_key = self.idempotency_key, None
            await self.state.idempotency.abandon(self.owner, key)

    async def _release(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            await lock.__aexit__(None, None, None)

    async def close(self) -> None:
        self.finished = True
        await self._release()
        await self._abandon_key()

    async def interrupted(self) -> None:
        """The client went away: abort the runtime call, store what exists, release. Once."""
        if self.finished:
            return
        self.finished = True
        run = self.run
        try:
            if run is not None and run.current_rid is not None:
                await self.state.runtime.abort(run.current_rid)
            if run is not None and self.info is not None and self.store is not None:
                messages = run.partial_messages()
                if messages:
                    messages[-1].setdefault("meta", {})["interrupted"] = True
                    await self.store.append_turn(
                        self.info.id,
                        self.owner,
                        messages,
                        expected_version=self.info.version,
                    )
                log.info("turn_interrupted", session_id=self.info.id, rid=run.current_rid)
        except Exception as exc:  # cleanup must not raise; the log says what failed
            log.warning("interrupted_turn_not_stored", exc_type=type(exc).__name__)
        finally:
            await self._release()
            await self._abandon_key()


async def _parse(request: Request) -> tuple[ChatRequest, bytes]:
    raw = await request.body()
    try:
        data = parse_json(raw)
    except JsonBodyError as exc:
        raise InvalidRequestError(f"request body: {exc}") from None
    return parse_chat_request(data), raw


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, owner: str = Depends(authenticate)) -> Response:
    req, raw = await _parse(request)
    turn = Turn(request, req, owner)
    stored = await turn.open(raw, request.headers.get("idempotency-key"))
    if stored is not None:
        return JSONResponse(stored, headers={"idempotent-replayed": "true"})
    try:
        model = req.model or await request.app.state.runtime.model_name()
        run = await turn.build_run(stream=req.stream)
    except BaseException:
        await turn.close()
        raise
    if req.stream:
        return StreamingResponse(
            _stream(
                turn,
                run,
                model,
                include_usage=bool(req.stream_options and req.stream_options.include_usage),
            ),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            background=BackgroundTask(turn.interrupted),
        )
    try:
        result = await run.run()
        session_id = await turn.commit(result.new_messages)
        body = completion_body(result, cid=completion_id(), model=model, session_id=session_id)
        await turn.succeed(body)
    except BaseException:
        await turn.close()
        raise
    return JSONResponse(body)


async def _stream(
    turn: Turn, run: AgentRun, model: str, *, include_usage: bool
) -> AsyncIterator[bytes]:
    writer = ChunkWriter(cid=completion_id(), model=model)
    session_id = turn.req.session_id
    result: RunResult | None = None
    try:
        yield writer.role(session_id)
        async for event in run.events():
            if isinstance(event, ContentDelta):
                yield writer.content(event.text)
            elif isinstance(event, ReasoningDelta):
                yield writer.reasoning(event.text)
            elif isinstance(event, ClientToolCallDelta):
                yield writer.tool_call(event.index, event.id, event.name, event.arguments)
            elif isinstance(event, ToolProgress):
                yield writer.progress(
                    {
                        "step": event.step,
                        "call_id": event.call_id,
                        "tool": event.name,
                        "status": event.status,
                    }
                )
            elif isinstance(event, RunDone):
                result = event.result
        assert result is not None
        session_id = await turn.commit(result.new_messages)
        # Finished before the last events go out: a client leaving now finds the turn stored
        # once, its idempotent replay recorded and the lock released.
        await turn.succeed(
            completion_body(result, cid=completion_id(), model=model, session_id=session_id)
        )
        yield writer.finish(result.finish_reason, cascade_extension(result), session_id)
        if include_usage:
            yield writer.usage(result.usage, result.thinking)
        yield writer.done()
    except CascadeError as exc:
        # Headers are gone: the error travels as an error event, then the stream ends.
        log.warning("stream_failed", code=exc.code, status=exc.status)
        with anyio.CancelScope(shield=True):
            await turn.interrupted()
        yield writer.error(exc.to_body())
        yield writer.done()
    except RedisError:
        # The answer was sent but could not be stored (logged by `commit`): say so, end
        # properly, and release what the turn holds.
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await turn.close()
        yield writer.error(STORAGE_LOST.to_body())
        yield writer.done()
    finally:
        if not turn.finished:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await turn.interrupted()
