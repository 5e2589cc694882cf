"""Raw Qwen3.6 outputs with the request they answer, for the parsing contract tests.

Each case is one model output (the text SGLang detokenizes after the generation prompt) plus the
request fields that steer parsing and the server's `--default-chat-template-kwargs`. The
contract tests run every case through SGLang 0.5.23's own parsers and through
`tests.sglang_sim.parsing`, and require identical results.

`stream_differs` marks cases where SGLang's streaming result (concatenated) is not its
non-streaming result; the note says why. A contract test checks that SGLang really behaves so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# The launch command's server default (app/runtime/launch.py): thinking off unless asked for.
SERVER_DEFAULTS: Mapping[str, Any] = MappingProxyType({"enable_thinking": False})
THINKING_ON: Mapping[str, Any] = MappingProxyType({"enable_thinking": True})


def _tool(name: str, properties: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} (test tool)",
            "parameters": {"type": "object", "properties": dict(properties), **extra},
        },
    }


WEATHER = _tool(
    "get_weather",
    {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "units": {"type": "string", "enum": ["c", "f"]},
    },
    required=["city"],
)
SEARCH = _tool(
    "search",
    {
        "query": {"type": "string"},
        "limit": {"type": "integer"},
        "filters": {"type": "object", "properties": {"lang": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "exact": {"type": "boolean"},
        "min_score": {"type": "number"},
        "cursor": {"type": ["string", "null"]},
    },
)
WRITE_FILE = _tool("write_file", {"path": {"type": "string"}, "content": {"type": "string"}})
EVENT = _tool(
    "create_event",
    {
        "title": {"type": "string"},
        "attendees": {"type": "array", "items": {"type": "object"}},
        "meta": {"type": "object"},
        "when": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "priority": {"type": "number"},
        "città": {"type": "string"},
    },
)
# Non-standard type names (SGLang rewrites them while validating the request) and other schema
# shapes the conversion must read the same way.
ODD = _tool(
    "odd_types",
    {
        "count": {"type": "int"},
        "ratio": {"type": "double"},
        "flag": {"type": "bool"},
        "blob": {"type": "binary"},
        "payload": {"type": "dict"},
        "items": {"type": "list[str]"},
        "anything": {},
        "choice": {"enum": [1, "a"]},
        "level": {"enum": [1, 2, 3]},
        "maybe": {"type": ["null", "integer"]},
        "union": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
        "both": {"allOf": [{"type": "string"}, {"type": "integer"}]},
        "nothing": {"type": "null"},
    },
)
# `parameters` without `properties`: SGLang then looks parameter names up in the schema itself.
NO_PROPS = {
    "type": "function",
    "function": {"name": "ping", "parameters": {"type": "object", "required": []}},
}
TIME = _tool("get_time", {})
ALL_TOOLS = [WEATHER, SEARCH, WRITE_FILE, EVENT, ODD, NO_PROPS, TIME]


@dataclass(frozen=True)
class Case:
    """One raw output and the request it answers."""

    name: str
    output: str
    tools: list[dict[str, Any]] | None = None
    request: Mapping[str, Any] = field(default_factory=dict)
    """Extra request fields (chat_template_kwargs, tool_choice, separate_reasoning, ...)."""
    messages: list[dict[str, Any]] | None = None
    defaults: Mapping[str, Any] = field(default_factory=lambda: SERVER_DEFAULTS)
    stream_differs: str | None = None
    """Why SGLang's streaming result differs from its non-streaming one (None: it does not)."""
    stream_raises: bool = False
    """SGLang's streaming parser raises on this output (its stream breaks)."""

    def body(self) -> dict[str, Any]:
        """The `/v1/chat/completions` JSON body (a fresh copy, plain JSON types only)."""
        body: dict[str, Any] = {
            "model": "qwen3.6-27b-cascade",
            "messages": self.messages or [{"role": "user", "content": "Hi"}],
        }
        if self.tools is not None:
            body["tools"] = self.tools
        body.update(self.request)
        return dict(json.loads(json.dumps(body, default=dict)))


def _call(name: str, **params: str) -> str:
    """A well-formed call as the model writes it."""
    inner = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in params.items())
    return f"<tool_call>\n<function={name}>\n{inner}</function>\n</tool_call>"


THINK: Mapping[str, Any] = MappingProxyType({"chat_template_kwargs": THINKING_ON})

CASES: list[Case] = [
    # ------------------------------------------------------------------ reasoning only
    Case("plain_answer_thinking_off", "The capital of France is Paris."),
    Case(
        "thinking_on_simple",
        "The user asks for a capital.\nParis.\n</think>\n\nThe capital of France is Paris.",
        request=THINK,
    ),
    Case("thinking_on_empty_reasoning", "</think>\n\nHello!", request=THINK),
    Case("thinking_on_blank_reasoning", "\n\n</think>\n\nHello!", request=THINK),
    Case("thinking_on_truncated", "I am still thinking about the answer and", request=THINK),
    Case("thinking_on_empty_output", "", request=THINK),
    Case("thinking_off_empty_output", ""),
    Case(
        "thinking_on_explicit_think_tag",
        "<think>\nLet me see.\n</think>\n\nDone.",
        request=THINK,
    ),
    Case(
        "thinking_on_double_think_tag",
        "<think><think>x</think>y",
        request=THINK,
        stream_differs="non-streaming strips every leading <think>; streaming strips only the"
        " first and keeps the second in the reasoning",
    ),
    Case("thinking_off_model_emits_think", "<think>oops, thinking</think>The answer."),
    Case(
        "thinking_off_think_mid_text",
        "Hello <think>hidden</think> world",
        stream_differs="streaming sends the text before <think> as content; non-streaming puts it"
        " (and the literal <think>) into the reasoning",
    ),
    Case(
        "thinking_on_reopened_think",
        "first thought</think>answer one <think>second thought</think>answer two",
        request=THINK,
        stream_differs="streaming treats a later <think> as a new reasoning block; non-streaming"
        " splits once, at the first </think>",
    ),
    Case(
        "thinking_on_unicode",
        "Überlegung: 東京 ist groß 🤔\n</think>\n\nAntwort: Tōkyō 🗼",
        request=THINK,
    ),
    Case(
        "separate_reasoning_off",
        "reasoning text\n</think>\n\nanswer",
        request={"chat_template_kwargs": THINKING_ON, "separate_reasoning": False},
    ),
    Case(
        "stream_reasoning_off",
        "step one\nstep two\n</think>\n\nfinal",
        request={"chat_template_kwargs": THINKING_ON, "stream_reasoning": False},
    ),
    Case(
        "stream_reasoning_off_truncated",
        "still thinking when the budget ran out",
        request={"chat_template_kwargs": THINKING_ON, "stream_reasoning": False},
    ),
    Case(
        "reasoning_effort_none_overrides_server_default",
        "plain answer</think>tail",
        request={"reasoning_effort": "none"},
        defaults=THINKING_ON,
    ),
    Case(
        "reasoning_effort_high_turns_thinking_on",
        "thinking hard\n</think>\n\nanswer",
        request={"reasoning_effort": "high"},
    ),
    Case(
        "explicit_kwargs_beat_reasoning_effort",
        "r</think>a",
        request={"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": False}},
    ),
    Case(
        "enable_thinking_zero_is_not_false",
        "thought</think>answer",
        request={"chat_template_kwargs": {"enable_thinking": 0}},
    ),
    Case(
        "force_nonempty_content_truncated",
        "reasoning that never ends",
        request={"chat_template_kwargs": {"enable_thinking": True, "force_nonempty_content": True}},
        stream_differs="non-streaming moves the unfinished reasoning to content; streaming sends"
        " it as reasoning and then once more as content at the end",
    ),
    Case(
        "force_nonempty_content_with_answer",
        "reasoning</think>answer",
        request={"chat_template_kwargs": {"enable_thinking": True, "force_nonempty_content": True}},
    ),
    # ------------------------------------------------------------ continue_final_message
    Case(
        "continue_after_forced_close_thinking_on",
        "continued output",
        request={"continue_final_message": True, "chat_template_kwargs": THINKING_ON},
        messages=[
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "", "reasoning_content": "long reasoning"},
        ],
    ),
    Case(
        "continue_after_forced_close_preserve_thinking",
        "The answer is 4.",
        request={
            "continue_final_message": True,
            "chat_template_kwargs": {"enable_thinking": False, "preserve_thinking": True},
        },
        messages=[
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "", "reasoning_content": "long reasoning"},
        ],
    ),
    Case(
        "continue_prefix_with_open_think",
        "more reasoning</think>\n\nanswer",
        request={"continue_final_message": True},
        messages=[
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "<think>\nstarted"},
        ],
    ),
    Case(
        "continue_prefix_with_closed_think",
        "<think>late thought, never closed",
        request={"continue_final_message": True, "chat_template_kwargs": THINKING_ON},
        messages=[
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\npartial"},
        ],
        stream_differs="non-streaming sees the </think> of the continued message and keeps the"
        " output as content; streaming opens reasoning at the output's <think>",
    ),
    # ---------------------------------------------------------------------- tool calls
    Case(
        "single_call_thinking_on",
        "Weather needed.\n</think>\n\nLet me check.\n\n"
        + _call("get_weather", city="Paris", days="3"),
        tools=[WEATHER],
        request=THINK,
    ),
    Case(
        "single_call_thinking_off",
        _call("get_weather", city="Paris", days="3", units="c"),
        tools=[WEATHER],
    ),
    Case(
        "call_opened_without_closing_think",
        "I need the weather.\n\n" + _call("get_weather", city="Berlin"),
        tools=[WEATHER],
        request=THINK,
    ),
    Case(
        "parallel_calls",
        "Checking both.\n\n"
        + _call("get_weather", city="Paris")
        + "\n"
        + _call("get_weather", city="Rome", days="2"),
        tools=[WEATHER],
        stream_differs="the newline between the two <tool_call> blocks is content when"
        " streaming; non-streaming keeps only the text before the first call",
    ),
    Case(
        "parallel_calls_one_block",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n</function>\n"
        "<function=get_time>\n</function>\n</tool_call>",
        tools=[WEATHER, TIME],
    ),
    Case(
        "text_between_and_after_calls",
        "Before.\n"
        + _call("get_weather", city="Paris")
        + "\nIn between.\n"
        + _call("get_time")
        + "\nAfter the calls.",
        tools=[WEATHER, TIME],
        stream_differs="non-streaming keeps only the text before the first <tool_call>;"
        " streaming sends all text outside the call blocks",
    ),
    Case(
        "nested_json_arguments",
        _call(
            "create_event",
            title="Review",
            attendees='[{"name": "Ana", "roles": ["host", "scribe"]}, {"name": "Bo"}]',
            meta='{"room": {"floor": 3, "tags": ["a", "b"]}, "remote": true, "note": null}',
            when="null",
            priority="2.5",
        ),
        tools=[EVENT],
    ),
    Case(
        "numbers_booleans_null_arrays",
        _call(
            "search",
            query="sglang",
            limit="10",
            filters='{"lang": "en"}',
            tags='["x", "y"]',
            exact="TRUE",
            min_score="1e3",
            cursor="null",
        ),
        tools=[SEARCH],
    ),
    Case(
        "number_forms",
        _call("search", limit=" 7 ", min_score="10")
        + _call("search", limit="1_000", min_score="-0")
        + _call("search", limit="3.5", min_score="0x1A")
        + _call("search", limit="NULL", min_score="nan"),
        tools=[SEARCH],
    ),
    Case(
        "boolean_forms",
        _call("search", exact="false") + _call("search", exact="yes") + _call("search", exact=""),
        tools=[SEARCH],
    ),
    Case(
        "conversion_failures_stay_text",
        _call("get_weather", city="Paris", days="three")
        + _call("search", filters="{not json", tags="['py', 'literal']"),
        tools=[WEATHER, SEARCH],
    ),
    Case(
        "alias_and_union_types",
        _call(
            "odd_types",
            count="42",
            ratio="2",
            flag="True",
            blob="true",
            payload='{"k": [1, 2]}',
            items="[1, 'two']",
            anything="123",
            choice="1",
            level="2",
            maybe="5",
            union="7",
            both="8",
            nothing="(1, 2)",
        ),
        tools=[ODD],
    ),
    Case(
        "schema_without_properties",
        _call("ping", type="{'a': 1}", other="x"),
        tools=[NO_PROPS],
    ),
    Case(
        "unicode_arguments",
        "Zürich ☀️?\n" + _call("create_event", title="Café ☕ 会議", città="Zürich"),
        tools=[EVENT],
        stream_differs="streaming writes parameter names with json.dumps' ASCII escapes"
        ' ("citt\\u00e0"); non-streaming keeps them as they are',
    ),
    Case(
        "tool_not_in_tools",
        _call("get_stock", symbol="ACME", days="5", note="null"),
        tools=[WEATHER],
    ),
    Case(
        "unclosed_call_at_end",
        "Let me look.\n<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\nParis\n</parameter>\n",
        tools=[WEATHER],
        stream_differs="non-streaming completes the unclosed call from the whole text; streaming"
        " never sends the closing brace",
    ),
    Case(
        "unclosed_parameter_value_at_end",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
        tools=[WEATHER],
        stream_differs="non-streaming takes the value up to the end of the text; streaming waits"
        " for a closing tag that never comes",
    ),
    Case(
        "missing_parameter_close",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n<parameter=days>\n4\n"
        "</function>\n</tool_call>",
        tools=[WEATHER],
    ),
    Case(
        "function_tag_without_gt",
        "Text.\n<tool_call>\n<function=get_weather\n</tool_call>",
        tools=[WEATHER],
        stream_differs="streaming reads the function name up to the next '>' (inside"
        " </tool_call>); non-streaming finds no call",
    ),
    Case(
        "tool_call_with_json_body",
        'Calling.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call>",
        tools=[WEATHER],
    ),
    Case("empty_tool_call", "Nothing.\n<tool_call>\n</tool_call>", tools=[WEATHER]),
    Case("call_without_parameters", _call("get_time"), tools=[TIME]),
    Case(
        "duplicate_parameter_names",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n1\n</parameter>\n<parameter=city>\nLyon\n</parameter>\n</function>\n"
        "</tool_call>",
        tools=[WEATHER],
        stream_differs="streaming sends every <parameter=> (a repeated key); non-streaming"
        " keeps one key with the last value",
    ),
    Case(
        "compact_whitespace",
        "<tool_call><function=get_weather><parameter=city>Paris</parameter>"
        "<parameter=days>2</parameter></function></tool_call>",
        tools=[WEATHER],
    ),
    Case(
        "extra_whitespace",
        "\n\n<tool_call>\n\n<function=get_weather>\n\n<parameter=city>\n\n  Paris  \n\n"
        "</parameter>\n\n<parameter=days>\n 3 \n</parameter>\n\n</function>\n\n</tool_call>\n\n",
        tools=[WEATHER],
        stream_differs="streaming sends the blank lines after </tool_call> as content",
    ),
    Case(
        "crlf_line_endings",
        "<tool_call>\r\n<function=get_weather>\r\n<parameter=city>\r\nParis\r\n</parameter>\r\n"
        "</function>\r\n</tool_call>",
        tools=[WEATHER],
    ),
    Case(
        "multiline_string_parameter",
        "Writing it.\n"
        + _call(
            "write_file",
            path="/tmp/a.py",
            content='def f(a, b):\n    if a < b:\n        return "<div>"\n\n    return None\n',
        ),
        tools=[WRITE_FILE],
    ),
    Case(
        "angle_brackets_in_content",
        "Compare a<b and c>d, then <tag> and </tool> and x <",
        tools=[WEATHER],
        stream_differs="the streaming tool parser holds a trailing '<' (it may start a tag) and"
        " never flushes it",
    ),
    Case(
        "function_tag_outside_block",
        "Plain text <function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>",
        tools=[WEATHER],
        stream_differs="streaming parses <function=...> even outside <tool_call>; non-streaming"
        " needs a <tool_call> to look for calls",
    ),
    Case(
        "call_inside_reasoning_before_think_end",
        "Let me call it. "
        + _call("get_weather", city="Paris")
        + " then more thinking</think>\n\nanswer",
        tools=[WEATHER],
        request=THINK,
        stream_differs="non-streaming splits at </think>, so the call stays in the reasoning;"
        " streaming ends reasoning at <tool_call> and parses the call",
    ),
    Case(
        "reasoning_then_call_then_text",
        "plan\n</think>\n\n" + _call("get_weather", city="Paris") + "\n\nDone.",
        tools=[WEATHER],
        request=THINK,
        stream_differs="text after the call is content only when streaming",
    ),
    Case(
        "tool_choice_none_keeps_markup",
        "Sure.\n" + _call("get_weather", city="Paris"),
        tools=[WEATHER],
        request={"tool_choice": "none"},
    ),
    Case(
        "no_tools_keeps_markup",
        "Sure.\n" + _call("get_weather", city="Paris"),
    ),
    Case(
        "tool_choice_required",
        _call("get_weather", city="Paris"),
        tools=[WEATHER, TIME],
        request={"tool_choice": "required"},
    ),
    Case(
        "tool_choice_named",
        _call("get_weather", city="Paris"),
        tools=[WEATHER, TIME],
        request={"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    ),
    Case(
        "required_without_call",
        "I cannot call a tool for this.",
        tools=[WEATHER],
        request={"tool_choice": "required"},
    ),
    Case(
        "message_level_tools",
        _call("get_weather", city="Paris", days="2"),
        messages=[
            {"role": "system", "content": "sys", "tools": [WEATHER]},
            {"role": "user", "content": "Q"},
        ],
    ),
    Case(
        "unserialisable_literal_value",
        _call("search", tags="{1, 2}"),
        tools=[SEARCH],
        stream_raises=True,
    ),
]
