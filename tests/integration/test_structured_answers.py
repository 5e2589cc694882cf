"""Structured answers (JSON response formats) through the chat, Responses and Ollama doors,
against the simulator: valid answers pass unchanged, each failure is retried once with the
reason and then reported as `invalid_json_answer`, and tools run before the schema'd answer."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import pytest

from tests.integration.conftest import Cascade
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.sglang_sim.script import Rule, SimConfig
from tests.sglang_sim.testing import SimHandle

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp": {"type": "integer"}},
    "required": ["city", "temp"],
    "additionalProperties": False,
}
FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
}
ANSWER = '{"city": "Paris", "temp": 21}'
HINT = "could not be used"


def chat(cascade: Cascade, **body: Any) -> httpx.Response:
    payload = {
        "model": "m",
        "messages": [{"role": "user", "content": "weather in Paris as JSON"}],
        "response_format": FORMAT,
        "server_tools": [],
        **body,
    }
    return httpx.post(cascade.url + "/v1/chat/completions", json=payload, timeout=30)


def sse_data(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


# ----------------------------------------------------------------------------- valid answers


def test_reasoning_then_json_passes_through_unchanged(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="Paris", output=f"It is mild there.\n</think>\n\n{ANSWER}"))
    response = chat(cascade, thinking=True, thinking_budget=64)
    assert response.status_code == 200
    message = response.json()["choices"][0]["message"]
    assert json.loads(message["content"]) == {"city": "Paris", "temp": 21}
    assert message["content"].strip() == ANSWER
    assert message["reasoning_content"].startswith("It is mild there.")
    [sent] = sim.sim.requests
    # SGLang 0.5.23 takes the format as is with thinking on and starts the grammar after
    # </think>; no tools, so no tool_choice goes with it.
    assert sent.body["response_format"] == FORMAT
    assert sent.body["chat_template_kwargs"]["enable_thinking"] is True
    assert sent.body["custom_params"] == {"thinking_budget": 64}
    assert "tool_choice" not in sent.body


def test_the_simulator_grammar_fits_a_non_json_script_to_the_schema(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="Paris", output="Sunny and 21 degrees."))
    response = chat(cascade)
    assert response.status_code == 200
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {
        "city": "",
        "temp": 0,
    }
    assert len(sim.sim.requests) == 1


def test_json_object_streams_the_checked_answer_once(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="Paris", output='{"ok": true}'))
    response = chat(cascade, response_format={"type": "json_object"}, stream=True)
    assert response.status_code == 200
    chunks = sse_data(response.text)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert json.loads(content) == {"ok": True}
    deltas = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(deltas) == 1  # held back until checked, then sent whole
    assert sim.sim.requests[0].body["response_format"] == {"type": "json_object"}


def test_a_malformed_response_format_is_a_400_before_any_run(
    cascade: Cascade, sim: SimHandle
) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
    response = chat(cascade, response_format=bad)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"
    assert sim.sim.requests == []


# ----------------------------------------------------------------------------- failure modes

# (name, request extras, first output, what the first answer looks like)
FAILURES: list[tuple[str, dict[str, Any], str]] = [
    ("json_in_reasoning", {"thinking": True, "thinking_budget": 200}, ANSWER),
    ("empty_budget_ran_out", {"thinking": True, "thinking_budget": 8}, "hmm " * 40),
    ("truncated", {"max_tokens": 20}, '{"city": "' + "Paris " * 30 + '", "temp": 21}'),
    ("invalid", {}, "{city: Paris, temp: warm}"),
]


@pytest.mark.parametrize(("name", "extras", "first"), FAILURES, ids=[f[0] for f in FAILURES])
def test_each_failure_is_retried_once_with_the_reason(
    cascade: Cascade, sim: SimHandle, name: str, extras: dict[str, Any], first: str
) -> None:
    sim.sim.add_rule(Rule(match=HINT, output=ANSWER))
    sim.sim.add_rule(Rule(match="Paris", output=first, ignore_response_format=True))
    response = chat(cascade, **extras)
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    assert message["content"] == ANSWER
    assert len(sim.sim.requests) == 2
    retry = sim.sim.requests[1].body
    assert retry["response_format"] == FORMAT
    hint = [m for m in retry["messages"] if m["role"] == "user"][-1]["content"]
    assert HINT in hint
    if extras.get("thinking"):
        # The failed step's reasoning, closed as the budget guard closes it, continued with
        # thinking off: the model goes straight to the JSON.
        assert retry["continue_final_message"] is True
        assert retry["messages"][-1]["role"] == "assistant"
        assert retry["messages"][-1]["content"].endswith("\n</think>\n\n")
        assert retry["chat_template_kwargs"]["enable_thinking"] is False
        assert message["reasoning_content"]  # the first attempt's reasoning is kept
    else:
        assert retry["messages"][-1]["content"] == hint
    expected = {
        "json_in_reasoning": "inside the reasoning",
        "empty_budget_ran_out": "empty",
        "truncated": "cut off",
        "invalid": "not valid JSON",
    }[name]
    assert expected in hint


@pytest.mark.parametrize(("name", "extras", "first"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failed_retry_is_an_invalid_json_answer_error_with_the_raw_text(
    cascade: Cascade, sim: SimHandle, name: str, extras: dict[str, Any], first: str
) -> None:
    sim.sim.add_rule(Rule(match=HINT, output="{still: broken", ignore_response_format=True))
    sim.sim.add_rule(Rule(match="Paris", output=first, ignore_response_format=True))
    response = chat(cascade, **extras)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "invalid_json_answer"
    assert error["cascade"]["answer"] == "{still: broken"
    assert len(sim.sim.requests) == 2


def test_a_failed_retry_in_a_stream_ends_with_an_error_event(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match=HINT, output="nope", ignore_response_format=True))
    sim.sim.add_rule(
        Rule(match="Paris", output="think\n</think>\n\nnot json", ignore_response_format=True)
    )
    response = chat(cascade, thinking=True, thinking_budget=64, stream=True)
    assert response.status_code == 200  # the reasoning had started streaming
    chunks = sse_data(response.text)
    errors = [c["error"] for c in chunks if "error" in c]
    assert errors and errors[0]["code"] == "invalid_json_answer"
    assert errors[0]["cascade"]["answer"] == "nope"
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices"))


# ----------------------------------------------------------------------------- tools first


def test_server_tools_run_first_without_the_schema_then_the_answer_has_it(
    cascade: Cascade, sim: SimHandle
) -> None:
    register_tools(cascade, Recorder())
    sim.sim.add_rule(Rule(match="Paris", output=call("lookup", key="paris"), times=1))
    sim.sim.add_rule(Rule(match="Paris", output="The lookup says 21 degrees.", times=1))
    sim.sim.add_rule(Rule(match="Paris", output=ANSWER))
    response = chat(cascade, server_tools=["lookup"])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    tool_step, draft, final = (r.body for r in sim.sim.requests)
    for step in (tool_step, draft):
        assert step["tools"] and "response_format" not in step
    assert final["response_format"] == FORMAT
    assert "tools" not in final and "tool_choice" not in final
    assert [m["role"] for m in final["messages"]] == ["user", "assistant", "tool"]


def test_a_forced_tool_choice_never_travels_with_the_format(
    cascade: Cascade, sim: SimHandle
) -> None:
    register_tools(cascade, Recorder())
    sim.sim.add_rule(Rule(match="Paris", output=call("lookup", key="paris"), times=1))
    sim.sim.add_rule(Rule(match="Paris", output=ANSWER))
    response = chat(cascade, server_tools=["lookup"], tool_choice="required")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    for recorded in sim.sim.requests:
        forcing = recorded.body.get("tool_choice") not in (None, "auto", "none")
        assert not (forcing and "response_format" in recorded.body)
        assert recorded.status_code in (None, 200)


# ----------------------------------------------------------------------------- other doors


def test_responses_text_format_is_checked_and_retried(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=HINT, output=ANSWER))
    sim.sim.add_rule(Rule(match="Paris", output="{city", ignore_response_format=True))
    body = {
        "model": "m",
        "input": "weather in Paris as JSON",
        "text": {"format": {"type": "json_schema", "name": "weather", "schema": SCHEMA}},
        "server_tools": [],
    }
    response = httpx.post(cascade.url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 200, response.text
    texts = [
        part["text"]
        for item in response.json()["output"]
        if item["type"] == "message"
        for part in item["content"]
    ]
    assert texts == [ANSWER]
    assert len(sim.sim.requests) == 2
    assert sim.sim.requests[1].body["response_format"]["json_schema"]["schema"] == SCHEMA


def test_responses_failed_retry_is_reported(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="{city", ignore_response_format=True))
    body = {
        "model": "m",
        "input": "weather in Paris as JSON",
        "text": {"format": {"type": "json_object"}},
        "server_tools": [],
    }
    response = httpx.post(cascade.url + "/v1/responses", json=body, timeout=30)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "invalid_json_answer"
    assert response.json()["error"]["cascade"]["answer"] == "{city"


def test_ollama_format_schema_is_checked_and_retried(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=HINT, output=ANSWER))
    sim.sim.add_rule(Rule(match="Paris", output="[1, 2", ignore_response_format=True))
    with ollama.Client(host=cascade.url, timeout=30) as api:
        reply = api.chat(
            model=SimConfig().model_name,
            messages=[{"role": "user", "content": "weather in Paris as JSON"}],
            format=SCHEMA,
            stream=False,
        )
    assert json.loads(reply.message.content or "") == {"city": "Paris", "temp": 21}
    assert [r.body.get("response_format", {}).get("type") for r in sim.sim.requests] == [
        "json_schema",
        "json_schema",
    ]


def test_ollama_failed_retry_keeps_the_raw_answer(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="[1, 2", ignore_response_format=True))
    body = {
        "model": SimConfig().model_name,
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "format": "json",
        "stream": False,
    }
    response = httpx.post(cascade.url + "/api/chat", json=body, timeout=30)
    assert response.status_code == 502
    assert "not valid JSON" in response.json()["error"]
    assert response.json()["cascade"]["answer"] == "[1, 2"
