"""`tests.sglang_sim.parsing` on key cases, without SGLang installed.

Expected values are worked out from SGLang 0.5.23's source (serving_chat.py, the qwen3 reasoning
detector, the qwen3_coder detector); the contract suite
(tests/contract) checks the same module against SGLang's own parsers on a larger corpus.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.sglang_sim.parsing import (
    Delta,
    DeltaToolCall,
    ParsedToolCall,
    RequestParsing,
    SplitResult,
    StreamSplitter,
    effective_tools,
    reasoning_starts_in_think,
    split_output,
    template_kwargs,
)

OFF = {"enable_thinking": False}
ON = {"enable_thinking": True}

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    },
}
TYPED: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "typed",
        "parameters": {
            "type": "object",
            "properties": {
                "n": {"type": "integer"},
                "x": {"type": "number"},
                "ok": {"type": "boolean"},
                "obj": {"type": "object"},
                "arr": {"type": "array"},
                "s": {"type": "string"},
                "opt": {"type": ["null", "integer"]},
                "alias_int": {"type": "int"},
                "alias_binary": {"type": "binary"},
                "nothing": {"type": "null"},
            },
        },
    },
}

CALL = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Q"}], **fields}


def _typed_args(**params: str) -> dict[str, Any]:
    inner = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    text = f"<tool_call>\n<function=typed>\n{inner}</function>\n</tool_call>"
    result = split_output(text, in_think=False, tools=[TYPED])
    assert len(result.tool_calls) == 1
    parsed: dict[str, Any] = json.loads(result.tool_calls[0].arguments)
    return parsed


def _stream(
    pieces: list[str], *, in_think: bool | None, tools: list[dict[str, Any]] | None = None
) -> list[Delta]:
    splitter = StreamSplitter(in_think=in_think, tools=tools)
    deltas: list[Delta] = []
    for piece in pieces:
        deltas.extend(splitter.feed(piece))
    deltas.extend(splitter.finish())
    return deltas


def _joined(deltas: list[Delta], field: str) -> str:
    return "".join(getattr(d, field) or "" for d in deltas)


# ------------------------------------------------------------------ request decisions


@pytest.mark.parametrize(
    ("fields", "defaults", "expected"),
    [
        ({}, OFF, False),
        ({}, ON, True),
        ({}, {}, True),  # the parser's default: thinking on
        ({"chat_template_kwargs": ON}, OFF, True),
        ({"chat_template_kwargs": OFF}, ON, False),
        ({"chat_template_kwargs": {"enable_thinking": 0}}, OFF, True),  # only `is False` is off
        ({"reasoning_effort": "none"}, ON, False),
        ({"reasoning_effort": "low"}, OFF, True),
        ({"reasoning_effort": "high", "chat_template_kwargs": OFF}, {}, False),
        ({"reasoning": {"enabled": True}}, OFF, True),
        ({"separate_reasoning": False}, ON, None),
    ],
)
def test_reasoning_starts_in_think(
    fields: dict[str, Any], defaults: dict[str, Any], expected: bool | None
) -> None:
    assert reasoning_starts_in_think(_body(**fields), defaults) is expected


def test_continued_assistant_message_decides_by_its_think_tags() -> None:
    def body(content: str) -> dict[str, Any]:
        return {
            "model": "m",
            "continue_final_message": True,
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": content},
            ],
        }

    assert reasoning_starts_in_think(body("<think>\nhalf"), OFF) is True
    assert reasoning_starts_in_think(body("<think>r</think>a"), ON) is False
    assert reasoning_starts_in_think(body(""), ON) is True
    assert reasoning_starts_in_think(body(""), OFF) is False


def test_continued_null_content_is_an_error_like_sglang() -> None:
    body = {
        "model": "m",
        "continue_final_message": True,
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}],
    }
    with pytest.raises(ValueError, match="null assistant content"):
        reasoning_starts_in_think(body, ON)
    # Without a reasoning parser SGLang never looks at it.
    assert RequestParsing.from_request({**body, "separate_reasoning": False}, ON).in_think is None


def test_template_kwargs_merge_request_over_server_defaults() -> None:
    merged = template_kwargs(
        _body(chat_template_kwargs={"preserve_thinking": True}, reasoning_effort="none"),
        {"enable_thinking": True, "preserve_thinking": False, "x": 1},
    )
    assert merged == {
        "preserve_thinking": True,
        "thinking": False,
        "enable_thinking": False,
        "x": 1,
    }


def test_request_parsing_reads_tools_choice_and_flags() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "s", "tools": [WEATHER]},
            {"role": "user", "content": "Q"},
        ],
        "stream_reasoning": False,
        "chat_template_kwargs": {"force_nonempty_content": True},
    }
    parsing = RequestParsing.from_request(body, OFF)
    assert effective_tools(body) == [WEATHER]
    assert parsing.tools == (WEATHER,)
    assert parsing.tool_choice == "auto"  # message-level tools make the default "auto"
    assert parsing.stream_reasoning is False
    assert parsing.force_nonempty_content is True
    assert parsing.in_think is False
    assert RequestParsing.from_request(_body(), OFF).tool_choice == "none"


# ---------------------------------------------------------------------- non-streaming


def test_documented_example_content_keeps_text_before_the_call() -> None:
    result = split_output("Let me check.\n\n" + CALL, in_think=False, tools=[WEATHER])
    assert result == SplitResult(
        reasoning_content=None,
        content="Let me check.\n\n",
        tool_calls=[
            ParsedToolCall(
                name="get_weather",
                arguments='{"city": "Paris", "days": 3}',
                parameters_raw={"city": "Paris", "days": "3"},
            )
        ],
    )


def test_reasoning_then_answer_keeps_leading_newlines() -> None:
    result = split_output("Thinking.\n</think>\n\nAnswer.", in_think=True, tools=None)
    assert result == SplitResult("Thinking.\n", "\n\nAnswer.", [])


def test_empty_reasoning_is_null_and_empty_content_is_empty_string() -> None:
    assert split_output("</think>\n\nHi", in_think=True, tools=None).reasoning_content is None
    assert split_output("all reasoning", in_think=True, tools=None) == SplitResult(
        "all reasoning", "", []
    )


def test_thinking_off_output_is_content_unless_it_opens_think() -> None:
    assert split_output("a</think>b", in_think=False, tools=None) == SplitResult(
        None, "a</think>b", []
    )
    assert split_output("<think>r</think>a", in_think=False, tools=None) == SplitResult(
        "r", "a", []
    )


def test_no_reasoning_parser_leaves_everything_in_content() -> None:
    assert split_output("r</think>a", in_think=None, tools=None) == SplitResult(
        None, "r</think>a", []
    )


def test_tool_call_opened_inside_reasoning_ends_it() -> None:
    result = split_output("Need weather.\n" + CALL, in_think=True, tools=[WEATHER])
    assert result.reasoning_content == "Need weather.\n"
    assert result.content == ""
    assert [c.name for c in result.tool_calls] == ["get_weather"]


def test_call_before_think_end_stays_in_reasoning() -> None:
    text = "plan " + CALL + " more</think>answer"
    result = split_output(text, in_think=True, tools=[WEATHER])
    assert result == SplitResult("plan " + CALL + " more", "answer", [])


def test_parallel_calls_and_text_after_them_non_streaming() -> None:
    text = "A\n" + CALL + "\nB\n" + CALL.replace("Paris", "Rome") + "\nC"
    result = split_output(text, in_think=False, tools=[WEATHER])
    assert result.content == "A\n"
    assert [json.loads(c.arguments)["city"] for c in result.tool_calls] == ["Paris", "Rome"]


def test_tool_choice_none_and_missing_tools_keep_the_markup() -> None:
    text = "Sure.\n" + CALL
    assert split_output(text, in_think=False, tools=[WEATHER], tool_choice="none").content == text
    assert split_output(text, in_think=False, tools=None).content == text
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert split_output(text, in_think=False, tools=[WEATHER], tool_choice=named).tool_calls


def test_unclosed_call_is_completed_from_the_whole_text() -> None:
    text = "Look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar"
    result = split_output(text, in_think=False, tools=[WEATHER])
    assert result.content == "Look.\n"
    assert result.tool_calls[0].arguments == '{"city": "Par"}'


def test_malformed_calls_give_no_call_and_keep_only_the_text_before() -> None:
    for text in ("Hi\n<tool_call>\n</tool_call>", "Hi\n<tool_call>\n<function=get_weather\n"):
        assert split_output(text, in_think=False, tools=[WEATHER]) == SplitResult(None, "Hi\n", [])


def test_unknown_tool_keeps_values_as_text_except_null() -> None:
    text = (
        "<tool_call>\n<function=nope>\n<parameter=a>\n5\n</parameter>\n"
        "<parameter=b>\nnull\n</parameter>\n</function>\n</tool_call>"
    )
    (call,) = split_output(text, in_think=False, tools=[WEATHER]).tool_calls
    assert (call.name, call.arguments) == ("nope", '{"a": "5", "b": null}')


def test_value_conversion_by_schema() -> None:
    assert _typed_args(
        n="42",
        x="10",
        ok="TRUE",
        obj='{"a": [1, {"b": null}]}',
        arr="['py', 2]",
        s="007",
        opt="3",
        alias_int="5",
        alias_binary="true",
    ) == {
        "n": 42,
        "x": 10,  # whole and written without "." or "e": an int
        "ok": True,
        "obj": {"a": [1, {"b": None}]},
        "arr": ["py", 2],  # not JSON, but a Python literal
        "s": "007",
        "opt": 3,
        "alias_int": 5,  # "int" is read as "integer"
        "alias_binary": "true",  # "binary" is read as "string", not as a boolean
    }
    assert _typed_args(x="1.0", n="three", ok="yes", obj="{bad") == {
        "x": 1.0,
        "n": "three",
        "ok": False,
        "obj": "{bad",
    }
    assert _typed_args(x="1e3", s="null", n=" 7 ") == {"x": 1000.0, "s": None, "n": 7}


def test_python_literal_with_invalid_escape_raises_no_warning() -> None:
    assert _typed_args(nothing="'\\d+'") == {"nothing": "\\d+"}


def test_unicode_kept_in_non_streaming_arguments() -> None:
    text = CALL.replace("Paris", "Zürich 🏔")
    (call,) = split_output(text, in_think=False, tools=[WEATHER]).tool_calls
    assert call.arguments == '{"city": "Zürich 🏔", "days": 3}'


def test_unserialisable_value_drops_every_call() -> None:
    # A Python set literal for an array: JSON can not hold it, so SGLang gives up on all calls.
    good = CALL.replace("get_weather", "typed")
    bad = good.replace("</function>", "<parameter=arr>\n{1, 2}\n</parameter>\n</function>")
    text = "Hi\n" + good + bad
    assert split_output(text, in_think=False, tools=[TYPED]) == SplitResult(None, text, [])


def test_force_nonempty_content_moves_unfinished_reasoning() -> None:
    result = split_output("only reasoning", in_think=True, tools=None, force_nonempty_content=True)
    assert result == SplitResult(None, "only reasoning", [])


def test_previous_think_end_keeps_output_in_content() -> None:
    result = split_output("<think>x", in_think=False, tools=None, previous_content="r</think>")
    assert result == SplitResult(None, "x", [])


# -------------------------------------------------------------------------- streaming


def test_stream_deltas_for_the_documented_example() -> None:
    deltas = _stream(["Let me check.\n\n" + CALL], in_think=False, tools=[WEATHER])
    assert deltas == [
        Delta(content="Let me check.\n\n"),
        Delta(tool_calls=[DeltaToolCall(0, "get_weather", "")]),
        Delta(tool_calls=[DeltaToolCall(0, None, "{")]),
        Delta(tool_calls=[DeltaToolCall(0, None, '"city": "Paris"')]),
        Delta(tool_calls=[DeltaToolCall(0, None, ', "days": 3')]),
        Delta(tool_calls=[DeltaToolCall(0, None, "}")]),
    ]


def test_stream_per_character_gives_the_same_text() -> None:
    text = "Plan.\n</think>\n\nLet me check.\n\n" + CALL
    deltas = _stream(list(text), in_think=True, tools=[WEATHER])
    assert _joined(deltas, "reasoning_content") == "Plan.\n"
    assert _joined(deltas, "content") == "\n\nLet me check.\n\n"
    args = "".join(c.arguments for d in deltas for c in d.tool_calls or [])
    assert json.loads(args) == {"city": "Paris", "days": 3}
    assert [c.name for d in deltas for c in d.tool_calls or [] if c.name] == ["get_weather"]


def test_stream_holds_a_partial_think_end() -> None:
    splitter = StreamSplitter(in_think=True, tools=None)
    assert splitter.feed("abc</thi") == [Delta(reasoning_content="abc")]
    assert splitter.feed("nk>x") == [Delta(content="x")]
    assert splitter.finish() == []


def test_stream_flushes_held_reasoning_at_the_end() -> None:
    splitter = StreamSplitter(in_think=True, tools=None)
    assert splitter.feed("cut off </th") == [Delta(reasoning_content="cut off ")]
    assert splitter.finish() == [Delta(reasoning_content="</th")]


def test_stream_finish_parses_its_piece_with_the_flush_in_one_delta() -> None:
    splitter = StreamSplitter(in_think=True, tools=None)
    assert splitter.feed("a <") == [Delta(reasoning_content="a ")]
    assert splitter.finish("b") == [Delta(reasoning_content="<b")]
    with pytest.raises(RuntimeError):
        splitter.feed("more")


def test_stream_reasoning_off_sends_reasoning_whole() -> None:
    splitter = StreamSplitter(in_think=True, tools=None, stream_reasoning=False)
    assert splitter.feed("one ") == []
    assert splitter.feed("two") == []
    assert splitter.feed("</think>ans") == [
        Delta(reasoning_content="one two"),
        Delta(content="ans"),
    ]


def test_stream_sends_text_between_and_after_calls() -> None:
    text = "A\n" + CALL + "\nB"
    deltas = _stream([text], in_think=False, tools=[WEATHER])
    assert _joined(deltas, "content") == "A\n\nB"


def test_stream_loses_a_trailing_tag_start_with_tools() -> None:
    assert _joined(_stream(["x <"], in_think=False, tools=[WEATHER]), "content") == "x "
    assert _joined(_stream(["x <"], in_think=False, tools=None), "content") == "x <"


def test_stream_escapes_non_ascii_parameter_names() -> None:
    text = (
        "<tool_call>\n<function=f>\n<parameter=città>\nRoma\n</parameter>\n</function>\n"
        "</tool_call>"
    )
    deltas = _stream([text], in_think=False, tools=[WEATHER])
    args = "".join(c.arguments for d in deltas for c in d.tool_calls or [])
    assert args == '{"citt\\u00e0": "Roma"}'
    (call,) = split_output(text, in_think=False, tools=[WEATHER]).tool_calls
    assert call.arguments == '{"città": "Roma"}'


def test_stream_tool_call_ends_implicit_reasoning() -> None:
    deltas = _stream(["Need it.\n", CALL], in_think=True, tools=[WEATHER])
    assert deltas[0] == Delta(reasoning_content="Need it.\n")
    assert deltas[1] == Delta(tool_calls=[DeltaToolCall(0, "get_weather", "")])


def test_stream_unserialisable_value_raises() -> None:
    text = "<tool_call>\n<function=typed>\n<parameter=arr>\n{1, 2}\n</parameter>\n"
    with pytest.raises(TypeError):
        _stream([text], in_think=False, tools=[TYPED])
