"""`/v1/chat/completions` driven by the official openai SDK, against the simulator and Redis."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import Cascade
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}

WEATHER_CALL = (
    "Let me check.\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
    "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)


def extra(obj: Any, name: str) -> Any:
    return (obj.model_extra or {}).get(name)


def test_plain_answer_without_thinking(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="hello", output="Hi! How can I help?"))
    response = client.chat.completions.create(
        model="qwen3.6-27b-cascade", messages=[{"role": "user", "content": "hello"}]
    )
    message = response.choices[0].message
    assert message.content == "Hi! How can I help?"
    assert extra(message, "reasoning_content") is None
    assert response.choices[0].finish_reason == "stop"
    body = sim.sim.requests[-1].body
    assert body["chat_template_kwargs"]["enable_thinking"] is False
    assert body["temperature"] == 0.7 and body["top_k"] == 20
    assert response.usage is not None and response.usage.prompt_tokens > 0


def test_reasoning_is_kept_apart_from_the_answer(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(
        Rule(match="sky", output="Rayleigh scattering, shorter wavelengths.\n</think>\n\nBlue.")
    )
    response = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "what colour is the sky"}],
        extra_body={"thinking": True, "thinking_budget": 500},
    )
    message = response.choices[0].message
    assert message.content is not None and message.content.strip() == "Blue."
    assert "<think>" not in message.content and "</think>" not in message.content
    assert extra(message, "reasoning_content").strip() == (
        "Rayleigh scattering, shorter wavelengths."
    )
    usage = response.usage
    assert usage is not None
    budget = extra(usage, "thinking_budget")
    assert budget["granted"] == 500 and budget["used"] > 0
    assert sim.sim.requests[-1].body["custom_params"] == {"thinking_budget": 500}


@pytest.mark.parametrize("thinking", [True, False])
def test_streaming_never_leaks_reasoning_into_content(
    client: OpenAI, sim: SimHandle, thinking: bool
) -> None:
    output = (
        "Step one. Step two, with <b>markup</b>.\n</think>\n\nThe answer is 42."
        if thinking
        else "The answer is 42."
    )
    sim.sim.add_rule(Rule(match="meaning", output=output))
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "meaning of life?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"thinking": thinking},
    )
    content, reasoning, finish, usage = [], [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                content.append(choice.delta.content)
            if extra(choice.delta, "reasoning_content"):
                reasoning.append(extra(choice.delta, "reasoning_content"))
            if choice.finish_reason:
                finish = choice.finish_reason
    text = "".join(content)
    assert text.strip() == "The answer is 42."
    assert "think>" not in text
    assert finish == "stop"
    if thinking:
        assert "".join(reasoning).strip() == "Step one. Step two, with <b>markup</b>."
    else:
        assert reasoning == []
    assert usage is not None and usage.completion_tokens > 0
    assert extra(usage, "thinking_budget")["enabled"] is thinking


def test_session_holds_the_history(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="name is Ada", output="Nice to meet you, Ada."))
    sim.sim.add_rule(Rule(match="my name?", output="Your name is Ada."))
    first = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Hi, my name is Ada."}],
        extra_body={"store": True},
    )
    session_id = extra(first, "session_id")
    assert session_id is not None and session_id.startswith("sess_")
    second = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "What is my name?"}],
        extra_body={"session_id": session_id},
    )
    assert second.choices[0].message.content == "Your name is Ada."
    sent = sim.sim.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == "Nice to meet you, Ada."


def test_a_session_turn_carries_its_routing_key(client: OpenAI, sim: SimHandle) -> None:
    # A router in front of several runtimes (SGLang Model Gateway) keeps a routing key on one
    # runtime: the session's id keeps a conversation where its prefix cache is.
    first = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], extra_body={"store": True}
    )
    session_id = extra(first, "session_id")
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "again"}],
        extra_body={"session_id": session_id},
    )
    assert sim.sim.requests[-1].headers["x-smg-routing-key"] == session_id
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "alone"}])
    assert "x-smg-routing-key" not in sim.sim.requests[-1].headers


def test_client_tool_round_trip(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="weather", output=WEATHER_CALL, times=1))
    first = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        extra_body={"store": True},
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 3}  # type: ignore[union-attr]
    assert calls[0].id.startswith("call_")
    session_id = extra(first, "session_id")

    sim.sim.add_rule(Rule(match=None, output="It will be sunny in Paris."))
    second = client.chat.completions.create(
        model="m",
        messages=[{"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 24C"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        extra_body={"session_id": session_id},
    )
    assert second.choices[0].message.content == "It will be sunny in Paris."
    sent = sim.sim.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == calls[0].id
    assert sent[2]["tool_call_id"] == calls[0].id


def test_streamed_client_tool_call_arrives_in_openai_form(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="weather", output=WEATHER_CALL))
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream=True,
    )
    names, ids, args, finish = [], [], [], None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                if call.id:
                    ids.append(call.id)
                if call.function and call.function.name:
                    names.append(call.function.name)
                if call.function and call.function.arguments:
                    args.append(call.function.arguments)
            finish = choice.finish_reason or finish
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert json.loads("".join(args)) == {"city": "Paris", "days": 3}
    assert finish == "tool_calls"


def test_stateless_open_webui_style_exchange(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="and 3?", output="5"))
    response = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "1 and 1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "2 and 3?"},
        ],
    )
    assert response.choices[0].message.content == "5"
    assert extra(response, "session_id") is None
    sent = sim.sim.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_bad_input_is_a_clear_400(cascade: Cascade) -> None:
    cases: list[tuple[Any, str]] = [
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}, "loop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "session_id": "nope"},
            "session_id",
        ),
    ]
    for body, word in cases:
        response = httpx.post(cascade.url + "/v1/chat/completions", json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert word in error["message"] or word == error.get("param"), error
    response = httpx.post(
        cascade.url + "/v1/chat/completions",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


def test_unknown_session_is_404(client: OpenAI) -> None:
    with pytest.raises(Exception) as info:
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"session_id": "sess_" + "0" * 24},
        )
    assert getattr(info.value, "status_code", None) == 404


def test_runtime_error_is_not_leaked(client: OpenAI, sim: SimHandle) -> None:
    from tests.sglang_sim.script import Fault

    sim.sim.add_rule(Rule(match="boom", output="x", fault=Fault(kind="http_500", times=5)))
    with pytest.raises(Exception) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "boom"}])
    assert getattr(info.value, "status_code", None) == 502
    assert "Traceback" not in str(info.value)


def test_budget_ignored_by_runtime_is_enforced_by_cascade(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.config.ignore_thinking_budget = True
    loop = "I keep thinking about this. " * 400
    sim.sim.add_rule(Rule(match="loop", continuation=False, output=loop + "</think>\n\nlate"))
    sim.sim.add_rule(Rule(match="loop", continuation=True, output="The short answer."))
    response = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "loop please"}],
        extra_body={"thinking": True, "thinking_budget": 64},
    )
    message = response.choices[0].message
    assert message.content == "The short answer."
    budget = extra(response.usage, "thinking_budget")
    assert budget["closed_by_guard"] is True
    assert budget["used"] <= 64 + cascade_margin()
    assert sim.sim.requests[-1].body["continue_final_message"] is True


def cascade_margin() -> int:
    from app.config import load_settings

    return load_settings().budget_margin
