"""Hostile and malformed chat bodies: each is a 400 naming the field, never a 500, and nothing
reaches the runtime or the session."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Cascade
from tests.integration.test_chat_api import WEATHER_TOOL
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

USER = {"role": "user", "content": "hi"}


def deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def call(**function: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": function}


def post(cascade: Cascade, body: Any) -> httpx.Response:
    return httpx.post(
        cascade.url + "/v1/chat/completions",
        content=json.dumps(body),  # stdlib: orjson itself refuses to write > 254 levels
        headers={"content-type": "application/json"},
        timeout=30,
    )


CASES: list[tuple[str, dict[str, Any], str | None]] = [
    # --- nesting (orjson writes at most 254 levels; cascade refuses past 64 at the door)
    ("deep content", {"messages": [{"role": "user", "content": [deep(300)]}]}, None),
    ("deep response_format", {"messages": [USER], "response_format": deep(300)}, None),
    (
        "deep tool parameters",
        {
            "messages": [USER],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": deep(300)}}],
        },
        None,
    ),
    # --- history tool calls
    (
        "tool_calls of a number",
        {"messages": [USER, {"role": "assistant", "tool_calls": [5]}]},
        "messages[1].tool_calls[0]",
    ),
    (
        "tool_calls not a list",
        {"messages": [USER, {"role": "assistant", "tool_calls": {"id": "x"}}]},
        "messages[1].tool_calls",
    ),
    (
        "arguments as an object",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [call(name="f", arguments={"a": 1})]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "arguments not JSON",
        {"messages": [USER, {"role": "assistant", "tool_calls": [call(name="f", arguments="{")]}]},
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "call without id",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].id",
    ),
    (
        "call without function",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]},
            ]
        },
        "messages[1].tool_calls[0].function",
    ),
    (
        "call with a bad name",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [call(name="no spaces", arguments="{}")]},
            ]
        },
        "messages[1].tool_calls[0].function.name",
    ),
    ("message not an object", {"messages": [USER, "hello"]}, "messages.1"),
    (
        "part not an object",
        {"messages": [{"role": "user", "content": [5]}]},
        "messages[0].content[0]",
    ),
    (
        "text part without text",
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content[0].text",
    ),
    (
        "tool_calls on a user message",
        {"messages": [{"role": "user", "content": "x", "tool_calls": []}]},
        "messages[0].tool_calls",
    ),
    # --- tool results
    (
        "tool result with no call",
        {"messages": [USER, {"role": "tool", "tool_call_id": "call_9", "content": "42"}]},
        "messages[1].tool_call_id",
    ),
    (
        "tool result for another call",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [call(name="get_weather", arguments="{}")]},
                {"role": "tool", "tool_call_id": "call_2", "content": "42"},
            ],
            "tools": [WEATHER_TOOL],
        },
        "messages[2].tool_call_id",
    ),
    # --- tool offer
    (
        "tool_choice names an unknown tool",
        {
            "messages": [USER],
            "tools": [WEATHER_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "launch_rocket"}},
        },
        "tool_choice",
    ),
    (
        "tool_choice required with nothing offered",
        {"messages": [USER], "server_tools": [], "tool_choice": "required"},
        "tool_choice",
    ),
    (
        "tool_choice named with nothing offered",
        {
            "messages": [USER],
            "server_tools": [],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        "tool_choice",
    ),
    ("tool_choice of a bad shape", {"messages": [USER], "tool_choice": "sometimes"}, "tool_choice"),
    ("too many stop strings", {"messages": [USER], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("an empty stop string", {"messages": [USER], "stop": [""]}, "stop"),
    (
        "parameters not a schema",
        {
            "messages": [USER],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object", "properties": 5}},
                }
            ],
        },
        "tools[0].function.parameters",
    ),
    (
        "parameters of type string",
        {
            "messages": [USER],
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}
            ],
        },
        "tools[0].function.parameters",
    ),
]


@pytest.mark.parametrize(("case", "body", "param"), CASES, ids=[c[0] for c in CASES])
def test_a_malformed_body_is_a_400_naming_the_field(
    cascade: Cascade, sim: SimHandle, case: str, body: dict[str, Any], param: str | None
) -> None:
    sim.sim.add_rule(Rule(output="never"))
    response = post(cascade, {"model": "m", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    else:
        assert "deeper than 64" in error["message"]
    assert sim.sim.requests == []


def test_a_session_turn_may_answer_the_calls_its_stored_history_made(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(
        Rule(
            match="weather",
            output="<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
            "</function>\n</tool_call>",
            times=1,
        )
    )
    first = post(
        cascade,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "weather in Paris"}],
            "tools": [WEATHER_TOOL],
            "store": True,
        },
    ).json()
    calls = first["choices"][0]["message"]["tool_calls"]
    session_id = first["session_id"]
    sim.sim.add_rule(Rule(output="Sunny."))
    answer = {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}
    ok = post(
        cascade,
        {"model": "m", "session_id": session_id, "messages": [answer], "tools": [WEATHER_TOOL]},
    )
    assert ok.status_code == 200, ok.text
    again = post(
        cascade,
        {"model": "m", "session_id": session_id, "messages": [answer], "tools": [WEATHER_TOOL]},
    )
    assert again.status_code == 400
    assert again.json()["error"]["param"] == "messages[0].tool_call_id"
    history = httpx.get(f"{cascade.url}/v1/sessions/{session_id}").json()
    assert sum(1 for m in history["messages"] if m["role"] == "tool") == 1


@pytest.mark.parametrize("field", ["variables", "response_schema"])
def test_a_too_deep_job_field_is_a_400(cascade: Cascade, field: str) -> None:
    body = {"images": ["a.png"], "questions": ["what?"], field: deep(300)}
    response = httpx.post(
        cascade.url + "/v1/jobs/image-questions",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "deeper than 64" in error["message"]
    assert field in (error["param"] or "")
