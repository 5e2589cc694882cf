"""The ledger: what a stateless client leaves out of the history it resends, kept in Redis.

Stateless clients (Open WebUI, Home Assistant) resend the whole conversation each turn, but
each assistant answer comes back as its text only: without the reasoning, and without the
server-side tool calls and results that produced it. The ledger keeps those steps, so the turn
engine can put them back and the model sees (and the runtime's prefix cache finds) what it
produced before. It also keeps a write call paused in plain chat until the user answers it.

Contracts:
- Entries are keyed by the owner (in the key's name and in the digest) and by a digest of the
  conversation as the client sent it, normalised (`ClientHistory`): roles, text trimmed, text
  parts joined, images by the SHA-256 of their URL, tool calls and tool call ids. Reasoning is
  not part of it, so a client that does or does not echo it finds the same entries.
- `Steps` replace the last `span` client messages up to an answer (1: the answer alone; more
  after an approval, which stands for the question, the yes and the answer); their digest is
  that of the conversation up to and including the answer. They live `ledger_ttl_days`,
  renewed each time a turn reads them.
- A `Pause` is keyed by the conversation up to and including the question cascade asked; it
  lives `ledger_pause_ttl` seconds and is taken at most once (`GETDEL`): the next request that
  continues that exact conversation consumes it, whatever it answers. It is never built from
  anything a client sent, and one whose stored owner is not the reader is ignored.
- `read` is one round trip (a pipeline), whatever the number of lookups; so is `write`. An
  unreadable stored value counts as missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.sessions.config import SessionSettings

log = structlog.get_logger(__name__)

Kind = Literal["steps", "pause"]
M = TypeVar("M", bound=BaseModel)


class Steps(BaseModel):
    """A run's messages that stand for the last `span` client messages up to an answer."""

    model_config = ConfigDict(extra="forbid")

    span: int = Field(ge=1)
    messages: list[dict[str, Any]]


class Pause(BaseModel):
    """A write call waiting for the user's yes: the paused run's messages (the last assistant
    one carrying the pause mark and the calls) standing for the last `span` client messages
    up to the question."""

    model_config = ConfigDict(extra="forbid")

    pause_id: str
    owner: str
    span: int = Field(ge=1)
    messages: list[dict[str, Any]]
    calls: list[dict[str, Any]]


def _text(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    parts: list[Any] = []
    for part in content:
        if part.get("type") in ("text", "input_text"):
            parts.append(str(part.get("text", "")))
        else:
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"image": hashlib.sha256(str(url).encode()).hexdigest()})
    if all(isinstance(p, str) for p in parts):
        return "".join(parts).strip()
    return [p.strip() if isinstance(p, str) else p for p in parts]


def canonical(message: dict[str, Any]) -> dict[str, Any]:
    """The parts of a client message the ledger's digests cover (see the module docstring)."""
    role = message.get("role")
    out: dict[str, Any] = {
        "role": "system" if role == "developer" else role,
        "content": _text(message.get("content")),
    }
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            [
                c.get("id"),
                (c.get("function") or {}).get("name"),
                (c.get("function") or {}).get("arguments"),
            ]
            for c in calls
        ]
    if message.get("tool_call_id") is not None:
        out["tool_call_id"] = message["tool_call_id"]
    return out


class ClientHistory:
    """Digests of every prefix of a conversation as the client sent it, for one owner.

    Built in one pass (a hash state kept per prefix), so all of a request's lookups cost one
    reading of its messages."""

    def __init__(self, owner: str, messages: Sequence[dict[str, Any]] = ()) -> None:
        state = hashlib.sha256(b"cascade-ledger-1\0" + owner.encode() + b"\0")
        self._states = [state.copy()]
        for message in messages:
            self._add(message)

    def _add(self, message: dict[str, Any]) -> None:
        state = self._states[-1].copy()
        frame = orjson.dumps(canonical(message), option=orjson.OPT_SORT_KEYS)
        state.update(len(frame).to_bytes(8, "big") + frame)
        self._states.append(state)

    def __len__(self) -> int:
        return len(self._states) - 1

    def then(self, message: dict[str, Any]) -> ClientHistory:
        """This history with one more message (this one is unchanged)."""
        out = ClientHistory.__new__(ClientHistory)
        out._states = list(self._states)
        out._add(message)
        return out

    def digest(self, kind: Kind, upto: int | None = None) -> str:
        """The digest of the first `upto` messages (all by default) for an entry of `kind`."""
        state = self._states[len(self) if upto is None else upto].copy()
        state.update(kind.encode())
        return state.hexdigest()


@dataclass
class LedgerRead:
    steps: dict[str, Steps] = field(default_factory=dict)  # by digest; found ones only
    pause: Pause | None = None


class Ledger:
    """The ledger in Redis; see the module docstring."""

    def __init__(self, redis: aioredis.Redis, settings: SessionSettings | None = None) -> None:
        self._redis = redis
        self.settings = settings or SessionSettings()

    def key(self, owner: str, kind: Kind, digest: str) -> str:
        """String: one entry (JSON). The owner id is cascade's own (`key_…`, or `local`)."""
        return f"{self.settings.key_prefix}:ledger:{owner}:{kind}:{digest}"

    async def read(self, owner: str, steps: Sequence[str], pause: str | None) -> LedgerRead:
        """The steps found among the `steps` digests (each one's TTL renewed), and the pause
        at `pause`, taken: it is gone from Redis once this returns."""
        if not steps and pause is None:
            return LedgerRead()
        ttl = self.settings.ledger_ttl_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest in steps:
                pipe.getex(self.key(owner, "steps", digest), px=ttl)
            if pause is not None:
                pipe.getdel(self.key(owner, "pause", pause))
            replies = await pipe.execute()
        out = LedgerRead()
        for digest, raw in zip(steps, replies, strict=False):
            if raw is not None and (found := _load(Steps, raw)) is not None:
                out.steps[digest] = found
        if pause is not None and replies[-1] is not None:
            taken = _load(Pause, replies[-1])
            out.pause = taken if taken is not None and taken.owner == owner else None
        return out

    async def write(
        self,
        owner: str,
        steps: Sequence[tuple[str, Steps]] = (),
        pause: tuple[str, Pause] | None = None,
    ) -> None:
        """Store steps and a pause, each with its TTL, in one round trip."""
        if not steps and pause is None:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for digest, entry in steps:
                pipe.set(
                    self.key(owner, "steps", digest),
                    entry.model_dump_json(),
                    px=self.settings.ledger_ttl_ms,
                )
            if pause is not None:
                digest, paused = pause
                pipe.set(
                    self.key(owner, "pause", digest),
                    paused.model_dump_json(),
                    px=self.settings.ledger_pause_ttl_ms,
                )
            await pipe.execute()


def _load(model: type[M], raw: bytes | str) -> M | None:
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        log.warning("ledger_entry_unreadable", model=model.__name__)
        return None
