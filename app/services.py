"""The long-lived services one API process owns: session store, idempotency keys, image intake,
tool registry. Opened in the app's lifespan, closed on shutdown (MCP servers included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from app.config import Settings
from app.sessions.config import SessionSettings
from app.sessions.idempotency import IdempotencyStore
from app.sessions.store import SessionStore
from tools.registry import ToolRegistry


@dataclass
class Services:
    sessions: SessionStore | None
    idempotency: IdempotencyStore | None
    media: Any | None
    registry: ToolRegistry | None
    closers: list[Any]

    async def aclose(self) -> None:
        for closer in reversed(self.closers):
            await closer()


async def open_services(redis: aioredis.Redis | None, settings: Settings) -> Services:
    session_settings = SessionSettings()
    sessions = SessionStore(redis, session_settings) if redis is not None else None
    idempotency = IdempotencyStore(redis, session_settings) if redis is not None else None
    registry = ToolRegistry()
    return Services(
        sessions=sessions,
        idempotency=idempotency,
        media=None,
        registry=registry,
        closers=[],
    )
