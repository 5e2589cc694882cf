"""Stored conversation → the messages sent to the runtime.

Contracts that keep the runtime's prefix cache warm:
- the output for a history is a pure function of it: same history, byte-identical messages;
- image and video references become `data:` URIs of the stored processed bytes (identical
  every turn): `image_url` and `video_url` parts, the forms SGLang's chat endpoint reads;
- every past assistant turn renders as the model generated it: the runtime is always asked for
  `preserve_thinking` (app/runtime/body.py), under which the chat template writes each
  assistant turn as `<think>\n{reasoning}\n</think>\n\n{content}`, so a thinking-off turn
  keeps the empty `<think>\n\n</think>\n\n` its generation prompt ended with and a
  thinking-on turn its reasoning (sent back as `reasoning_content`, verbatim). The previous
  request's prompt and output are then a prefix of the next prompt token for token. This
  matters most on the hybrid model: SGLang's Mamba radix cache reuses a prefix only up to a
  kept recurrent-state snapshot (the previous prompt rounded down to 64 tokens, or the last
  256th token of its generation), and a template that drops the empty block of the last turn
  moves the divergence before those snapshots, so the turn and the next fall back to older
  ones (SGLang's `mem_cache/unified_cache/components/mamba.py` and `_mamba_radix_cache_v2_
  req_prepare_for_extend`; modelled in tests/sglang_sim/hybrid_cache.py);
- `keep_reasoning=False` (the run's `preserve_thinking` off) drops the reasoning of the
  assistant turns before the last real user message, as the template's own default would, but
  keeps their (now empty) think blocks. That bounds prompt growth to one turn's reasoning; the
  price is that, once a turn that reasoned is followed by a new user message, the next prompt
  diverges inside that turn's think block, so its decode snapshots (and a snapshot at its
  prompt's very end) are not reused. With `keep_reasoning=True` all reasoning stays in the
  prompt for good: the most reuse, and the prompt grows by every turn's reasoning;
- cascade's bookkeeping (`meta`) never reaches the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.errors import InvalidRequestError

_MESSAGE_KEYS = ("role", "content", "reasoning_content", "tool_calls", "tool_call_id", "name")


class ImageSource(Protocol):
    async def data_uri(self, ref: dict[str, Any]) -> str: ...

    async def video_data_uri(self, part: dict[str, Any]) -> str: ...


async def _content(content: Any, media: ImageSource | None) -> Any:
    if not isinstance(content, list):
        return content
    out: list[Any] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_ref":
            if media is None:
                raise InvalidRequestError("images are not available on this server")
            out.append({"type": "image_url", "image_url": {"url": await media.data_uri(part)}})
        elif isinstance(part, dict) and part.get("type") == "video_ref":
            if media is None:
                raise InvalidRequestError("videos are not available on this server")
            url = await media.video_data_uri(part)
            out.append({"type": "video_url", "video_url": {"url": url}})
        else:
            out.append(part)
    return out


def _last_query(messages: Sequence[dict[str, Any]]) -> int:
    """Index of the last real user message: one that is not only wrapped tool output (the
    chat template's `last_query` rule); -1 when there is none."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        text = content.strip() if isinstance(content, str) else ""
        if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
            return index
    return -1


def _without_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant turn with its reasoning dropped and its think block left empty (a think
    block left inside `content` goes too, as the template would split it out)."""
    out = {**message, "reasoning_content": ""}
    content = out.get("content")
    if isinstance(content, str) and "</think>" in content:
        out["content"] = content.split("</think>")[-1].lstrip("\n")
    return out


async def runtime_messages(
    messages: Sequence[dict[str, Any]],
    media: ImageSource | None,
    *,
    keep_reasoning: bool = True,
) -> list[dict[str, Any]]:
    """The runtime's view of `messages` (stored form, image refs resolved), to be rendered
    with `preserve_thinking` on; `keep_reasoning` as in the module docstring."""
    cut = -1 if keep_reasoning else _last_query(messages)
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if index < cut and message.get("role") == "assistant":
            message = _without_reasoning(message)
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
