"""Ollama requests → cascade's ChatRequest: the translation's rules, checked without a server."""

from __future__ import annotations

from typing import Any

import pytest

from app.agent.ollama_protocol import (
    chat_messages,
    is_unload,
    parse_chat,
    parse_generate,
    to_chat_request,
)
from app.errors import InvalidRequestError


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def call(name: str, call_id: str | None = None) -> dict[str, Any]:
    made: dict[str, Any] = {"function": {"name": name, "arguments": {"x": 1}}}
    if call_id is not None:
        made["id"] = call_id
    return made


def test_tool_results_answer_by_id_then_name_then_order() -> None:
    req = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "tool_calls": [call("a"), call("b", "given"), call("c")],
                },
                {"role": "tool", "content": "B", "tool_call_id": "given"},
                {"role": "tool", "content": "C", "tool_name": "c"},
                {"role": "tool", "content": "A"},
            ],
        }
    )
    messages = chat_messages(req.messages)
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert ids == ["call_1_0", "given", "call_1_2"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"x":1}'
    answered = [(m["content"], m["tool_call_id"]) for m in messages[2:]]
    assert answered == [("B", "given"), ("C", "call_1_2"), ("A", "call_1_0")]
    to_chat_request(req, server_tools=[])  # the OpenAI-form history passes the chat checks


def test_a_second_result_for_one_call_is_refused() -> None:
    req = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "tool_calls": [call("a")]},
                {"role": "tool", "content": "1"},
                {"role": "tool", "content": "2"},
            ],
        }
    )
    with pytest.raises(InvalidRequestError) as raised:
        chat_messages(req.messages)
    assert raised.value.param == "messages[2]"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"think": "huge"}, "think"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"options": {"num_ctx": -5}}, "options.num_ctx"),
        ({"options": {"num_ctx": "8192"}}, "options.num_ctx"),
        ({"options": {"num_predict": 0}}, "options.num_predict"),
        ({"format": "yaml"}, "format"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        parse_chat(chat(**fields))
    assert raised.value.param == param


def test_translation_errors_name_the_ollama_field() -> None:
    for fields, param in (
        ({"options": {"repeat_penalty": 9}}, "options.repeat_penalty"),
        ({"options": {"stop": ["a", "b", "c", "d", "e"]}}, "options.stop"),
        ({"format": {"type": 12}}, "format"),
        ({"messages": [{"role": "system", "content": "x", "images": ["AAAA"]}]}, None),
    ):
        with pytest.raises(InvalidRequestError) as raised:
            to_chat_request(parse_chat(chat(**fields)), server_tools=[])
        assert raised.value.param == (param or "messages[0].images")


def test_num_ctx_above_any_context_is_accepted_and_advisory() -> None:
    req = to_chat_request(parse_chat(chat(options={"num_ctx": 10**7})), server_tools=[])
    assert req.max_tokens is None


def test_a_negative_num_predict_leaves_the_default_allowance() -> None:
    req = to_chat_request(parse_chat(chat(options={"num_predict": -1})), server_tools=[])
    assert req.max_tokens is None


def test_the_server_tools_are_the_doors_choice() -> None:
    tool = {"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}
    req = to_chat_request(parse_chat(chat(tools=[tool])), server_tools=[])
    assert req.server_tools == [] and req.tools is not None
    assert to_chat_request(parse_chat(chat()), server_tools=["x"]).server_tools == ["x"]


def test_generate_builds_system_and_user_messages_and_refuses_raw() -> None:
    req = to_chat_request(
        parse_generate({"model": "m", "prompt": "p", "system": "s", "images": ["QUJD"]}),
        server_tools=[],
    )
    assert req.messages[0] == {"role": "system", "content": "s"}
    assert req.messages[1]["content"][1]["image_url"]["url"] == (
        "data:application/octet-stream;base64,QUJD"
    )
    for refused in ({"raw": True}, {"suffix": "x"}, {"template": "t"}, {"context": [1]}):
        with pytest.raises(InvalidRequestError) as raised:
            parse_generate({"model": "m", "prompt": "p", **refused})
        assert raised.value.param == next(iter(refused))


@pytest.mark.parametrize(
    ("keep_alive", "unload"),
    [(0, True), ("0", True), ("0s", True), ("0m", True), (-1, False), ("5m", False), (None, False)],
)
def test_keep_alive_zero_unloads(keep_alive: Any, unload: bool) -> None:
    assert is_unload(keep_alive) is unload
