"""The sessions API: list, read, delete, fork and export an owner's sessions.

Another owner's session answers exactly like a missing one (404), so ids cannot be probed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from app.api.auth import authenticate
from app.api.deps import services_of
from app.api.responses import list_page
from app.errors import CascadeError
from app.sessions.models import SessionInfo
from app.sessions.store import SessionStore

router = APIRouter(prefix="/v1/sessions")


def _store(request: Request) -> SessionStore:
    store: SessionStore | None = services_of(request).sessions
    if store is None:
        raise CascadeError("sessions need Redis; set CASCADE_REDIS_URL", code="no_session_store")
    return store


def _public(info: SessionInfo) -> dict[str, Any]:
    data = info.model_dump(mode="json", exclude={"owner"})
    data["object"] = "session"
    return data


class ForkRequest(BaseModel):
    upto: int | None = Field(default=None, ge=0, description="Messages to keep (None = all).")


@router.get("")
async def list_sessions(
    request: Request,
    owner: str = Depends(authenticate),
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = Query(default=None),
) -> dict[str, Any]:
    sessions, has_more = await _store(request).list(owner, limit=limit, after=after)
    data = [_public(s) for s in sessions]
    return list_page(data, has_more=has_more)


@router.get("/{session_id}")
async def get_session(
    session_id: str, request: Request, owner: str = Depends(authenticate)
) -> dict[str, Any]:
    info, messages = await _store(request).load(session_id, owner)
    return {**_public(info), "messages": messages}


@router.delete("/{session_id}")
async def delete_session(
    session_id: str, request: Request, owner: str = Depends(authenticate)
) -> dict[str, Any]:
    await _store(request).delete(session_id, owner)
    return {"id": session_id, "object": "session.deleted", "deleted": True}


@router.post("/{session_id}/fork")
async def fork_session(
    session_id: str,
    request: Request,
    body: ForkRequest | None = None,
    owner: str = Depends(authenticate),
) -> dict[str, Any]:
    info = await _store(request).fork(session_id, owner, upto=body.upto if body else None)
    return _public(info)


@router.get("/{session_id}/export")
async def export_session(
    session_id: str, request: Request, owner: str = Depends(authenticate)
) -> dict[str, Any]:
    return await _store(request).export(session_id, owner)
