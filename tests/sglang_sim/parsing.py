"""Raw Qwen3.6 output split into reasoning, content and tool calls, as SGLang 0.5.23 does it.

SGLang 0.5.23 serves this model with `--reasoning-parser qwen3 --tool-call-parser qwen3_coder`.
This module reproduces, in plain Python and without importing SGLang, what those parsers return
when `serving_chat.py` drives them:

- `reasoning_starts_in_think` / `RequestParsing.from_request`: the per-request decisions of
  `serving_chat.py` (`_get_reasoning_from_request`, `_tool_call_parsing_active`,
  `_effective_tools`, the default `chat_template_kwargs` merge in `_process_messages`) and of
  `protocol.py` (`reasoning_effort` / `reasoning` normalisation, the `tool_choice` default) and
  `ReasoningParser.__init__` (`continue_final_message`, `force_nonempty_content`).
- `split_output`: the non-streaming path (`_build_chat_response`: `Qwen3Detector.detect_and_parse`,
  then `_process_tool_calls` with `Qwen3CoderDetector.detect_and_parse`).
- `StreamSplitter`: the streaming path (`_generate_stream_content`: the reasoning detector's
  `parse_streaming_increment` / `finish`, then `Qwen3CoderDetector.parse_streaming_increment`).

The two SGLang paths do NOT agree on every input, and each is reproduced as it is:
- Non-streaming keeps only the text BEFORE the first `<tool_call>` as content; text between and
  after calls is dropped. Streaming sends text outside `<tool_call>` blocks as content, wherever
  it is.
- Streaming writes each parameter name with `json.dumps` (non-ASCII escaped as `\\uXXXX`) and
  sends one fragment per `<parameter=>` even when a name repeats; non-streaming serialises one
  dict (`ensure_ascii=False`, a repeated name keeps its first position and its last value).
- Streaming parses `<function=...>` even outside a `<tool_call>` block and even with no
  `<tool_call>` at all; non-streaming only looks for calls when `<tool_call>` is in the text.
- Streaming treats a `<think>` appearing later in the answer as a new reasoning block when the
  output started inside reasoning without an explicit `<think>`; non-streaming splits once, at
  the first `</think>`.
- A trailing fragment that could still become a tag (`<`, `</tool`, ...) is held back by the
  streaming tool parser and never flushed at the end (qwen3_coder has no `finish`).
- A parameter value that converts to something JSON cannot hold (a Python set, bytes, a complex
  number, from `ast.literal_eval`) makes non-streaming give up on all calls and return the whole
  text as content; streaming raises (SGLang's stream breaks there too).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FUNCTION_END",
    "FUNCTION_START",
    "PARAMETER_END",
    "PARAMETER_START",
    "THINK_END",
    "THINK_START",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "Delta",
    "DeltaToolCall",
    "ParsedToolCall",
    "RequestParsing",
    "SplitResult",
    "StreamSplitter",
    "effective_tools",
    "normalize_schema_types",
    "reasoning_starts_in_think",
    "split_output",
    "template_kwargs",
    "tool_parsing_active",
]

THINK_START = "<think>"
THINK_END = "</think>"
TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
FUNCTION_START = "<function="
FUNCTION_END = "</function>"
PARAMETER_START = "<parameter="
PARAMETER_END = "</parameter>"

# Every tag the streaming tool parser recognises; a buffer tail that is the start of one waits.
_TOOL_TAGS = (
    TOOL_CALL_START,
    TOOL_CALL_END,
    FUNCTION_START,
    FUNCTION_END,
    PARAMETER_START,
    PARAMETER_END,
)
# Markers the streaming reasoning parser waits on when the whole buffer could still become one.
_REASONING_MARKERS = (THINK_START, THINK_END, TOOL_CALL_START)

# The non-streaming tool parser is regex based; these patterns define which text it accepts
# (including its tolerance of unclosed functions and parameters), so they follow SGLang's exactly.
_BLOCK_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_FUNCTION_RE = re.compile(r"<function=(.*?)</function>|<function=(.*)$", re.DOTALL)
_PARAMETER_RE = re.compile(
    r"<parameter=(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|$)", re.DOTALL
)


# --------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ParsedToolCall:
    """One call of a non-streaming response."""

    name: str
    arguments: str
    """JSON text exactly as SGLang puts it in `function.arguments`."""
    parameters_raw: dict[str, str] | None = None
    """The parameter texts before conversion (for debugging)."""


@dataclass(frozen=True)
class SplitResult:
    """`message.reasoning_content`, `message.content` and the calls of a non-streaming response."""

    reasoning_content: str | None
    """None when SGLang sends null: no reasoning parser, or nothing was reasoning."""
    content: str
    """Never None: SGLang sends "" for an empty content."""
    tool_calls: list[ParsedToolCall]
    """Empty when SGLang sends no `tool_calls` (then finish_reason stays as generated; with
    calls a natural "stop" becomes "tool_calls")."""


@dataclass
class DeltaToolCall:
    """The single tool call of one streamed `delta.tool_calls`."""

    index: int
    """The call's ordinal in the output (SGLang's `tool_index`; -1 for a parameter that came
    before any `<function=`)."""
    name: str | None
    """Set on the delta that opens a call: SGLang then sends an id and the name. None
    afterwards (and for a call whose name is empty: SGLang sends neither id nor name then)."""
    arguments: str
    """The arguments fragment ("" on the opening delta)."""


@dataclass
class Delta:
    """One stream chunk's delta. SGLang sends reasoning, content and each tool-call fragment in
    separate chunks, so exactly one field is set."""

    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


# --------------------------------------------------------------------- request-level decisions


def template_kwargs(
    request: Mapping[str, Any], default_template_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The request's `chat_template_kwargs` as SGLang's parsers see them.

    `protocol.py` first turns `reasoning_effort` (and a `reasoning` object) into a default for
    `enable_thinking` ("none" = off, any other effort = on; an explicit `enable_thinking` wins);
    `_process_messages` then fills keys still unset from `--default-chat-template-kwargs`.
    """
    given = request.get("chat_template_kwargs")
    merged: dict[str, Any] = dict(given) if isinstance(given, Mapping) else {}
    thinking = _thinking_from_effort(request)
    if thinking is not None:
        merged.setdefault("thinking", thinking)
        merged.setdefault("enable_thinking", thinking)
    for key, value in default_template_kwargs.items():
        merged.setdefault(key, value)
    return merged


def _thinking_from_effort(request: Mapping[str, Any]) -> bool | None:
    """`ChatCompletionRequest.normalize_reasoning_inputs`: whether the effort fields ask for
    thinking (None = they say nothing). An effort inside `reasoning` overrides the top-level one."""
    thinking: bool | None = None
    effort = request.get("reasoning_effort")
    reasoning = request.get("reasoning")
    if isinstance(reasoning, Mapping):
        nested = reasoning.get("effort")
        if nested is None:
            nested = reasoning.get("reasoning_effort")
        if nested is not None:
            effort = nested
        enabled = reasoning.get("enabled")
        if enabled is None:
            enabled = reasoning.get("enable", False)
        if isinstance(enabled, str):
            enabled = enabled.strip().lower() in {"1", "true", "yes", "y", "on"}
        if enabled:
            thinking = True
    if effort is not None:
        thinking = effort != "none"
    return thinking


def _continued_content(request: Mapping[str, Any]) -> str | None:
    """The final assistant message's content when the request continues it, else None.

    SGLang tests its content for `<think>` / `</think>`. Content parts (a list) never match.
    A null content makes SGLang 0.5.23 fail inside its parser setup (a TypeError, a 500 for
    non-streaming); it is reported here as a ValueError.
    """
    if not request.get("continue_final_message"):
        return None
    messages = request.get("messages")
    if not isinstance(messages, Sequence) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, Mapping):
        return None
    role = last.get("role")
    if not isinstance(role, str) or role.lower() != "assistant":
        return None
    content = last.get("content")
    if content is None:
        raise ValueError("continue_final_message with a null assistant content")
    return content if isinstance(content, str) else ""


def reasoning_starts_in_think(
    request: Mapping[str, Any], default_template_kwargs: Mapping[str, Any]
) -> bool | None:
    """Whether SGLang 0.5.23 (reasoning parser qwen3) assumes the output begins inside reasoning.

    None: the reasoning parser is not applied at all (`separate_reasoning: false`), so all text
    is content and `reasoning_content` stays null.

    Thinking is on unless the merged `chat_template_kwargs` (see `template_kwargs`) hold
    `enable_thinking` that `is False` (any other value, `0` included, leaves it on) — the qwen3
    parser's `enable_thinking` default, and what SGLang's template detection finds for the
    Qwen3.x chat template. With `continue_final_message` and a final assistant message, a
    `<think>` in its content puts the output inside reasoning and a `</think>` outside, whatever
    `enable_thinking` says.
    """
    if not request.get("separate_reasoning", True):
        return None
    in_think = template_kwargs(request, default_template_kwargs).get("enable_thinking") is not False
    previous = _continued_content(request)
    if previous is not None:
        if THINK_START in previous:
            in_think = True
        if THINK_END in previous:
            in_think = False
    return in_think


def effective_tools(request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """`_effective_tools`: the request's `tools`, then tools attached to system, developer or
    root messages."""
    tools: list[Mapping[str, Any]] = list(request.get("tools") or [])
    for message in request.get("messages") or []:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if isinstance(role, str) and role.lower() in ("root", "system", "developer"):
            tools.extend(message.get("tools") or [])
    return tools


def _tool_choice(request: Mapping[str, Any]) -> Any:
    """`tool_choice` after `set_tool_choice_default`: unset means "none" without any tools
    (request or message level), "auto" otherwise."""
    choice = request.get("tool_choice")
    if choice is not None:
        return choice
    if request.get("tools") is None and not _has_message_tools(request):
        return "none"
    return "auto"


def _has_message_tools(request: Mapping[str, Any]) -> bool:
    messages = request.get("messages")
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(m, Mapping)
        and isinstance(m.get("role"), str)
        and m["role"].lower() in ("root", "system", "developer")
        and bool(m.get("tools"))
        for m in messages
    )


def tool_parsing_active(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any) -> bool:
    """`_tool_call_parsing_active` for qwen3_coder: only with tools, and not for
    `tool_choice: "none"`. "required" and a named function parse the same way as "auto"."""
    return bool(tools) and tool_choice != "none"


@dataclass(frozen=True)
class RequestParsing:
    """Everything the parsers need from one request; `split` and `splitter` apply them."""

    in_think: bool | None
    previous_content: str = ""
    stream_reasoning: bool = True
    force_nonempty_content: bool = False
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Any = "auto"

    @classmethod
    def from_request(
        cls, request: Mapping[str, Any], default_template_kwargs: Mapping[str, Any]
    ) -> RequestParsing:
        """Read a raw `/v1/chat/completions` JSON body the way SGLang 0.5.23 does."""
        kwargs = template_kwargs(request, default_template_kwargs)
        in_think = reasoning_starts_in_think(request, default_template_kwargs)
        return cls(
            in_think=in_think,
            previous_content=(_continued_content(request) or "") if in_think is not None else "",
            stream_reasoning=bool(request.get("stream_reasoning", True)),
            force_nonempty_content=kwargs.get("force_nonempty_content") is True,
            tools=tuple(effective_tools(request)),
            tool_choice=_tool_choice(request),
        )

    def split(self, text: str) -> SplitResult:
        return split_output(
            text,
            in_think=self.in_think,
            tools=self.tools,
            tool_choice=self.tool_choice,
            previous_content=self.previous_content,
            force_nonempty_content=self.force_nonempty_content,
        )

    def splitter(self) -> StreamSplitter:
        return StreamSplitter(
            in_think=self.in_think,
            tools=self.tools,
            tool_choice=self.tool_choice,
            stream_reasoning=self.stream_reasoning,
            force_nonempty_content=self.force_nonempty_content,
        )


# ---------------------------------------------------------------- tool schemas and conversion

_JSON_TYPES = frozenset({"null", "boolean", "object", "array", "number", "string", "integer"})
# DB/ORM-style type names SGLang rewrites (in place, while validating the request) before any
# parser sees the schema; `_validate_request` → `normalize_json_schema_types`.
_TYPE_ALIASES = {
    **dict.fromkeys(("str", "text", "varchar", "char", "enum", "uuid", "date"), "string"),
    **dict.fromkeys(("datetime", "time", "timestamp", "binary", "blob", "bytea"), "string"),
    **dict.fromkeys(("bytes", "varbinary"), "string"),
    "bool": "boolean",
    **dict.fromkeys(("bigint", "smallint", "tinyint"), "integer"),
    **dict.fromkeys(("double", "decimal", "real", "numeric"), "number"),
    **dict.fromkeys(("arr", "tuple", "set"), "array"),
    "map": "object",
}
_TYPE_PREFIXES = (
    (("int", "uint", "long", "short", "unsigned"), "integer"),
    (("num", "float"), "number"),
    (("list",), "array"),
    (("dict",), "object"),
)
# A prefix names a type only when followed by one of these (so "int32", not "internal").
_PREFIX_FOLLOWERS = frozenset("0123456789[<( \t")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES: tuple[str, ...] = ("items", "additionalProperties", "not", "if", "then", "else")
_SCHEMA_ONES += ("contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties")


def _standard_type_name(name: Any) -> Any:
    if not isinstance(name, str) or name in _JSON_TYPES:
        return name
    base = name.split("(", 1)[0].strip().lower()
    if base in _JSON_TYPES:
        return base
    if base in _TYPE_ALIASES:
        return _TYPE_ALIASES[base]
    for prefixes, target in _TYPE_PREFIXES:
        for prefix in prefixes:
            if base == prefix or (
                base.startswith(prefix)
                and len(base) > len(prefix)
                and base[len(prefix)] in _PREFIX_FOLLOWERS
            ):
                return target
    return name


def normalize_schema_types(schema: Any) -> None:
    """Rewrite DB/ORM-style `type` names ("int", "varchar", "dict", "list[str]", ...) to JSON
    Schema types, in place, everywhere a subschema can sit — what SGLang's `_validate_request`
    does to each tool's `parameters` before it validates the schema (Draft 2020-12), renders
    it into the prompt and parses calls with it. Unknown names are left as they are."""
    if isinstance(schema, list):
        for item in schema:
            normalize_schema_types(item)
        return
    if not isinstance(schema, dict):
        return
    if "type" in schema:
        kind = schema["type"]
        if isinstance(kind, str):
            schema["type"] = _standard_type_name(kind)
        elif isinstance(kind, list):
            names: list[Any] = []
            for item in kind:
                standard = _standard_type_name(item)
                if standard not in names:
                    names.append(standard)
            schema["type"] = names
    for key in _SCHEMA_MAPS:
        nested = schema.get(key)
        if isinstance(nested, dict):
            for sub in nested.values():
                normalize_schema_types(sub)
    for key in _SCHEMA_LISTS:
        nested = schema.get(key)
        if isinstance(nested, list):
            for sub in nested:
                normalize_schema_types(sub)
    for key in _SCHEMA_ONES:
        if key in schema:
            normalize_schema_types(schema[key])


def _prepared_tools(tools: Iterable[Mapping[str, Any]] | None) -> list[Any]:
    """A private copy of the tools with their parameter schemas standardised."""
    prepared = copy.deepcopy(list(tools or []))
    for tool in prepared:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("parameters") is not None:
            normalize_schema_types(function["parameters"])
    return prepared


def _schema_properties(schema: Any) -> dict[str, Any]:
    """Top-level `properties`, or those merged from `anyOf`/`oneOf`/`allOf` branches."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        return properties
    merged: dict[str, Any] = {}
    for keyword in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list):
            for branch in branches:
                for name, sub in _schema_properties(branch).items():
                    merged.setdefault(name, sub)
    return merged


def _parameter_schemas(function_name: str | None, tools: Sequence[Any]) -> dict[str, Any]:
    """The schema per parameter name for a called function; {} for an unknown function.

    Quirk kept from SGLang: a `parameters` schema without any `properties` is itself used as the
    name → schema map.
    """
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict) or function.get("name") != function_name:
            continue
        parameters = function.get("parameters")
        if not isinstance(parameters, dict):
            return {}
        properties = _schema_properties(parameters)
        if properties or "properties" in parameters:
            return properties
        return parameters
    return {}


def _schema_type(schema: Any) -> Any:
    """The primary type a JSON schema declares, or None (`infer_type_from_json_schema`)."""
    if not isinstance(schema, dict):
        return None
    if "type" in schema:
        declared = schema["type"]
        if isinstance(declared, str):
            return declared
        if isinstance(declared, list) and declared:
            concrete = [t for t in declared if t != "null"]
            return concrete[0] if concrete else "string"
    if "anyOf" in schema or "oneOf" in schema:
        branches = schema.get("anyOf") or schema.get("oneOf")
        found: list[Any] = []
        if isinstance(branches, list):
            for branch in branches:
                kind = _schema_type(branch)
                if kind:
                    found.append(kind)
            if found:
                distinct = set(found)
                if len(distinct) == 1:
                    return found[0]
                if len(distinct) == 2 and "null" in found:
                    return next(t for t in found if t != "null")
                return "string" if "string" in found else found[0]
    if "enum" in schema and isinstance(schema["enum"], list):
        kinds = {_json_kind(value) for value in schema["enum"]}
        kinds.discard(None)
        return kinds.pop() if len(kinds) == 1 else "string"
    if "allOf" in schema and isinstance(schema["allOf"], list):
        for branch in schema["allOf"]:
            kind = _schema_type(branch)
            if kind and kind != "string":
                return kind
        return "string"
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


def _json_kind(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


_literal_lock = threading.Lock()


def _literal(text: str) -> Any:
    """`ast.literal_eval` with its invalid-escape warnings silenced (the value is still right)."""
    with _literal_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.literal_eval(text)


def _convert(raw: str, name: str, schemas: Mapping[str, Any]) -> Any:
    """A parameter's text converted by its schema type, as qwen3_coder does.

    "null" (any case) is None for every type; an undeclared parameter stays text; integers and
    numbers go through `int()`/`float()` (a number written without "." or "e" that is whole
    becomes an int); booleans are `text.lower() == "true"`; objects and arrays go through
    `json.loads`, then `ast.literal_eval`; other non-string types through `ast.literal_eval`.
    Anything that fails to convert stays text.
    """
    if raw.lower() == "null":
        return None
    if name not in schemas:
        return raw
    declared = _schema_type(schemas[name])
    kind = "string" if declared is None else str(declared).strip().lower()
    if kind in ("string", "str", "text", "varchar", "char", "enum"):
        return raw
    if kind.startswith(("int", "uint", "long", "short", "unsigned")):
        try:
            return int(raw)
        except Exception:
            return raw
    if kind.startswith(("num", "float")):
        try:
            number = float(raw)
        except Exception:
            return raw
        written_whole = "." not in raw and "e" not in raw.lower()
        return int(number) if written_whole and number.is_integer() else number
    if kind in ("boolean", "bool", "binary"):
        return raw.lower() == "true"
    if kind in ("object", "array", "arr") or kind.startswith(("dict", "list")):
        try:
            return json.loads(raw)
        except Exception:
            pass
    try:
        return _literal(raw)
    except Exception:
        return raw


def _strip_one_newline(value: str) -> str:
    """The model writes each value on its own lines: one newline each side is markup."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


# ----------------------------------------------------------------------------- non-streaming


def split_output(
    text: str,
    *,
    in_think: bool | None,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: Any = "auto",
    previous_content: str = "",
    force_nonempty_content: bool = False,
) -> SplitResult:
    """Non-streaming split of raw model text, as SGLang 0.5.23's `_build_chat_response` does it
    with `--reasoning-parser qwen3 --tool-call-parser qwen3_coder`.

    `in_think`: from `reasoning_starts_in_think` (None = no reasoning parser). `tools`: the
    request's effective tools as sent (their schemas are standardised here as SGLang's request
    validation does). `previous_content`: the continued assistant message's content
    (`continue_final_message`); only a `</think>` in it matters here.
    `force_nonempty_content`: `chat_template_kwargs.force_nonempty_content is True`.
    """
    reasoning = ""
    if in_think is not None:
        reasoning, text = _split_reasoning(text, in_think, previous_content)
        if force_nonempty_content and not text:
            reasoning, text = text, reasoning
    calls: list[ParsedToolCall] = []
    if tool_parsing_active(tools, tool_choice) and TOOL_CALL_START in text:
        text, calls = _parse_calls(text, _prepared_tools(tools))
    return SplitResult(reasoning_content=reasoning or None, content=text, tool_calls=calls)


def _split_reasoning(text: str, in_think: bool, previous_content: str) -> tuple[str, str]:
    """(reasoning, rest) of a whole output (`Qwen3Detector.detect_and_parse`)."""
    if not in_think and THINK_START not in text:
        return "", text
    body = text
    while body.startswith(THINK_START):
        body = body[len(THINK_START) :]
    if THINK_END in body:
        reasoning, _, rest = body.partition(THINK_END)
        return reasoning, rest
    if THINK_END in previous_content:
        return "", body
    # No `</think>`: an opening `<tool_call>` ends the reasoning (the model sometimes skips the
    # close); otherwise generation stopped mid-reasoning and everything is reasoning.
    call_at = body.find(TOOL_CALL_START)
    if call_at != -1:
        return body[:call_at], body[call_at:]
    return body, ""


def _parse_calls(text: str, tools: Sequence[Any]) -> tuple[str, list[ParsedToolCall]]:
    """(content, calls) of a text holding `<tool_call>` (`_process_tool_calls`).

    Content is only what precedes the first `<tool_call>`. Calls come from each closed
    `<tool_call>` block (or, when there is none, from the whole text); a `<function=` without
    `</function>` runs to the end of its block, a `<parameter=` without `</parameter>` to the
    next parameter, the function's end or the block's end. A function tag without `>` is no
    call. When a conversion can not be serialised, no call is returned and the content is the
    whole text.
    """
    try:
        calls = [
            call
            for block in (_BLOCK_RE.findall(text) or ([text] if FUNCTION_START in text else []))
            for call in _block_calls(block, tools)
        ]
    except Exception:
        return text, []
    return text[: text.find(TOOL_CALL_START)], calls


def _block_calls(block: str, tools: Sequence[Any]) -> list[ParsedToolCall]:
    calls = []
    for closed, unclosed in _FUNCTION_RE.findall(block):
        body = closed or unclosed
        if ">" not in body:
            continue
        name, _, params_text = body.partition(">")
        schemas = _parameter_schemas(name, tools)
        values: dict[str, Any] = {}
        raw_values: dict[str, str] = {}
        for found in _PARAMETER_RE.findall(params_text):
            if ">" not in found:
                continue
            param, _, raw = found.partition(">")
            raw = _strip_one_newline(raw)
            raw_values[param] = raw
            values[param] = _convert(raw, param, schemas)
        calls.append(
            ParsedToolCall(
                name=name,
                arguments=json.dumps(values, ensure_ascii=False),
                parameters_raw=raw_values,
            )
        )
    return calls


# --------------------------------------------------------------------------------- streaming


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class _ReasoningStream:
    """The qwen3 reasoning detector fed piece by piece: pieces in, (reasoning, rest) out."""

    def __init__(self, *, in_think: bool, stream_reasoning: bool, force_nonempty: bool) -> None:
        self.in_reasoning = in_think
        self.stream_reasoning = stream_reasoning
        self.force_nonempty = force_nonempty
        self.pending = ""
        self.saw_open_tag = False
        self.reasoning_so_far = ""  # only kept for force_nonempty_content

    def feed(self, piece: str) -> tuple[str, str]:
        reasoning, rest = self._feed(piece)
        if self.force_nonempty:
            self.reasoning_so_far = self.reasoning_so_far + reasoning if self.in_reasoning else ""
        return reasoning, rest

    def _feed(self, piece: str) -> tuple[str, str]:
        text = self.pending + piece
        self.pending = text
        # The whole buffer may still grow into a marker (this also holds a lone "<" of content).
        if any(marker != text and marker.startswith(text) for marker in _REASONING_MARKERS):
            return "", ""
        # The first `<think>` anywhere (re)opens reasoning, even after an implicit start ended.
        if not self.saw_open_tag and THINK_START in text:
            text = text.replace(THINK_START, "", 1)
            self.pending = text
            self.saw_open_tag = True
            self.in_reasoning = True
        if not self.in_reasoning:
            self.pending = ""
            return "", text
        end_at = text.find(THINK_END)
        if end_at != -1:
            self.pending = ""
            self.in_reasoning = False
            return text[:end_at], text[end_at + len(THINK_END) :]
        call_at = text.find(TOOL_CALL_START)
        if call_at != -1:
            self.pending = ""
            self.in_reasoning = False
            return text[:call_at], text[call_at:]
        if not self.stream_reasoning:
            return "", ""  # stream_reasoning=false: reasoning goes out whole when it ends
        markers = [THINK_END, TOOL_CALL_START]
        if not self.saw_open_tag:
            markers.append(THINK_START)
        held = max(_held_suffix(text, marker) for marker in markers)
        cut = len(text) - held
        self.pending = text[cut:]
        return text[:cut], ""

    def finish(self) -> tuple[str, str]:
        """Flush at the end of generation: held text is reasoning if still reasoning."""
        rest = self.pending
        self.pending = ""
        if not self.in_reasoning:
            return "", rest
        if rest.startswith(THINK_START):
            rest = rest[len(THINK_START) :]
        if self.force_nonempty:
            # Reasoning never ended: it was streamed as reasoning and is sent again as content.
            promoted = self.reasoning_so_far + rest
            self.reasoning_so_far = ""
            return "", promoted
        return rest, ""


@dataclass(frozen=True)
class _CallPiece:
    index: int
    name: str | None
    arguments: str


class _ToolCallStream:
    """The qwen3_coder detector fed piece by piece: a cursor over the buffer that emits each
    tag's effect as soon as the tag (and, for a parameter, its value) is complete."""

    def __init__(self, tools: Sequence[Any]) -> None:
        self.tools = tools
        self.pending = ""
        self.call_index = -1
        self.function: str | None = None
        self.params_sent = 0
        self.brace_sent = False
        self.in_block = False

    def feed(self, piece: str) -> tuple[str, list[_CallPiece]]:
        text = self.pending + piece
        at = 0
        content: list[str] = []
        pieces: list[_CallPiece] = []
        while at < len(text):
            rest = text[at:]
            if rest.startswith(TOOL_CALL_START):
                self.in_block = True
                at += len(TOOL_CALL_START)
            elif rest.startswith(TOOL_CALL_END):
                self.in_block = False
                at += len(TOOL_CALL_END)
            elif rest.startswith(FUNCTION_END):
                if not self.brace_sent:
                    pieces.append(_CallPiece(self.call_index, None, "{"))
                    self.brace_sent = True
                pieces.append(_CallPiece(self.call_index, None, "}"))
                self.function = None
                at += len(FUNCTION_END)
            elif rest.startswith(FUNCTION_START):
                close = rest.find(">")
                if close == -1:
                    break
                self.function = rest[len(FUNCTION_START) : close]
                self.call_index += 1
                self.params_sent = 0
                self.brace_sent = False
                pieces.append(_CallPiece(self.call_index, self.function, ""))
                at += close + 1
            elif rest.startswith(PARAMETER_START):
                used = self._parameter(rest, pieces)
                if used == 0:
                    break
                at += used
            else:
                used = self._text(rest, content)
                if used == 0:
                    break
                at += used
        self.pending = text[at:]
        return "".join(content), pieces

    def _parameter(self, rest: str, pieces: list[_CallPiece]) -> int:
        """Emit one complete parameter at the start of `rest`; the characters used (0 = wait).

        A value ends at `</parameter>`, or (unclosed) just before the next `<parameter=` or
        `</function>`, whichever comes first anywhere in the buffer."""
        close = rest.find(">")
        if close == -1:
            return 0
        value_area = rest[close + 1 :]
        ends = [
            (value_area.find(marker), skip)
            for marker, skip in (
                (PARAMETER_END, len(PARAMETER_END)),
                (PARAMETER_START, 0),
                (FUNCTION_END, 0),
            )
        ]
        found = [end for end in ends if end[0] != -1]
        if not found:
            return 0
        value_end, skip = min(found, key=lambda end: end[0])
        name = rest[len(PARAMETER_START) : close]
        raw = _strip_one_newline(value_area[:value_end])
        if not self.brace_sent:
            pieces.append(_CallPiece(self.call_index, None, "{"))
            self.brace_sent = True
        value = _convert(raw, name, _parameter_schemas(self.function, self.tools))
        # The name is dumped with ASCII escapes, the value without: SGLang streams it so.
        pair = f"{json.dumps(name)}: {json.dumps(value, ensure_ascii=False)}"
        pieces.append(_CallPiece(self.call_index, None, f", {pair}" if self.params_sent else pair))
        self.params_sent += 1
        return close + 1 + value_end + skip

    def _text(self, rest: str, content: list[str]) -> int:
        """Consume plain text up to the next "<"; a "<" that may start a tag waits (0).
        Text inside a `<tool_call>` block is dropped."""
        lt = rest.find("<")
        if lt == 0:
            if any(tag.startswith(rest) for tag in _TOOL_TAGS):
                return 0
            used = 1
        else:
            used = len(rest) if lt == -1 else lt
        if not self.in_block:
            content.append(rest[:used])
        return used


class StreamSplitter:
    """Incremental split, as SGLang 0.5.23 streams it.

    The server feeds the raw model text in pieces (one piece per decode step) and turns each
    returned `Delta` into one stream chunk, in order (the server assigns tool call ids
    `call_` + 24 hex on a delta whose call has a `name`). Per step, SGLang sends the reasoning
    first, then content, then one chunk per tool-call fragment.

    `finish(piece)` is the last decode step (the one that carries a finish reason other than
    "abort"): that piece is parsed and the reasoning parser flushes what it held, in the same
    chunks, as SGLang does. For an aborted generation call `feed` only. The tool parser holds an
    incomplete trailing tag and never flushes it (qwen3_coder has no end-of-stream hook).
    """

    def __init__(
        self,
        *,
        in_think: bool | None,
        tools: Sequence[Mapping[str, Any]] | None,
        tool_choice: Any = "auto",
        stream_reasoning: bool = True,
        force_nonempty_content: bool = False,
    ) -> None:
        self._reasoning = (
            None
            if in_think is None
            else _ReasoningStream(
                in_think=in_think,
                stream_reasoning=stream_reasoning,
                force_nonempty=force_nonempty_content,
            )
        )
        self._tools = (
            _ToolCallStream(_prepared_tools(tools))
            if tool_parsing_active(tools, tool_choice)
            else None
        )
        self._finished = False

    def feed(self, piece: str) -> list[Delta]:
        """Parse one decode step's text; the deltas it produces (often none)."""
        return self._step(piece, last=False)

    def finish(self, piece: str = "") -> list[Delta]:
        """Parse the final decode step's text and flush the reasoning parser."""
        return self._step(piece, last=True)

    def _step(self, piece: str, *, last: bool) -> list[Delta]:
        if self._finished:
            raise RuntimeError("StreamSplitter.finish() was already called")
        self._finished = last
        deltas: list[Delta] = []
        rest = piece
        if self._reasoning is not None:
            reasoning, rest = self._reasoning.feed(piece)
            if last:
                more_reasoning, more_rest = self._reasoning.finish()
                reasoning += more_reasoning
                rest += more_rest
            if reasoning:
                deltas.append(Delta(reasoning_content=reasoning))
        if self._tools is None:
            if rest:
                deltas.append(Delta(content=rest))
            return deltas
        content, pieces = self._tools.feed(rest)
        if content:
            deltas.append(Delta(content=content))
        deltas.extend(
            Delta(
                tool_calls=[
                    DeltaToolCall(index=p.index, name=p.name or None, arguments=p.arguments)
                ]
            )
            for p in pieces
        )
        return deltas
