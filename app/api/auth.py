"""API-key authentication: keys are kept only as sha256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from app import metrics
from app.config import Settings
from app.errors import AuthenticationError

ANONYMOUS_OWNER = "local"


def owner_for_key(settings: Settings, presented: str) -> str | None:
    """The owner id for a presented key, or None. Compares every digest (constant time)."""
    digest = hashlib.sha256(presented.encode()).hexdigest()
    found: str | None = None
    for known, owner in settings.api_key_digests.items():
        if hmac.compare_digest(known, digest):
            found = owner
    return found


async def authenticate(request: Request) -> str:
    """FastAPI dependency: the caller's owner id. With auth off every caller is `local`.

    Async on purpose: a plain `def` dependency would be run in a worker thread per request.
    """
    settings: Settings = request.app.state.services.settings
    if not settings.auth_enabled:
        metrics.note(key_id=ANONYMOUS_OWNER)
        return ANONYMOUS_OWNER
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "missing API key: send `Authorization: Bearer <key>`", code="missing_api_key"
        )
    owner = owner_for_key(settings, token.strip())
    if owner is None:
        raise AuthenticationError("invalid API key")
    metrics.note(key_id=owner)  # a digest's prefix, never the key
    return owner
