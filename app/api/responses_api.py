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

Streaming (`stream: true`) sends the Responses event sequence; the HTTP response starts only
with the run's first event (a runtime that is down is a 503), and a client that disconnects
aborts the runtime request; nothing is stored for a response that did not finish.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Literal

import anyio
import structlog
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from app.agent.loop import AgentRun
from app.agent.models import (
    ClientToolCallDelta,
    ContentDelta,
    ReasoningDelta,
    RunDone,
    RunResult,
    ToolProgress,
)
from app.agent.responses_approvals import check_resumed
from app.agent.responses_protocol import (
    ENCRYPTED_REASONING,
    INCLUDABLE,
    ChatTranslation,
    ResponseEventWriter,
    ResponsesRequest,
    Seal,
    Unseal,
    fit_translation,
    new_id,
    parse_responses_request,
    response_body,
    response_shell,
    to_chat_request,
    tools_listing,
)
from app.agent.turn import AssembledTurn, assemble_turn
from app.api.deps import Owner, ServicesDep
from app.api.responses import JSONResponse, list_page
from app.api.streaming import event_stream, first_event
from app.errors import CascadeError, InvalidRequestError, NotFoundError
from app.jsonbody import JsonBodyError, parse_json
from app.services import Services
from app.sessions.responses_store import ResponseStore, StoredResponse
from app.sessions.turn import SessionTurn

log = structlog.get_logger(__name__)
router = APIRouter()


def _store(services: Services) -> ResponseStore:
    if services.responses is None:
        raise NotFoundError("responses are not stored on this server (no Redis)")
    return services.responses


class _Turn:
    """One response being made: its request, translation, run and where it is stored."""

    def __init__(
        self,
        services: Services,
        req: ResponsesRequest,
        owner: str,
        translation: ChatTranslation,
        previous: list[dict[str, Any]],
        model: str,
        seal: Seal | None,
    ) -> None:
        self.services = services
        self.seal = seal  # set when the client asked for reasoning.encrypted_content
        self.req = req
        self.owner = owner
        self.translation = translation
        self.previous = previous  # the chain's stored history (without instructions)
        self.conversation: SessionTurn | None = None  # held from `_open` until committed
        self.shell = response_shell(
            req, response_id=new_id("resp"), model=model, created_at=int(time.time())
        )
        if services.responses is None:
            self.shell["store"] = False

    async def assemble(self, *, stream: bool) -> tuple[AssembledTurn, int]:
        assembled = await assemble_turn(
            self.services.turn,
            self.translation.request,
            owner=self.owner,
            stream=stream,
            history=self.translation.history,
            options=self.conversation.options if self.conversation is not None else None,
            # A stored response continues by its id; only a client that resends the
            # conversation itself (store: false) is helped by the ledger.
            ledger=not self.shell["store"],
        )
        answers = self.translation.answers
        check_resumed(answers, assembled.run.resumed)
        if answers.pause_id is not None and not await _store(self.services).claim_approval(
            answers.pause_id
        ):
            raise InvalidRequestError(
                "this approval request is answered already", param="input[0].approval_request_id"
            )
        # The run's messages start with this turn's input (normalised, images stored).
        return assembled, len(assembled.run.produced)

    async def save(self, result: RunResult, body: dict[str, Any]) -> None:
        await _commit_conversation(self.conversation, result)
        if not self.shell["store"] or self.services.responses is None:
            return
        await self.services.responses.put(
            self.owner,
            StoredResponse(
                body=body,
                input_items=self.translation.input_items,
                history=[*self.previous, *result.new_messages],
                items=[
                    *self.translation.chain_items,
                    *self.translation.input_items,
                    *body["output"],
                ],
            ),
        )


async def _open(services: Services, request: Request, owner: str) -> _Turn:
    raw = await request.body()
    try:
        data = parse_json(raw)
    except JsonBodyError as exc:
        raise InvalidRequestError(f"request body: {exc}") from None
    req = parse_responses_request(data)
    previous: list[dict[str, Any]] = []
    conversation = await _open_conversation(services, req, owner)  # first: it excludes the next
    chain_items: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        try:
            stored = await _store(services).get(owner, req.previous_response_id)
        except NotFoundError:
            raise NotFoundError(
                f"no response {req.previous_response_id!r}",
                code="previous_response_not_found",
                param="previous_response_id",
            ) from None
        previous, chain_items = stored.history, stored.chain_items()
    try:
        if conversation is not None:
            previous = conversation.history
        registry, policy = services.registry, services.policy
        available = [n for n in registry.names() if policy.is_enabled(n)]
        seal, unseal = _sealing(services, req, owner)
        translation = to_chat_request(
            req,
            stored_history=previous,
            available_server_tools=available,
            unseal=unseal,
            chain_items=chain_items,
        )
        truncated = None
        if req.truncation == "auto":
            context = await services.runtime_client.context_length()
            if context is not None:  # unknown: the runtime's own check decides
                offered = req.server_tools if req.server_tools is not None else available
                truncated = fit_translation(
                    translation,
                    req,
                    context_length=context,
                    server_schemas=registry.schemas(offered),
                )
        model = req.model or await services.runtime.model_name()
    except BaseException:
        await _release_conversation(conversation)
        raise
    turn = _Turn(services, req, owner, translation, translation.previous, model, seal)
    if truncated is not None:
        turn.shell["cascade"] = {"truncation": truncated}  # what auto truncation dropped
    if conversation is not None:
        _join_conversation(turn, conversation)
    return turn


# ----------------------------------------------------------------------------- conversation
# A response with `conversation` is a session turn: the session's lock is held from `_open`
# until the response is committed to it (or has failed), its messages are the history, and the
# turn's input and output messages are appended only when the response finished.


def _conversation_id(req: ResponsesRequest) -> str | None:
    conversation = req.conversation
    if conversation is None:
        return None
    if req.previous_response_id is not None:
        raise InvalidRequestError(
            "conversation and previous_response_id cannot be used together", param="conversation"
        )
    conversation_id = conversation if isinstance(conversation, str) else conversation.get("id")
    if not isinstance(conversation_id, str) or not conversation_id:
        raise InvalidRequestError(
            'conversation must be a conversation id or {"id": "conv_..."}', param="conversation"
        )
    return conversation_id


async def _open_conversation(
    services: Services, req: ResponsesRequest, owner: str
) -> SessionTurn | None:
    """The request's conversation, locked and loaded (404 when unknown or another owner's)."""
    conversation_id = _conversation_id(req)
    if conversation_id is None:
        return None
    hold = SessionTurn(services.sessions, None, owner=owner, session_id=conversation_id)
    try:
        await hold.__aenter__()  # left by `_release_conversation`, on every path
    except NotFoundError:
        raise NotFoundError(
            f"no conversation {conversation_id!r}",
            code="conversation_not_found",
            param="conversation",
        ) from None
    return hold


def _join_conversation(turn: _Turn, conversation: SessionTurn) -> None:
    assert conversation.session_id is not None
    turn.conversation = conversation
    turn.shell["conversation"] = {"id": conversation.session_id}
    # A session turn: the run is routed, and its server tools scoped, by the session.
    request = turn.translation.request
    turn.translation.request = request.model_copy(update={"session_id": conversation.session_id})


async def _commit_conversation(conversation: SessionTurn | None, result: RunResult) -> None:
    """Append the finished response's messages (its input first) to its conversation, then let
    the conversation go, so the next turn may start as soon as this one is answered."""
    if conversation is None:
        return
    await conversation.commit(result.new_messages)
    await _release_conversation(conversation)


async def _release_conversation(conversation: SessionTurn | None) -> None:
    if conversation is not None:
        await conversation.__aexit__(None, None, None)


async def _holding(turn: _Turn, events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """`events`, the conversation released however they end."""
    try:
        async with aclosing(events):
            async for chunk in events:
                yield chunk
    finally:
        await _release_conversation(turn.conversation)


def _sealing(
    services: Services, req: ResponsesRequest, owner: str
) -> tuple[Seal | None, Unseal | None]:
    """Reasoning sealed for the owner (when asked for with `include`), and the opener of the
    blobs a stateless client hands back. Both need `CASCADE_SECRET_KEY`."""
    box = services.sealer
    wanted = ENCRYPTED_REASONING in (req.include or [])
    if wanted and box is None:
        raise InvalidRequestError(
            "reasoning.encrypted_content needs a server key: the operator sets CASCADE_SECRET_KEY",
            param="include",
        )
    if box is None:
        return None, None

    def seal(text: str) -> str:
        return box.seal({"text": text}, owner=owner, purpose="reasoning")

    def unseal(blob: str, param: str) -> str:
        opened = box.open(blob, owner=owner, purpose="reasoning", param=param)
        text = opened.get("text") if isinstance(opened, dict) else None
        if not isinstance(text, str):
            raise InvalidRequestError("encrypted_content holds no reasoning", param=param)
        return text

    return (seal if wanted else None), unseal


@router.post("/v1/responses")
async def create_response(request: Request, services: ServicesDep, owner: Owner) -> Response:
    turn = await _open(services, request, owner)
    if turn.req.stream:
        return await _streamed(turn)
    try:
        assembled, inputs = await turn.assemble(stream=False)
        listed = _listing(turn, assembled.run)
        result = await assembled.run.run()
        body = response_body(
            turn.shell,
            result,
            result.new_messages[inputs:],
            seal=turn.seal,
            approved=turn.translation.answers.approved,
            listed=listed,
        )
        await turn.save(result, body)
    finally:
        await _release_conversation(turn.conversation)
    return JSONResponse(body)


async def _streamed(turn: _Turn) -> Response:
    """Take the stream's first item before answering: whatever fails before the run's first
    event (400, 503, ...) is an HTTP error."""
    events = _holding(turn, _stream(turn))
    return event_stream(await first_event(events), events)


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


def _listing(turn: _Turn, run: AgentRun) -> dict[str, Any] | None:
    """The `mcp_list_tools` item, only for a request that asked for server tools itself
    (`server_tools`, or a `web_search` tool): as OpenAI lists an MCP server's tools only to a
    request that named that server, a client that named none sees no foreign item."""
    req = turn.req
    asked = req.server_tools is not None or any(
        tool.get("type") != "function" for tool in req.tools or []
    )
    if not asked:
        return None
    return tools_listing(run.tool_defs, run.server_names, turn.translation.chain_items)


def _may_pause(services: Services, name: str) -> bool:
    """Whether a call of the tool `name` may wait for approval (only write tools do)."""
    tool = services.registry.get(name)
    return tool is not None and tool.side_effect == "write"


async def _stream(turn: _Turn) -> AsyncGenerator[bytes, None]:
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
                    out += writer.start(_listing(turn, run))
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
                            may_pause=_may_pause(turn.services, event.name),
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
            await _abort(turn.services, run)
        raise
    for chunk in last:
        yield chunk


async def _abort(services: Services, run: AgentRun) -> None:
    rid = run.current_rid
    if rid is None:
        return
    try:
        await services.runtime.abort(rid)
    except Exception as exc:  # the runtime may be gone already
        log.warning("abort_failed", exc_type=type(exc).__name__)
    log.info("responses_stream_interrupted", rid=rid)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, services: ServicesDep, owner: Owner) -> JSONResponse:
    stored = await _store(services).get(owner, response_id)
    return JSONResponse(stored.body)


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
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequestError(f"no input item {after!r} in this response", param="after")
        items = items[ids.index(after) + 1 :]
    return JSONResponse(list_page(items[:limit], has_more=len(items) > limit))
