"""A session's messages seen as Conversations API items, and what deleting one item changes.

Rendering (`conversation_items`), message by message, oldest first:
- a user, system or developer message is a `message` item (`input_text` parts; a stored image
  is an `input_image` without a URL: cascade keeps the image, not the address it came from);
- an assistant message is its `reasoning` item, its `message` item (`output_text`), then one
  item per tool call: `function_call` for a client's tool, `mcp_call` (with the result, as the
  Responses door shows it) for a server tool step, recognised by the server tool's name;
- a `tool` message is the `function_call_output` of a client call; a server tool's result is
  inside its `mcp_call` and has no item of its own.

Item ids are stable without being stored: they are derived from the session id, the message
(its whole stored form) and how many identical messages come before it, so appending or
removing other messages never changes them, and ids of different sessions never meet. A
message rewritten by a deletion keeps its key in `meta.item_key`, so its other items keep theirs.

Deleting (`removal`): a `message` or `reasoning` item removes that part of its message (the
message goes when nothing is left). A tool exchange goes as a whole: deleting a
`function_call` or `mcp_call` item removes the call and its result; deleting a
`function_call_output` alone is refused (400), since it would leave a call without an answer in
the middle of the history.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.agent.responses_protocol import (
    function_call_item,
    mcp_call_item,
    message_item,
    reasoning_item,
)
from app.errors import InvalidRequestError, NotFoundError


@dataclass(frozen=True)
class ConversationItem:
    """One rendered item: the item, the message it comes from, and for a tool call the index
    of the message holding its result (None while unanswered)."""

    item: dict[str, Any]
    message: int
    key: str  # the message's: what its items' ids are made of
    call_id: str | None = None
    result: int | None = None

    @property
    def id(self) -> str:
        item_id: str = self.item["id"]
        return item_id


def _keys(session_id: str, messages: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[bytes, int] = {}
    keys: list[str] = []
    for message in messages:
        kept = (message.get("meta") or {}).get("item_key")
        if isinstance(kept, str):
            keys.append(kept)
            continue
        encoded = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
        occurrence = seen.get(encoded, 0)
        seen[encoded] = occurrence + 1
        digest = hashlib.sha256(
            b"%s\0%d\0%s" % (session_id.encode(), occurrence, encoded)
        ).hexdigest()
        keys.append(digest[:32])
    return keys


def _input_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts: list[dict[str, Any]] = []
    for part in content or []:
        if part.get("type") == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif part.get("type") in ("image_ref", "image_url"):
            parts.append(
                {"type": "input_image", "detail": "auto", "file_id": None, "image_url": None}
            )
    return parts


def _answers(messages: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Tool call id → index of the tool message answering it."""
    return {
        m["tool_call_id"]: i
        for i, m in enumerate(messages)
        if m.get("role") == "tool" and isinstance(m.get("tool_call_id"), str)
    }


def conversation_items(
    session_id: str, messages: Sequence[dict[str, Any]], server_tools: Collection[str]
) -> list[ConversationItem]:
    """Every item of the session, oldest first (see the module docstring)."""
    keys = _keys(session_id, messages)
    answers = _answers(messages)
    server_calls: set[str] = set()
    out: list[ConversationItem] = []
    for i, message in enumerate(messages):
        key, role = keys[i], message.get("role")
        if role == "assistant":
            out.extend(_assistant_items(message, i, key, answers, messages, server_tools))
            server_calls.update(
                c["id"]
                for c in message.get("tool_calls") or []
                if c["function"]["name"] in server_tools
            )
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id in server_calls:
                continue  # shown inside its mcp_call
            content = message.get("content")
            item = {
                "id": f"fco_{key}",
                "type": "function_call_output",
                "call_id": call_id,
                "output": content if isinstance(content, str) else "",
                "status": "completed",
            }
            out.append(ConversationItem(item, i, key))
        else:
            item = {
                "id": f"msg_{key}",
                "type": "message",
                "role": role,
                "status": "completed",
                "content": _input_parts(message.get("content")),
            }
            out.append(ConversationItem(item, i, key))
    return out


def _assistant_items(
    message: dict[str, Any],
    index: int,
    key: str,
    answers: dict[str, int],
    messages: Sequence[dict[str, Any]],
    server_tools: Collection[str],
) -> list[ConversationItem]:
    out: list[ConversationItem] = []
    if message.get("reasoning_content"):
        out.append(
            ConversationItem(
                reasoning_item(message["reasoning_content"], item_id=f"rs_{key}"), index, key
            )
        )
    calls = message.get("tool_calls") or []
    if message.get("content") or not (out or calls):
        meta = message.get("meta") or {}
        cut = bool(meta.get("truncated") or meta.get("interrupted"))
        text = message.get("content") or ""
        item = message_item(text, item_id=f"msg_{key}", status="incomplete" if cut else "completed")
        out.append(ConversationItem(item, index, key))
    for n, call in enumerate(calls):
        function = call["function"]
        result = answers.get(call["id"])
        if function["name"] in server_tools:
            output = messages[result].get("content") if result is not None else None
            item = mcp_call_item(
                function["name"],
                function["arguments"],
                output if isinstance(output, str) else None,
                item_id=f"mcp_{key}_{n}",
                status="completed" if result is not None else "in_progress",
            )
        else:
            item = function_call_item(
                call["id"], function["name"], function["arguments"], item_id=f"fc_{key}_{n}"
            )
        out.append(ConversationItem(item, index, key, call_id=call["id"], result=result))
    return out


def find_item(items: Sequence[ConversationItem], item_id: str) -> ConversationItem:
    for item in items:
        if item.id == item_id:
            return item
    raise NotFoundError(f"no item {item_id!r} in this conversation", param="item_id")


@dataclass
class Removal:
    """The history edit that deletes one item: messages replaced (by index) and removed."""

    replace: dict[int, dict[str, Any]] = field(default_factory=dict)
    remove: list[int] = field(default_factory=list)


def removal(messages: Sequence[dict[str, Any]], target: ConversationItem) -> Removal:
    """What deleting `target` does to `messages` (see the module docstring)."""
    kind = target.item["type"]
    message = dict(messages[target.message])
    if kind == "function_call_output":
        raise InvalidRequestError(
            f"item {target.id!r} is the output of tool call {message.get('tool_call_id')!r}: "
            "delete the call's item, which removes the call and its output together",
            param="item_id",
        )
    edit = Removal()
    if kind == "reasoning":
        message.pop("reasoning_content", None)
    elif kind == "message" and message.get("role") == "assistant":
        message["content"] = ""
    elif kind in ("function_call", "mcp_call"):
        message["tool_calls"] = [c for c in message["tool_calls"] if c["id"] != target.call_id]
        if not message["tool_calls"]:
            del message["tool_calls"]
        meta = message.get("meta")
        if isinstance(meta, dict) and "pause" in meta:
            # A pause names the calls it waits for; with one gone it cannot be confirmed.
            message["meta"] = {k: v for k, v in meta.items() if k != "pause"}
        if target.result is not None:
            edit.remove.append(target.result)
    else:  # a user, system or developer message
        edit.remove.append(target.message)
        return edit
    if message.get("content") or message.get("reasoning_content") or message.get("tool_calls"):
        message["meta"] = {**(message.get("meta") or {}), "item_key": target.key}
        edit.replace[target.message] = message
    else:
        edit.remove.append(target.message)
    return edit
