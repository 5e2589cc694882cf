"""Finding tool calls the runtime's parser missed.

Known failure modes of this model family: a `<tool_call>` block written inside the reasoning, or
one the runtime's parser could not read (left in the content as text). cascade never drops such a
call silently: `extract_calls` parses the XML form itself; a block that parses cleanly into a known
tool is repaired into a real call, anything else is reported back to the model as an error so it
can try once more.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.runtime.models import ToolCall, ToolCallFunction

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)(?:</function>|$)", re.DOTALL)
_PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.DOTALL)


@dataclass
class FoundCalls:
    """Tool-call blocks found in text: repaired calls, problems, and the text left over."""

    calls: list[ToolCall]
    problems: list[str]
    remaining_text: str


def new_call_id() -> str:
    """An id shaped like SGLang's (`call_` + 24 hex)."""
    return "call_" + secrets.token_hex(12)


def _convert(value: str, schema: Mapping[str, Any] | None) -> Any:
    """Convert a raw parameter string by the tool's JSON schema type, as the runtime would."""
    kind = (schema or {}).get("type")
    if kind == "string":
        return value
    try:
        return json.loads(value)
    except ValueError:
        if kind is None:
            return value
        raise


def extract_calls(text: str, tools: Mapping[str, Mapping[str, Any]]) -> FoundCalls:
    """Parse every `<tool_call>` block in `text`.

    `tools` maps tool name → its JSON-schema `parameters`. A block is repaired only when it names
    a known tool, every parameter converts by the schema, and all required parameters are there.
    """
    calls: list[ToolCall] = []
    problems: list[str] = []
    for block in _BLOCK.finditer(text):
        body = block.group(1)
        fn = _FUNCTION.search(body)
        if fn is None:
            problems.append("a <tool_call> block without a <function=NAME> element")
            continue
        name = fn.group(1).strip()
        if name not in tools:
            problems.append(f"a call to unknown tool {name!r}")
            continue
        props: Mapping[str, Any] = (tools[name] or {}).get("properties") or {}
        required = set((tools[name] or {}).get("required") or [])
        args: dict[str, Any] = {}
        failed = False
        for param in _PARAM.finditer(fn.group(2)):
            key = param.group(1).strip()
            try:
                args[key] = _convert(param.group(2), props.get(key))
            except ValueError:
                problems.append(f"parameter {key!r} of {name!r} is not valid for its type")
                failed = True
        missing = required - set(args)
        if missing:
            problems.append(f"call to {name!r} is missing {', '.join(sorted(missing))}")
            failed = True
        if not failed:
            calls.append(
                ToolCall(
                    id=new_call_id(),
                    function=ToolCallFunction(
                        name=name, arguments=json.dumps(args, ensure_ascii=False)
                    ),
                )
            )
    remaining = _BLOCK.sub("", text).strip() if (calls or problems) else text
    return FoundCalls(calls=calls, problems=problems, remaining_text=remaining)


def has_call_markup(text: str | None) -> bool:
    return bool(text) and "<tool_call>" in text  # type: ignore[operator]
