"""Approving a paused write call in plain chat: the question cascade asks, and the answers
that mean yes.

A stateless client has no way to send `confirm_tool_calls`, so the turn engine answers a pause
with a short question (`approval_prompt`, from `templates/approval.jinja`) and treats the next
user message as the answer: yes when it is one of `APPROVAL_WORDS` (any case, trimmed, trailing
punctuation allowed), no otherwise. A declined call is not run; the model gets `DECLINED` as its
result.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import jinja2
import orjson

from templates import TEMPLATES_DIR

APPROVAL_WORDS = ("yes", "y", "ok", "allow", "approve", "confirm", "sure")
_APPROVAL = re.compile(r"(?:" + "|".join(APPROVAL_WORDS) + r")[\s.!?,;:]*", re.IGNORECASE)
DECLINED = "The user did not approve this call, so it was not run."
_VALUE_CHARS = 80  # the question stays short: long argument values are cut


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    return env.get_template("approval.jinja")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 1] + "…"


def _arguments(raw: Any) -> list[tuple[str, str]]:
    try:
        data = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else raw
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return [("arguments", _short(raw))] if raw else []
    return [(str(name), _short(value)) for name, value in data.items()]


def approval_prompt(calls: Sequence[dict[str, Any]]) -> str:
    """The question for the paused `calls` ({tool, arguments} each; arguments a JSON string)."""
    shown = [{"tool": c["tool"], "arguments": _arguments(c.get("arguments"))} for c in calls]
    return _template().render(calls=shown).strip()


def is_approval(message: dict[str, Any]) -> bool:
    """Whether a user message says yes (see `APPROVAL_WORDS`)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            str(p.get("text", "")) for p in content if p.get("type") in ("text", "input_text")
        )
    return isinstance(content, str) and _APPROVAL.fullmatch(content.strip()) is not None


def declined_results(call_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The tool results that tell the model its paused calls were declined."""
    return [{"role": "tool", "tool_call_id": call_id, "content": DECLINED} for call_id in call_ids]
