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

import hashlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Request
from redis.exceptions import RedisError
from starlette.responses import Response

from app import metrics
from app.agent.loop import AgentRun
from app.agent.models import (
    ClientToolCallDelta,
    ContentDelta,
    ReasoningDelta,
    RunDone,
    RunResult,
    ToolProgress,
)
from app.agent.protocol import (
    ChatRequest,
    ChunkWriter,
    cascade_extension,
    completion_body,
    completion_id,
    parse_chat_request,
    tool_step_line,
)
from app.agent.turn import assemble_turn
from app.api.auth import authenticate
from app.api.deps import services_of
from app.api.responses import JSONResponse
from app.api.streaming import event_stream, first_event
from app.errors import (
    CascadeError,
    InvalidRequestError,
    RuntimeUnavailableError,
)
from app.jsonbody import JsonBodyError, parse_json
from app.services import Services
from app.sessions.models import SessionOptions
from app.sessions.turn import SessionTurn

log = structlog.get_logger(__name__)
router = APIRouter()

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


def _created_options(req: ChatRequest) -> SessionOptions | None:
    """The options of a session a stateless `store: true` request creates (None: no session)."""
    if not req.store:
        return None
    return SessionOptions(
        thinking=req.thinking,
        thinking_budget=req.thinking_budget,
        preserve_thinking=bool(req.preserve_thinking),
        server_tools=req.server_tools,
    )


def _session_turn(
    services: Services, req: ChatRequest, owner: str, raw: bytes, key: str | None
) -> SessionTurn:
    return SessionTurn(
        services.sessions,
        services.idempotency,
        owner=owner,
        session_id=req.session_id,
        idempotency_key=key,
        body_hash=hashlib.sha256(raw).hexdigest() if key else "",
    )


async def _commit(turn: SessionTurn, req: ChatRequest, result: RunResult) -> str | None:
    messages = result.new_messages
    options = _options_update(req, turn.info.options) if turn.info is not None else None
    return await turn.commit(
        messages, options=options, title=_title(messages), create=_created_options(req)
    )


async def _parse(request: Request) -> tuple[ChatRequest, bytes]:
    raw = await request.body()
    try:
        data = parse_json(raw)
    except JsonBodyError as exc:
        raise InvalidRequestError(f"request body: {exc}") from None
    return parse_chat_request(data), raw


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    # The door's two dependencies, called directly: FastAPI's dependency solving cost more per
    # turn than either of them (same order, same errors: authentication first).
    owner = await authenticate(request)
    services = services_of(request)
    req, raw = await _parse(request)
    key = request.headers.get("idempotency-key")
    if req.stream:
        return await _streamed(services, req, raw, owner, key)
    async with _session_turn(services, req, owner, raw, key) as turn:
        if turn.replay is not None:
            return JSONResponse(turn.replay, headers={"idempotent-replayed": "true"})
        model = req.model or await services.runtime.model_name()
        assembled = await assemble_turn(
            services.turn,
            req,
            owner=owner,
            stream=False,
            history=turn.history,
            options=turn.options,
        )
        result = await assembled.run.run()
        session_id = await _commit(turn, req, result)
        metrics.note(session_id=session_id)
        body = completion_body(
            result,
            cid=completion_id(),
            model=model,
            session_id=session_id,
            tool_steps=services.settings.tool_steps_in_reasoning,
        )
        await turn.record(body)
    return JSONResponse(body)


class _Replay:
    __slots__ = ("body",)

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body


async def _streamed(
    services: Services, req: ChatRequest, raw: bytes, owner: str, key: str | None
) -> Response:
    """Start the turn's event stream and take its first item before answering: everything
    that fails while the turn is opened and assembled, or before the runtime's first event
    (404, 409, 400, 503), is an HTTP error."""
    events = _stream(services, req, raw, owner, key)
    first = await first_event(events)
    if isinstance(first, _Replay):
        await events.aclose()
        return JSONResponse(first.body, headers={"idempotent-replayed": "true"})
    return event_stream(first, events)  # a replay can only come first


async def _stream(
    services: Services, req: ChatRequest, raw: bytes, owner: str, key: str | None
) -> AsyncGenerator[bytes | _Replay, None]:
    """The one owner of a streamed turn: its session hold, its run, its chunks and its end.

    A client that goes away (the generator is closed or cancelled) aborts the runtime request
    and the turn is stored as far as it got, marked interrupted.
    """
    async with _session_turn(services, req, owner, raw, key) as turn:
        if turn.replay is not None:
            yield _Replay(turn.replay)
            return
        model = req.model or await services.runtime.model_name()
        assembled = await assemble_turn(
            services.turn,
            req,
            owner=owner,
            stream=True,
            history=turn.history,
            options=turn.options,
        )
        run = assembled.run
        writer = ChunkWriter(cid=completion_id(), model=model)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        show_steps = services.settings.tool_steps_in_reasoning
        result: RunResult | None = None
        started = False
        try:
            async with aclosing(run.events()) as events:
                async for event in events:
                    if not started:
                        # The response begins with the run's first event: a runtime that is
                        # down or refuses the request before that is an HTTP error (503 with
                        # Retry-After, 400, ...), not a 200 with an error inside.
                        started = True
                        yield writer.role(req.session_id)
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
                        if event.status != "started" and show_steps:
                            # Display only: never part of the run's messages (see tool_step_line).
                            yield writer.reasoning(tool_step_line(event))
                    elif isinstance(event, RunDone):
                        result = event.result
            assert result is not None
            session_id = await _commit(turn, req, result)
            metrics.note(session_id=session_id)
            await turn.record(
                completion_body(
                    result,
                    cid=completion_id(),
                    model=model,
                    session_id=session_id,
                    tool_steps=show_steps,
                )
            )
        except CascadeError as exc:
            if not started:
                raise  # nothing was sent and nothing ran to keep: a plain HTTP error
            # Headers are gone: the error travels as an error event, then the stream ends.
            log.warning("stream_failed", code=exc.code, status=exc.status)
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await _interrupted(services, turn, run)
            yield writer.error(exc.to_body())
            yield writer.done()
            return
        except RedisError:
            # The answer was sent but could not be stored (logged by the commit): say so, and
            # end properly.
            yield writer.error(STORAGE_LOST.to_body())
            yield writer.done()
            return
        except BaseException:
            # The client went away (closed or cancelled): abort, keep what exists, release.
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await _interrupted(services, turn, run)
            raise
    # Committed and released before the last events go out: a client leaving now finds the
    # turn stored once, its replay recorded and the lock free.
    yield writer.finish(result.finish_reason, cascade_extension(result), session_id)
    if include_usage:
        yield writer.usage(result.usage, result.thinking)
    yield writer.done()


async def _interrupted(services: Services, turn: SessionTurn, run: AgentRun) -> None:
    """Abort the runtime call in flight and store what the run produced, marked interrupted."""
    rid = run.current_rid
    try:
        if rid is not None:
            await services.runtime.abort(rid)
    except Exception as exc:  # the runtime may be gone; the turn is still stored
        log.warning("abort_failed", exc_type=type(exc).__name__)
    await turn.interrupted(run.partial_messages())
    log.info("stream_interrupted", rid=rid)
