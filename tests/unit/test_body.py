from __future__ import annotations

import itertools

import pytest

from app.config import Settings, load_settings
from app.errors import InvalidRequestError
from app.runtime.body import build_chat_body, grant_budget, new_rid, runtime_max_tokens
from app.runtime.models import RuntimeRequest, Sampling

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def settings() -> Settings:
    return load_settings()


def test_sampling_defaults_come_from_the_model_card(settings: Settings) -> None:
    body = build_chat_body(
        RuntimeRequest(messages=MESSAGES), settings, model="m", rid="r1.", stream=False
    )
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.95
    assert body["top_k"] == 20
    assert body["repetition_penalty"] == 1.1
    assert body["separate_reasoning"] is True
    # Always preserved: past turns render as generated (app/agent/prompt.py).
    assert body["chat_template_kwargs"] == {"enable_thinking": False, "preserve_thinking": True}
    assert "custom_params" not in body
    assert body["rid"] == "r1."
    assert body["model"] == "m"


def test_thinking_budget_goes_to_custom_params_and_max_tokens_leaves_room(
    settings: Settings,
) -> None:
    req = RuntimeRequest(
        messages=MESSAGES, thinking=True, thinking_budget=1000, max_answer_tokens=100
    )
    body = build_chat_body(req, settings, model="m", rid="r.", stream=True)
    assert body["custom_params"] == {"thinking_budget": 1000}
    assert body["chat_template_kwargs"]["enable_thinking"] is True
    # The answer's allowance comes on top of the budget and its forced `</think>`: never
    # starved, and not more when the runtime holds the budget.
    assert body["max_completion_tokens"] == 1000 + 1 + 100
    assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}


def test_max_tokens_without_thinking_is_the_answer_allowance(settings: Settings) -> None:
    assert (
        runtime_max_tokens(RuntimeRequest(messages=MESSAGES, max_answer_tokens=77), settings) == 77
    )
    assert (
        runtime_max_tokens(RuntimeRequest(messages=MESSAGES), settings)
        == settings.answer_tokens_default
    )


def test_temperature_zero_is_rejected_with_a_reason(settings: Settings) -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_chat_body(
            RuntimeRequest(messages=MESSAGES, sampling=Sampling(temperature=0)),
            settings,
            model="m",
            rid="r.",
            stream=False,
        )
    assert info.value.status == 400
    assert "loop" in info.value.message
    assert info.value.param == "temperature"


def test_temperature_zero_allowed_by_operator() -> None:
    settings = load_settings(allow_greedy=True)
    body = build_chat_body(
        RuntimeRequest(messages=MESSAGES, sampling=Sampling(temperature=0)),
        settings,
        model="m",
        rid="r.",
        stream=False,
    )
    assert body["temperature"] == 0


def test_budget_is_capped(settings: Settings) -> None:
    assert grant_budget(None, settings) == settings.thinking_budget_default
    assert grant_budget(10**9, settings) == settings.thinking_budget_max
    assert grant_budget(5, settings) == 5


def test_tools_and_tool_choice(settings: Settings) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = build_chat_body(
        RuntimeRequest(messages=MESSAGES, tools=tools),
        settings,
        model="m",
        rid="r.",
        stream=False,
    )
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    with pytest.raises(InvalidRequestError):
        build_chat_body(
            RuntimeRequest(messages=MESSAGES, tool_choice="required"),
            settings,
            model="m",
            rid="r.",
            stream=False,
        )


def test_rids_are_unique_and_never_a_prefix_of_another() -> None:
    rids = [new_rid() for _ in range(2000)] + [new_rid("g") for _ in range(20)]
    assert len(set(rids)) == len(rids)
    ordered = sorted(rids)
    for a, b in itertools.pairwise(ordered):
        assert not b.startswith(a)
