"""`/v1/responses`: the Responses API as a door on the turn engine.

`POST /v1/responses` translates its request to a `ChatRequest` (`app.agent.responses_protocol`)
and runs it through `assemble_turn`, like the chat door. With `previous_response_id` the chain's
stored history is the run's history (one read); `instructions` apply to this response only.
With `store` (the default) the response, its input items and the chain's history so far are
kept for `response_ttl_days`; `store: false` keeps nothing. Stored responses are the caller's
only: another key's id answers 404, like an unknown one. Approval responses are answered once
per pause (`ResponseStore.claim_approval`, taken right before the run).

With `conversation` (an id or `{"id": ...}`; not with `previous_response_id`) the response is a
turn of that session: its lock is held while the response runs, its messages are the history,
and the input and output messages are appended to it when the response finishes (whatever
`store` says); a failed or cut response appends nothing. An unknown conversation is a 404.
A background response cannot have a conversation (a 400).

With `background: true` (it needs `store`; not streamed) the request is checked as in the
foreground, stored as `queued` and queued for the batch workers, ahead of batch items; the
answer is the queued `Response` at once. A worker (`cascade worker`) makes it through the same path
(`app.agent.responses_background`); `GET` shows it `in_progress`, then its end (`completed`,
`incomplete`, or `failed` with an `error`). `POST /v1/responses/{id}/cancel` cancels it.

Streaming (`stream: true`) sends the Responses event sequence; the HTTP response starts only
with the run's first event (a runtime that is down is a 503), and a client that disconnects
aborts the runtime request; nothing is stored for a response that did not finish.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Literal

import anyio
import structlog
from fastapi import APIRouter, Query, Request
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
from app.agent.responses_protocol import INCLUDABLE, ResponseEventWriter, parse_responses_request
from app.agent.responses_turn import ResponsesServices, ResponseTurn, open_turn, response_store
from app.api.auth import authenticate
from app.api.deps import Owner, ServicesDep, services_of
from app.api.responses import JSONResponse, page_after
from app.api.streaming import event_stream, first_event
from app.errors import CascadeError, InvalidRequestError
from app.jsonbody import JsonBodyError, parse_json
from app.runtime.guard import Runtime
from app.services import Services
from app.sessions.responses_store import QUEUED, ResponseStore, StoredResponse

log = structlog.get_logger(__name__)
router = APIRouter()


def _services(services: Services) -> ResponsesServices:
    return ResponsesServices(
        turn=services.turn,
        store=services.responses,
        sealer=services.sealer,
        sessions=services.sessions,
        context_length=services.runtime_client.context_length,
    )


def _store(services: Services) -> ResponseStore:
    return response_store(_services(services))


async def _open(services: Services, request: Request, owner: str) -> ResponseTurn:
    raw = await request.body()
    try:
        data = parse_json(raw)
    except JsonBodyError as exc:
        raise InvalidRequestError(f"request body: {exc}") from None
    req = parse_responses_request(data)
    if req.background and req.conversation is not None:
        raise InvalidRequestError(
            "a background response cannot be part of a conversation", param="conversation"
        )
    return await open_turn(_services(services), req, owner)


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    # As in the chat door: the two dependencies called directly (FastAPI's dependency solving
    # cost more per turn than either of them; same order, same errors: authentication first).
    owner = await authenticate(request)
    services = services_of(request)
    turn = await _open(services, request, owner)
    conversation = turn.shell.get("conversation")
    metrics.note(
        response_id=turn.shell["id"],
        session_id=conversation["id"] if conversation is not None else None,
    )
    if turn.req.background:
        return await _queued(services, request, turn)
    if turn.req.stream:
        return await _streamed(turn)
    try:
        assembled, inputs = await turn.assemble(stream=False)
        result = await assembled.run.run()
        body = turn.body(result, inputs)
        await turn.save(result, body)
    finally:
        await turn.release()
    return JSONResponse(body)


async def _queued(services: Services, request: Request, turn: ResponseTurn) -> JSONResponse:
    """Check the turn whole, as in the foreground (its run is assembled, then dropped), store
    it as `queued` and queue its request on the workers' priority lane."""
    store, queue = services.responses, services.batch_store
    if store is None or queue is None:
        raise InvalidRequestError(
            "background responses need Redis on this server", param="background"
        )
    await turn.assemble(stream=False, claim=False)  # the worker's run claims an approval
    body = {**turn.shell, "status": QUEUED}
    queued = StoredResponse(body=body, input_items=turn.translation.input_items, history=[])
    await store.put(turn.owner, queued)
    try:
        await queue.queue_response(body["id"], turn.owner, await request.body())
    except Exception:
        # Not queued: no worker would ever take it, so it is not kept either.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await store.delete(turn.owner, body["id"])
        raise
    return JSONResponse(body)


async def _streamed(turn: ResponseTurn) -> Response:
    """Take the stream's first item before answering: whatever fails before the run's first
    event (400, 503, ...) is an HTTP error."""
    events = _holding(turn, _stream(turn))
    return event_stream(await first_event(events), events)


async def _holding(
    turn: ResponseTurn, events: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """`events`, the turn's conversation released however they end."""
    try:
        async with aclosing(events):
            async for chunk in events:
                yield chunk
    finally:
        await turn.release()


def _call_arguments(run: AgentRun, call_id: str) -> str:
    # A resumed (approved) call was made in the stored history, not in this run.
    for message in reversed([*run.history, *run.produced]):
        for call in message.get("tool_calls") or []:
            if call.get("id") == call_id:
                arguments: str = call["function"]["arguments"]
                return arguments
    return ""


def _call_output(run: AgentRun, call_id: str) -> str | None:
    for message in reversed(run.produced):
        if message.get("role") == "tool" and message.get("tool_call_id") == call_id:
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


async def _stream(turn: ResponseTurn) -> AsyncGenerator[bytes, None]:
    """The one owner of a streamed response: its run, its events and its end."""
    assembled, _ = await turn.assemble(stream=True)
    run = assembled.run
    writer = ResponseEventWriter(
        turn.shell, seal=turn.seal, approved=turn.translation.answers.approved
    )
    result: RunResult | None = None
    started = False
    try:
        async with aclosing(run.events()) as events:
            async for event in events:
                out: list[bytes] = []
                if not started:
                    started = True
                    out += writer.start(turn.listed)
                if isinstance(event, ContentDelta):
                    out += writer.content(event.text)
                elif isinstance(event, ReasoningDelta):
                    out += writer.reasoning(event.text)
                elif isinstance(event, ClientToolCallDelta):
                    out += writer.tool_call(event.index, event.id, event.name, event.arguments)
                elif isinstance(event, ToolProgress):
                    if event.status == "started":
                        arguments = _call_arguments(run, event.call_id)
                        out += writer.tool_started(
                            event.call_id,
                            event.name,
                            arguments,
                            may_pause=turn.may_pause(event.name),
                        )
                    else:
                        output = _call_output(run, event.call_id)
                        out += writer.tool_finished(
                            event.call_id, output, failed=event.status == "failed"
                        )
                elif isinstance(event, RunDone):
                    result = event.result
                for chunk in out:
                    yield chunk
        assert result is not None
        body, last = writer.finish(result)
        await turn.save(result, body)
    except CascadeError as exc:
        if not started:
            raise  # nothing was sent: a plain HTTP error
        log.warning("responses_stream_failed", code=exc.code, status=exc.status)
        for chunk in writer.failed(exc.message):
            yield chunk
        return
    except BaseException:
        # The client went away (closed or cancelled): abort the runtime request.
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await _abort(turn.services.turn.runtime, run)
        raise
    for chunk in last:
        yield chunk


async def _abort(runtime: Runtime, run: AgentRun) -> None:
    rid = run.current_rid
    if rid is None:
        return
    try:
        await runtime.abort(rid)
    except Exception as exc:  # the runtime may be gone already
        log.warning("abort_failed", exc_type=type(exc).__name__)
    log.info("responses_stream_interrupted", rid=rid)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, services: ServicesDep, owner: Owner) -> JSONResponse:
    stored = await _store(services).get(owner, response_id)
    return JSONResponse(stored.body)


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, services: ServicesDep, owner: Owner) -> JSONResponse:
    """Cancel a background response that is queued (it never starts) or in progress (its
    worker aborts the runtime request within `response_cancel_poll`); the body answered is the
    response now. One that ended already is answered as it is (cancelling is idempotent); one
    not created with `background: true` is a 400."""
    store = _store(services)
    stored = await store.get(owner, response_id)
    if stored.body.get("background") is not True:
        raise InvalidRequestError(
            "only a response created with background: true can be cancelled",
            param="response_id",
        )
    if await store.cancel(owner, response_id):
        log.info("background_response_cancelled", response_id=response_id)
    return JSONResponse((await store.get(owner, response_id)).body)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, services: ServicesDep, owner: Owner) -> JSONResponse:
    await _store(services).delete(owner, response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    services: ServicesDep,
    owner: Owner,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = Query(default=None, max_length=256),
    include: list[INCLUDABLE] | None = Query(default=None),  # noqa: B008
) -> JSONResponse:
    """The response's input items (OpenAI's list shape), newest first unless `order=asc`.
    `include` is checked and has nothing to add: the stored items are whole."""
    stored = await _store(services).get(owner, response_id)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    missing = f"input item {after!r} in this response"
    return JSONResponse(page_after(items, after=after, limit=limit, missing=missing))
