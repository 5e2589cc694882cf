"""The Redis key layout of sessions, turn locks and idempotency records.

Every key a session owns carries the session id as a hash tag (`{sess_…}` or `{conv_…}`), so on
a Redis Cluster they share a slot: its metadata, messages, lock and the idempotency records of
its turns (with their links). The owner's index of sessions is in a slot of its own (no tag): no
script touches it together with a session (see `app.sessions.store` for how the two are kept
consistent). Owner-supplied strings never reach a key unhashed except the owner id, which is
cascade's own (`key_…`).
"""

from __future__ import annotations

import hashlib
import re

# `sess_…` ids come from the sessions' own doors, `conv_…` ids from the Conversations API; both
# name one kind of session, usable at every door.
SESSION_ID_PATTERN = r"(?:sess|conv)_[0-9a-f]{24}"
SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)


class Keys:
    """Builds key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def info(self, session_id: str) -> str:
        """Hash: the session's metadata (owner, title, times, options, version)."""
        return f"{self.prefix}:session:{{{session_id}}}:info"

    def messages(self, session_id: str) -> str:
        """List: the session's messages, one JSON document per element, oldest first."""
        return f"{self.prefix}:session:{{{session_id}}}:messages"

    def idempotency_links(self, session_id: str) -> str:
        """Set: names of idempotency records holding results of this session's turns."""
        return f"{self.prefix}:session:{{{session_id}}}:idem"

    def lock(self, session_id: str) -> str:
        """String: the turn lock's holder token."""
        return f"{self.prefix}:session:{{{session_id}}}:lock"

    def session_keys(self, session_id: str) -> list[str]:
        """Every long-lived key of a session (not its short-lived lock)."""
        return [
            self.info(session_id),
            self.messages(session_id),
            self.idempotency_links(session_id),
        ]

    def owner_index(self, owner: str) -> str:
        """Sorted set: the owner's session ids scored by `updated_at`."""
        return f"{self.prefix}:owner:{owner}:sessions"

    def idempotency(self, owner: str, key: str, session_id: str | None = None) -> str:
        """Hash: one Idempotency-Key's record, for turns on `session_id` under that session's
        tag (so the session's scripts may touch it), else in a slot of its own. The client's
        key is hashed: any length, any characters, and never readable in the keyspace."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        if session_id is not None:
            return f"{self.prefix}:session:{{{session_id}}}:idem:{owner}:{digest}"
        return f"{self.prefix}:idem:{owner}:{digest}"
