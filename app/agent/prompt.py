"""Stored conversation → the messages sent to the runtime.

Contracts that keep the runtime's prefix cache warm:
- the output for a history is a pure function of it: same history, byte-identical messages;
- image references become `data:` URIs of the stored processed bytes (identical every turn);
- assistant `reasoning_content` is always sent; the chat template decides what it keeps (earlier
  turns' reasoning is dropped, the running tool loop's kept, all kept with `preserve_thinking`);
- cascade's bookkeeping (`meta`) never reaches the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.errors import InvalidRequestError

_MESSAGE_KEYS = ("role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name")


class ImageSource(Protocol):
    async def data_uri(self, ref: dict[str, Any]) -> str: ...


async def _content(content: Any, media: ImageSource | None) -> Any:
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_ref":
            if media is None:
                raise InvalidRequestError("images are not available on this server")
            out.append({"type": "image_url", "image_url": {"url": await media.data_uri(part)}})
        else:
            out.append(part)
    return out


async def runtime_messages(
    messages: Sequence[dict[str, Any]], media: ImageSource | None
) -> list[dict[str, Any]]:
    """The runtime's view of `messages` (stored form, image refs resolved)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if "meta" not in message and not isinstance(message.get("content"), list):
            # Stored text messages are already in runtime form: no copy (hot path; the session
            # store hands out fresh dicts each load, so sharing them is safe).
            out.append(message)
            continue
        item: dict[str, Any] = {}
        for key in _MESSAGE_KEYS:
            value = message.get(key)
            if value is None:
                continue
            if key == "content":
                value = await _content(value, media)
            item[key] = value
        if "content" not in item:
            item["content"] = ""
        out.append(item)
    return out


def image_refs(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every image reference in the conversation, in order (tools address images by index)."""
    refs: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            refs.extend(p for p in content if isinstance(p, dict) and p.get("type") == "image_ref")
    return refs
