"""`memory_recall`, `memory_remember`, `memory_forget`: short notes per owner, in Redis.

Notes live in one Redis hash per owner (`{prefix}:tools:memory:{owner}`; field = note id,
value = JSON `{"text", "created"}`) with an id counter beside it. Remembering is one Lua script,
so the per-owner bound (`max_notes`) holds under concurrent calls. Remember and forget are
`write` tools (they change what later conversations see); recall is `read`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from pydantic import Field
from redis.exceptions import RedisError

from tools.registry import Tool, ToolArgs, ToolContext, ToolError, tool

# KEYS[1] = notes hash, KEYS[2] = id counter; ARGV = note JSON, max notes.
# Returns the new id, or -1 when the owner already has max notes.
_REMEMBER = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  return -1
end
local id = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], tostring(id), ARGV[1])
return id
"""


class RecallArgs(ToolArgs):
    query: str | None = Field(
        default=None,
        max_length=200,
        description="Only notes containing this text (case-insensitive). Default: all notes.",
    )


class RememberArgs(ToolArgs):
    text: str = Field(min_length=1, description="The note to keep for later conversations.")


class ForgetArgs(ToolArgs):
    note_id: int = Field(ge=1, description="The id of the note to delete (see memory_recall).")


def _keys(prefix: str, owner: str) -> tuple[str, str]:
    base = f"{prefix}:tools:memory:{owner}"
    return base, base + ":seq"


def _redis(ctx: ToolContext) -> Any:
    if ctx.redis is None:
        raise ToolError("memory is not available (no storage configured)")
    return ctx.redis


@contextlib.contextmanager
def _storage() -> Iterator[None]:
    try:
        yield
    except RedisError:
        raise ToolError("the memory storage cannot be reached right now") from None


def make_memory_tools(
    *, max_notes: int = 200, max_note_chars: int = 1000, key_prefix: str = "cascade"
) -> list[Tool]:
    """The three memory tools with their per-owner bounds."""

    @tool(name="memory_recall", timeout=5.0, needs=["redis"])
    async def memory_recall(args: RecallArgs, ctx: ToolContext) -> str:
        """List the notes you saved about this user in earlier conversations (optionally only
        those containing `query`)."""
        notes_key, _ = _keys(key_prefix, ctx.owner)
        with _storage():
            raw: dict[Any, Any] = await _redis(ctx).hgetall(notes_key)
        notes = sorted((int(k), json.loads(v)["text"]) for k, v in raw.items())
        if args.query:
            needle = args.query.casefold()
            notes = [(i, t) for i, t in notes if needle in t.casefold()]
        if not notes:
            return "No saved notes." if not args.query else f"No notes contain {args.query!r}."
        lines = [f"[{i}] {t}" for i, t in notes]
        return f"{len(notes)} note(s):\n" + "\n".join(lines)

    @tool(name="memory_remember", side_effect="write", timeout=5.0, needs=["redis"])
    async def memory_remember(args: RememberArgs, ctx: ToolContext) -> str:
        """Save a short note about this user for later conversations (preferences, facts they
        asked you to remember)."""
        text = args.text.strip()
        if not text:
            raise ToolError("the note is empty")
        if len(text) > max_note_chars:
            raise ToolError(f"the note is longer than {max_note_chars} characters; shorten it")
        notes_key, seq_key = _keys(key_prefix, ctx.owner)
        note = json.dumps({"text": text, "created": int(time.time())})
        with _storage():
            new_id = int(await _redis(ctx).eval(_REMEMBER, 2, notes_key, seq_key, note, max_notes))
        if new_id < 0:
            raise ToolError(f"the memory is full ({max_notes} notes); forget an old note first")
        return f"Saved as note {new_id}."

    @tool(name="memory_forget", side_effect="write", timeout=5.0, needs=["redis"])
    async def memory_forget(args: ForgetArgs, ctx: ToolContext) -> str:
        """Delete one saved note by its id."""
        notes_key, _ = _keys(key_prefix, ctx.owner)
        with _storage():
            removed = int(await _redis(ctx).hdel(notes_key, str(args.note_id)))
        if not removed:
            raise ToolError(f"there is no note {args.note_id}")
        return f"Deleted note {args.note_id}."

    return [memory_recall, memory_remember, memory_forget]
