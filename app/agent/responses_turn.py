"""One Responses API response made by the turn engine: what the `/v1/responses` door and the
background workers share (no HTTP here).

`open_turn` reads what a request continues (the chain of `previous_response_id`, or the session
of `conversation`), checks the sealing it asks for, translates it to a `ChatRequest` and, with
`truncation: "auto"`, fits it to the runtime's context; every problem is the same 4xx whoever
calls it. `ResponseTurn` then assembles the run (`assemble_turn`; an approval answer claims its
pause once, right before the run), builds the `Response` body of its result and stores it
(`save`): in the response store when the response is stored, and in its conversation when it
has one.

A response with `conversation` is a session turn: the session's lock is held from `open_turn`
until the response is committed to it or has failed (`release`, which is safe to call on every
path and more than once), its messages are the history, and the turn's input and output
messages are appended only when the response finished.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.agent.loop import AgentRun
from app.agent.models import RunResult
from app.agent.responses_approvals import check_resumed
from app.agent.responses_protocol import (
    ENCRYPTED_REASONING,
    ChatTranslation,
    ResponsesRequest,
    Seal,
    Unseal,
    fit_translation,
    new_id,
    response_body,
    response_shell,
    to_chat_request,
    tools_listing,
)
from app.agent.turn import AssembledTurn, PartsIngest, TurnServices, assemble_turn
from app.errors import InvalidRequestError, NotFoundError
from app.sealed import SealedBox
from app.sessions.responses_store import ResponseStore, StoredResponse
from app.sessions.store import SessionStore
from app.sessions.turn import SessionTurn

ContextLength = Callable[[], Awaitable[int | None]]
"""The runtime's context window in tokens, None when it does not say."""


@dataclass(frozen=True)
class ResponsesServices:
    """What making a response needs: the turn engine's services, the response store (None:
    no Redis, nothing is stored), the sealer of reasoning (None: no server key), the session
    store conversations live in, and the runtime's context length (for `truncation: auto`)."""

    turn: TurnServices
    store: ResponseStore | None
    sealer: SealedBox | None
    sessions: SessionStore | None = None
    context_length: ContextLength | None = None


def response_store(services: ResponsesServices) -> ResponseStore:
    if services.store is None:
        raise NotFoundError("responses are not stored on this server (no Redis)")
    return services.store


class ResponseTurn:
    """One response being made: its request, translation, run and where it is stored."""

    def __init__(
        self,
        services: ResponsesServices,
        req: ResponsesRequest,
        owner: str,
        translation: ChatTranslation,
        previous: list[dict[str, Any]],
        shell: dict[str, Any],
        seal: Seal | None,
    ) -> None:
        self.services = services
        self.seal = seal  # set when the client asked for reasoning.encrypted_content
        self.req = req
        self.owner = owner
        self.translation = translation
        self.previous = previous  # the chain's stored history (without instructions)
        self.shell = shell  # the Response without output: id, model, creation time, echoes
        self.conversation: SessionTurn | None = None  # held from `open_turn` until committed
        self.listed: dict[str, Any] | None = None  # the run's `mcp_list_tools` item, if any
        if services.store is None:
            self.shell["store"] = False

    async def assemble(
        self,
        *,
        stream: bool,
        priority: int | None = None,
        ingest: PartsIngest | None = None,
        claim: bool = True,
    ) -> tuple[AssembledTurn, int]:
        """The assembled run, and how many of its messages are this turn's input. An approval
        answer claims its pause (once for good: a second claim is a 400) unless `claim` is
        false, for a run that is only checked and dropped."""
        conversation = self.conversation
        assembled = await assemble_turn(
            self.services.turn,
            self.translation.request,
            owner=self.owner,
            stream=stream,
            history=self.translation.history,
            options=conversation.options if conversation is not None else None,
            priority=priority,
            ingest=ingest,
            # A stored response continues by its id; only a client that resends the
            # conversation itself (store: false) is helped by the ledger.
            ledger=not self.shell["store"],
        )
        answers = self.translation.answers
        check_resumed(answers, assembled.run.resumed)
        if (
            claim
            and answers.pause_id is not None
            and not await response_store(self.services).claim_approval(answers.pause_id)
        ):
            raise InvalidRequestError(
                "this approval request is answered already", param="input[0].approval_request_id"
            )
        self.listed = self._listing(assembled.run)
        # The run's messages start with this turn's input (normalised, images stored).
        return assembled, len(assembled.run.produced)

    def _listing(self, run: AgentRun) -> dict[str, Any] | None:
        """The `mcp_list_tools` item, only for a request that asked for server tools itself
        (`server_tools`, or a `web_search` tool): as OpenAI lists an MCP server's tools only
        to a request that named that server, a client that named none sees no foreign item."""
        req = self.req
        asked = req.server_tools is not None or any(
            tool.get("type") != "function" for tool in req.tools or []
        )
        if not asked:
            return None
        return tools_listing(run.tool_defs, run.server_names, self.translation.chain_items)

    def may_pause(self, name: str) -> bool:
        """Whether a call of the tool `name` may wait for approval (only write tools do)."""
        registry = self.services.turn.registry
        tool = registry.get(name) if registry is not None else None
        return tool is not None and tool.side_effect == "write"

    def body(self, result: RunResult, inputs: int) -> dict[str, Any]:
        """The finished `Response` of `result` (`inputs`: as `assemble` counted them)."""
        return response_body(
            self.shell,
            result,
            result.new_messages[inputs:],
            seal=self.seal,
            approved=self.translation.answers.approved,
            listed=self.listed,
        )

    def stored(self, result: RunResult, body: dict[str, Any]) -> StoredResponse:
        return StoredResponse(
            body=body,
            input_items=self.translation.input_items,
            history=[*self.previous, *result.new_messages],
            items=[*self.translation.chain_items, *self.translation.input_items, *body["output"]],
        )

    async def save(self, result: RunResult, body: dict[str, Any]) -> None:
        """Commit the response to its conversation (then let the conversation go, so the next
        turn may start as soon as this one is answered), and store it when it is stored."""
        if self.conversation is not None:
            await self.conversation.commit(result.new_messages)
            await self.release()
        if not self.shell["store"] or self.services.store is None:
            return
        await self.services.store.put(self.owner, self.stored(result, body))

    async def release(self) -> None:
        """Let the conversation go without committing (if it was not committed already)."""
        conversation, self.conversation = self.conversation, None
        if conversation is not None:
            await conversation.__aexit__(None, None, None)


async def open_turn(
    services: ResponsesServices,
    req: ResponsesRequest,
    owner: str,
    *,
    shell: dict[str, Any] | None = None,
) -> ResponseTurn:
    """The response `req` asks for, checked and translated (see the module docstring);
    `shell` is a queued response's own (its id, model and creation time), by default a new one.

    Only a response that ended (`completed` or `incomplete`) can be continued: one that is
    queued, in progress, failed or cancelled has no history to continue (a 400). With
    `conversation`, the caller owns the returned turn's hold on it (`save` or `release`)."""
    conversation = await _open_conversation(services, req, owner)  # first: it excludes the next
    try:
        previous, chain_items = await _chain(services, req, owner)
        if conversation is not None:
            previous = conversation.history
        registry, policy = services.turn.registry, services.turn.policy
        names = registry.names() if registry is not None else []
        available = [n for n in names if policy.is_enabled(n)]
        seal, unseal = sealing(services.sealer, req, owner)
        translation = to_chat_request(
            req,
            stored_history=previous,
            available_server_tools=available,
            unseal=unseal,
            chain_items=chain_items,
        )
        truncated = None
        if req.truncation == "auto" and services.context_length is not None:
            context = await services.context_length()
            if context is not None and registry is not None:  # unknown: the runtime decides
                offered = req.server_tools if req.server_tools is not None else available
                truncated = fit_translation(
                    translation,
                    req,
                    context_length=context,
                    server_schemas=registry.schemas(offered),
                )
        if shell is None:
            shell = response_shell(
                req,
                response_id=new_id("resp"),
                model=req.model or await services.turn.runtime.model_name(),
                created_at=int(time.time()),
            )
    except BaseException:
        if conversation is not None:
            await conversation.__aexit__(None, None, None)
        raise
    turn = ResponseTurn(services, req, owner, translation, translation.previous, shell, seal)
    if truncated is not None:
        turn.shell["cascade"] = {"truncation": truncated}  # what auto truncation dropped
    if conversation is not None:
        _join_conversation(turn, conversation)
    return turn


async def _chain(
    services: ResponsesServices, req: ResponsesRequest, owner: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The stored history and items of the chain `req` continues (empty without one)."""
    if req.previous_response_id is None:
        return [], []
    try:
        stored = await response_store(services).get(owner, req.previous_response_id)
    except NotFoundError:
        raise NotFoundError(
            f"no response {req.previous_response_id!r}",
            code="previous_response_not_found",
            param="previous_response_id",
        ) from None
    status = stored.body.get("status")
    if status not in ("completed", "incomplete"):
        raise InvalidRequestError(
            f"response {req.previous_response_id!r} is {status}: only a completed or "
            "incomplete response can be continued",
            param="previous_response_id",
        )
    return stored.history, stored.chain_items()


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
    services: ResponsesServices, req: ResponsesRequest, owner: str
) -> SessionTurn | None:
    """The request's conversation, locked and loaded (404 when unknown or another owner's)."""
    conversation_id = _conversation_id(req)
    if conversation_id is None:
        return None
    hold = SessionTurn(services.sessions, None, owner=owner, session_id=conversation_id)
    try:
        await hold.__aenter__()  # left by `ResponseTurn.release`, on every path
    except NotFoundError:
        raise NotFoundError(
            f"no conversation {conversation_id!r}",
            code="conversation_not_found",
            param="conversation",
        ) from None
    return hold


def _join_conversation(turn: ResponseTurn, conversation: SessionTurn) -> None:
    assert conversation.session_id is not None
    turn.conversation = conversation
    turn.shell["conversation"] = {"id": conversation.session_id}
    # A session turn: the run is routed, and its server tools scoped, by the session.
    request = turn.translation.request
    turn.translation.request = request.model_copy(update={"session_id": conversation.session_id})


def sealing(
    box: SealedBox | None, req: ResponsesRequest, owner: str
) -> tuple[Seal | None, Unseal | None]:
    """Reasoning sealed for the owner (when asked for with `include`), and the opener of the
    blobs a stateless client hands back. Both need `CASCADE_SECRET_KEY`."""
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
