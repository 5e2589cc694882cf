"""Session messages as conversation items: ids stable under appends and removals, server tool
steps as `mcp_call`, and what deleting one item changes."""

from __future__ import annotations

from typing import Any

import pytest

from app.agent.conversation_items import conversation_items, find_item, removal
from app.errors import InvalidRequestError, NotFoundError

SESSION = "conv_" + "a" * 24


def call(call_id: str, name: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Look it up.",
            "tool_calls": [call("c1", "lookup"), call("c2", "client_fn")],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
        {"role": "tool", "tool_call_id": "c2", "content": "42"},
        {"role": "user", "content": "hi"},
    ]


def ids(messages: list[dict[str, Any]], session: str = SESSION) -> list[str]:
    return [r.id for r in conversation_items(session, messages, {"lookup"})]


def test_items_of_a_tool_round() -> None:
    items = conversation_items(SESSION, history(), {"lookup"})
    assert [r.item["type"] for r in items] == [
        "message",
        "reasoning",
        "mcp_call",
        "function_call",
        "function_call_output",
        "message",
    ]
    mcp = items[2].item
    assert mcp["output"] == "found" and mcp["status"] == "completed"
    assert items[3].item["call_id"] == "c2" and items[4].item["output"] == "42"
    assert items[0].item["content"] == [{"type": "input_text", "text": "hi"}]


def test_ids_are_unique_stable_and_session_scoped() -> None:
    first = ids(history())
    assert len(set(first)) == len(first)  # the two identical "hi" messages differ
    assert ids(history()) == first
    assert ids([*history(), {"role": "user", "content": "more"}])[: len(first)] == first
    without_first = history()[1:]
    assert ids(without_first)[:4] == first[1:5]
    assert set(ids(history(), "conv_" + "b" * 24)).isdisjoint(first)


def test_deleting_a_call_takes_its_output_and_an_output_alone_is_refused() -> None:
    messages = history()
    items = conversation_items(SESSION, messages, {"lookup"})
    edit = removal(messages, find_item(items, items[3].id))  # the client call c2
    assert edit.remove == [3]
    kept = edit.replace[1]
    assert [c["id"] for c in kept["tool_calls"]] == ["c1"]
    assert kept["meta"]["item_key"] == items[3].key
    with pytest.raises(InvalidRequestError) as raised:
        removal(messages, items[4])
    assert raised.value.param == "item_id"
    with pytest.raises(NotFoundError):
        find_item(items, "msg_nope")


def test_a_message_emptied_by_a_deletion_goes() -> None:
    messages: list[dict[str, Any]] = [{"role": "assistant", "content": "only text"}]
    items = conversation_items(SESSION, messages, set())
    edit = removal(messages, items[0])
    assert edit.remove == [0] and edit.replace == {}
