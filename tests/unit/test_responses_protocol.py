"""The Responses request's translation to a `ChatRequest`: input items, tools, choices."""

from __future__ import annotations

import pytest

from app.agent.responses_protocol import (
    ChatTranslation,
    parse_responses_request,
    to_chat_request,
)
from app.errors import InvalidRequestError


def translate(body: dict[str, object], available: tuple[str, ...] = ()) -> ChatTranslation:
    req = parse_responses_request({"model": "m", **body})
    return to_chat_request(req, stored_history=[], available_server_tools=available)


def test_earlier_output_items_become_one_assistant_message_with_its_reasoning() -> None:
    t = translate(
        {
            "input": [
                {"role": "user", "content": "weather?"},
                {
                    "type": "reasoning",
                    "summary": [],
                    "content": [{"type": "reasoning_text", "text": "r"}],
                },
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "a"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "b"}],
                },
            ]
        }
    )
    messages = t.request.messages
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert messages[1]["reasoning_content"] == "r"
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[3] == {"role": "tool", "tool_call_id": "c2", "content": "b"}


def test_a_function_tool_choice_and_web_search_are_translated() -> None:
    t = translate(
        {
            "input": "hi",
            "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}],
            "tool_choice": {"type": "function", "name": "f"},
        },
        available=("web_search",),
    )
    req = t.request
    assert req.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert [tool.function.name for tool in req.tools] == ["f"]
    assert req.server_tools == ["web_search"]


def test_web_search_without_the_server_tool_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        translate({"input": "hi", "tools": [{"type": "web_search"}]})
    assert raised.value.param == "tools[0].type"


def test_instructions_lead_the_history_and_a_file_id_image_is_an_image_url() -> None:
    t = translate(
        {
            "instructions": "be kind",
            "input": [
                {"role": "user", "content": [{"type": "input_image", "file_id": "file-abc"}]}
            ],
        }
    )
    assert t.history == [{"role": "system", "content": "be kind"}]
    parts = t.request.messages[0]["content"]
    assert parts == [{"type": "image_url", "image_url": {"url": "file-abc"}}]
