"""Sessions in Redis: conversation history with reasoning kept apart, versions, TTL, locks,
and Idempotency-Key records."""

from app.sessions.config import SessionSettings, load_session_settings
from app.sessions.idempotency import IdempotencyStore, request_hash
from app.sessions.lock import RedisLock
from app.sessions.models import SessionInfo, SessionOptions
from app.sessions.store import SessionStore, new_session_id

__all__ = [
    "IdempotencyStore",
    "RedisLock",
    "SessionInfo",
    "SessionOptions",
    "SessionSettings",
    "SessionStore",
    "load_session_settings",
    "new_session_id",
    "request_hash",
]
