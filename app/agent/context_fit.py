"""Fitting a conversation into the runtime's context window by dropping its oldest turns
(the Responses API's `truncation: "auto"`).

The count is an estimate made before any model call, from the messages' JSON: a token per
three bytes of UTF-8 (English runs near four characters a token, CJK text near one character,
three bytes), a few tokens per message for the chat template, and one token per 32x32 patch
of a stored image. For prose it errs on the large side, so what it keeps fits; text of digits
or one-letter words is denser than that, and then the runtime's own check decides: its refusal
is the same `context_length_exceeded` 400 as with truncation disabled.

What is dropped, oldest first, are whole turns: a turn starts at a user message and runs to
the next one, so a tool call is never parted from its result. Leading system messages (the
instructions, the operator's system prompt) are never dropped, nor is the last turn when the
new input continues it (tool results, an approval) instead of starting a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import InvalidRequestError

PER_MESSAGE = 8  # the template's role markers and separators, rounded up
BYTES_PER_TOKEN = 3
PATCH = 32  # image tokens: one per 32x32 pixel patch (Qwen3.6's vision encoder)


def estimate_tokens(message: dict[str, Any]) -> int:
    """A generous token count of one stored message (see the module docstring)."""
    content = message.get("content")
    images = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_ref":
                width, height = int(part.get("width") or 0), int(part.get("height") or 0)
                images += max(1, (width // PATCH) * (height // PATCH))
        message = {**message, "content": [p for p in content if p.get("type") != "image_ref"]}
    message = {k: v for k, v in message.items() if k != "meta"}
    return PER_MESSAGE + images + len(orjson.dumps(message)) // BYTES_PER_TOKEN


@dataclass
class Fitted:
    history: list[dict[str, Any]]
    dropped_turns: int = 0
    dropped_messages: int = 0


def _turns(
    history: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """The leading system messages, and the rest split into turns (each from a user message)."""
    start = 0
    while start < len(history) and history[start].get("role") == "system":
        start += 1
    turns: list[list[dict[str, Any]]] = []
    for message in history[start:]:
        tool_images = (message.get("meta") or {}).get("tool_images")
        if not turns or (message.get("role") == "user" and not tool_images):
            turns.append([])
        turns[-1].append(message)
    return list(history[:start]), turns


def fit_history(
    history: Sequence[dict[str, Any]],
    new: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]],
    context_length: int,
    reserve: int,
) -> Fitted:
    """`history` without its oldest turns, so that it, the `new` messages and the `tools`
    leave `reserve` tokens of the window for the answer. `InvalidRequestError`
    (`context_length_exceeded`, param `input`) when even the fewest turns do not fit."""
    budget = context_length - reserve - len(orjson.dumps(list(tools))) // BYTES_PER_TOKEN
    budget -= sum(estimate_tokens(m) for m in new)
    head, turns = _turns(history)
    budget -= sum(estimate_tokens(m) for m in head)
    continued = bool(new) and new[0].get("role") not in ("user", "system")
    keep_last = continued or not new  # without new input the last turn is what is answered
    sizes = [sum(estimate_tokens(m) for m in turn) for turn in turns]
    first = 0
    while first < len(turns) and sum(sizes[first:]) > budget:
        if keep_last and first == len(turns) - 1:
            break
        first += 1
    if budget < 0 or sum(sizes[first:]) > budget:
        raise InvalidRequestError(
            f"the input does not fit the model's context window ({context_length} tokens), "
            "even without the earlier turns; send shorter input",
            code="context_length_exceeded",
            param="input",
        )
    kept = [m for turn in turns[first:] for m in turn]
    return Fitted(
        history=[*head, *kept],
        dropped_turns=first,
        dropped_messages=sum(len(turn) for turn in turns[:first]),
    )
