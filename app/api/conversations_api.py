"""`/v1/conversations`: OpenAI's Conversations API, on cascade's sessions.

A conversation is a session: its id (`conv_…`) works at `/v1/sessions/{id}` and as a chat
turn's `session_id`, and any session id works here. Its items are the session's messages as
Responses items (`app.agent.conversation_items`: stable ids, what deleting one item removes);
`metadata` (at most 16 string pairs, keys up to 64 and values up to 512 characters) is kept on
the session and replaced whole by an update. A `POST /v1/responses` with `conversation` runs
over the conversation's messages and appends to it (`app.api.responses_api`).

Items are added, and deleted, under the session's turn lock and with a versioned write, like a
chat turn: a turn running meanwhile is waited for, and never interleaved. Added items are
translated like a response's `input` (the same checks: a `function_call_output` must answer a
call the conversation made), images and videos are stored like a chat turn's (the turn
engine's `ingest_media`). `include` is accepted and changes nothing: items carry everything
cascade keeps (reasoning as its text).

Another owner's conversation answers exactly like a missing one (404).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import metrics
from app.agent.conversation_items import (
    ConversationItem,
    conversation_items,
    find_item,
    removal,
)
from app.agent.protocol import normalise_messages
from app.agent.responses_protocol import ResponsesRequest, to_chat_request
from app.agent.turn import ingest_media
from app.api.deps import Owner, ServicesDep
from app.api.responses import JSONResponse, list_page, page_after
from app.errors import CascadeError, InvalidRequestError, NotFoundError
from app.services import Services
from app.sessions.models import SessionInfo
from app.sessions.store import SessionStore
from app.sessions.turn import SessionTurn

router = APIRouter(prefix="/v1/conversations")

ITEMS_PER_CALL = 20
METADATA_PAIRS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's metadata limits; a `ValueError` (a 400 naming `metadata`) past them."""
    if value is None:
        return None
    if len(value) > METADATA_PAIRS:
        raise ValueError(f"metadata holds at most {METADATA_PAIRS} pairs")
    for key, text in value.items():
        if len(key) > METADATA_KEY_CHARS:
            raise ValueError(f"metadata keys are at most {METADATA_KEY_CHARS} characters")
        if len(text) > METADATA_VALUE_CHARS:
            raise ValueError(f"metadata values are at most {METADATA_VALUE_CHARS} characters")
    return value


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: list[dict[str, Any]] | None = Field(default=None, max_length=ITEMS_PER_CALL)
    metadata: dict[str, str] | None = None

    _metadata = field_validator("metadata")(check_metadata)


class UpdateConversation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    metadata: dict[str, str] | None  # required; null (or {}) clears it

    _metadata = field_validator("metadata")(check_metadata)


class CreateItems(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: list[dict[str, Any]] = Field(min_length=1, max_length=ITEMS_PER_CALL)
    include: list[str] | None = None


def _sessions(services: Services) -> SessionStore:
    if services.sessions is None:
        raise CascadeError(
            "conversations need Redis; set CASCADE_REDIS_URL", code="no_session_store"
        )
    return services.sessions


@contextmanager
def _conversation(conversation_id: str) -> Iterator[None]:
    """A missing session is reported as the missing conversation it is here; the id goes into
    the request's access-log line."""
    metrics.note(session_id=conversation_id)
    try:
        yield
    except NotFoundError as exc:
        if exc.code != "session_not_found":
            raise
        raise NotFoundError(
            f"no conversation {conversation_id!r}",
            code="conversation_not_found",
            param="conversation_id",
        ) from None


def _body(info: SessionInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "object": "conversation",
        "created_at": int(info.created_at),
        "metadata": info.metadata,
    }


def _items(
    services: Services, session_id: str, messages: list[dict[str, Any]]
) -> list[ConversationItem]:
    return conversation_items(session_id, messages, set(services.registry.names()))


async def _messages(
    services: Services, owner: str, items: list[dict[str, Any]], history: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`items` as the messages to store after `history`: translated and checked like a
    response's `input` (errors name `items[i]`), normalised, images and videos stored."""
    request = ResponsesRequest(input=items)
    try:
        translation = to_chat_request(request, stored_history=history, available_server_tools=[])
    except InvalidRequestError as exc:
        param = exc.param or ""
        if not param.startswith("input"):
            raise
        raise InvalidRequestError(
            exc.message.replace("input[", "items["), param="items" + param[len("input") :]
        ) from None
    messages = normalise_messages(translation.request.messages)
    await ingest_media(services.media, messages, owner=owner, param="items")
    return messages


@router.post("")
async def create_conversation(
    body: CreateConversation, services: ServicesDep, owner: Owner
) -> JSONResponse:
    sessions = _sessions(services)
    messages = await _messages(services, owner, body.items, []) if body.items else []
    info = await sessions.create(owner, messages=messages, metadata=body.metadata, id_prefix="conv")
    metrics.note(session_id=info.id)
    return JSONResponse(_body(info))


@router.get("/{conversation_id}")
async def get_conversation(
    conversation_id: str, services: ServicesDep, owner: Owner
) -> JSONResponse:
    with _conversation(conversation_id):
        info = await _sessions(services).get_info(conversation_id, owner)
    return JSONResponse(_body(info))


@router.post("/{conversation_id}")
async def update_conversation(
    conversation_id: str, body: UpdateConversation, services: ServicesDep, owner: Owner
) -> JSONResponse:
    with _conversation(conversation_id):
        info = await _sessions(services).set_metadata(conversation_id, owner, body.metadata or {})
    return JSONResponse(_body(info))


@router.delete("/{conversation_id}")
async def delete_conversation(
    conversation_id: str, services: ServicesDep, owner: Owner
) -> JSONResponse:
    with _conversation(conversation_id):
        await _sessions(services).delete(conversation_id, owner)
    return JSONResponse({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@router.get("/{conversation_id}/items")
async def list_items(
    conversation_id: str,
    services: ServicesDep,
    owner: Owner,
    limit: int = Query(default=20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> JSONResponse:
    """The conversation's items, newest first unless `order=asc`; `after` is an item id."""
    with _conversation(conversation_id):
        _, messages = await _sessions(services).load(conversation_id, owner)
    items = [r.item for r in _items(services, conversation_id, messages)]
    if order == "desc":
        items.reverse()
    return JSONResponse(
        page_after(items, after=after, limit=limit, missing=f"item {after!r} in this conversation")
    )


@router.post("/{conversation_id}/items")
async def create_items(
    conversation_id: str, body: CreateItems, services: ServicesDep, owner: Owner
) -> JSONResponse:
    """Append `items` (up to 20) to the conversation; answers with the items they became."""
    with _conversation(conversation_id):
        async with SessionTurn(
            _sessions(services), None, owner=owner, session_id=conversation_id
        ) as turn:
            messages = await _messages(services, owner, body.items, turn.history)
            await turn.commit(messages)
            stored = [*turn.history, *messages]
    start = len(turn.history)
    added = [r.item for r in _items(services, conversation_id, stored) if r.message >= start]
    return JSONResponse(list_page(added, has_more=False))


@router.get("/{conversation_id}/items/{item_id}")
async def get_item(
    conversation_id: str, item_id: str, services: ServicesDep, owner: Owner
) -> JSONResponse:
    with _conversation(conversation_id):
        _, messages = await _sessions(services).load(conversation_id, owner)
    return JSONResponse(find_item(_items(services, conversation_id, messages), item_id).item)


@router.delete("/{conversation_id}/items/{item_id}")
async def delete_item(
    conversation_id: str, item_id: str, services: ServicesDep, owner: Owner
) -> JSONResponse:
    """Delete one item (a tool call takes its output along; an output alone is a 400);
    answers with the conversation."""
    sessions = _sessions(services)
    with _conversation(conversation_id):
        async with SessionTurn(sessions, None, owner=owner, session_id=conversation_id) as turn:
            assert turn.info is not None  # entered with a session id: loaded
            target = find_item(_items(services, conversation_id, turn.history), item_id)
            edit = removal(turn.history, target)
            info = await sessions.edit_messages(
                conversation_id,
                owner,
                expected_version=turn.info.version,
                replace=edit.replace,
                remove=edit.remove,
            )
    return JSONResponse(_body(info))
