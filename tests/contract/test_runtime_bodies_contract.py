"""Every request body cascade's runtime client produces is a valid SGLang 0.5.23
`ChatCompletionRequest`, and SGLang reads cascade's extensions the way cascade means them."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from app.config import load_settings
from app.runtime import GuardedRuntime, RuntimeRequest, SGLangClient
from app.runtime.body import build_chat_body, new_rid
from app.runtime.models import Sampling
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import running_simulator

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a key up",
            "parameters": {
                "type": "object",
                "properties": {"key": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["key"],
                "additionalProperties": False,
            },
        },
    }
]


def png_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 32), (10, 20, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": png_uri()}},
        ],
    },
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should look it up.",
        "tool_calls": [
            {
                "id": "call_0123456789abcdef01234567",
                "type": "function",
                "function": {"name": "lookup", "arguments": '{"key": "x"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_0123456789abcdef01234567", "content": "x=1"},
]

CASES: dict[str, RuntimeRequest] = {
    "plain": RuntimeRequest(messages=[{"role": "user", "content": "hi"}]),
    "thinking_budget": RuntimeRequest(
        messages=[{"role": "user", "content": "hi"}], thinking=True, thinking_budget=512
    ),
    "tools_history_images": RuntimeRequest(
        messages=HISTORY, tools=TOOLS, tool_choice="auto", preserve_thinking=True
    ),
    "forced_tool": RuntimeRequest(
        messages=HISTORY,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    ),
    "sampling": RuntimeRequest(
        messages=[{"role": "user", "content": "hi"}],
        sampling=Sampling(
            temperature=0.3,
            top_p=0.8,
            top_k=10,
            min_p=0.05,
            repetition_penalty=1.05,
            presence_penalty=0.5,
            frequency_penalty=0.2,
            stop=["END"],
            seed=7,
        ),
        max_answer_tokens=64,
        priority=5,
    ),
    "json_schema": RuntimeRequest(
        messages=[{"role": "user", "content": "hi"}],
        sampling=Sampling(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "object"}},
            }
        ),
    ),
    "guard_continuation": RuntimeRequest(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "reasoning so far\n</think>\n\n"},
        ],
        thinking=False,
        preserve_thinking=True,
        continue_final_message=True,
    ),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bodies_validate_as_sglang_requests(case: str, stream: bool) -> None:
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest

    req = CASES[case]
    body = build_chat_body(req, load_settings(), model="m", rid=new_rid(), stream=stream)
    parsed = ChatCompletionRequest.model_validate(body)
    assert parsed.rid == body["rid"]
    assert parsed.separate_reasoning is True
    assert parsed.max_completion_tokens == body["max_completion_tokens"]
    assert parsed.top_k == body["top_k"]
    assert parsed.repetition_penalty == body["repetition_penalty"]
    assert parsed.chat_template_kwargs == {
        "enable_thinking": req.thinking,
        "preserve_thinking": True,
    }
    if req.thinking and req.thinking_budget:
        assert parsed.custom_params == {"thinking_budget": req.thinking_budget}
        assert parsed.max_completion_tokens > req.thinking_budget  # room for the answer beyond it
    else:
        assert not parsed.custom_params
    if stream:
        assert parsed.stream_options is not None
        assert parsed.stream_options.include_usage
        assert parsed.stream_options.continuous_usage_stats
    if req.continue_final_message:
        assert parsed.continue_final_message is True
    if req.tools:
        assert [t.function.name for t in parsed.tools or []] == ["lookup"]


def test_every_body_sent_in_a_guarded_tool_run_validates() -> None:
    """Bodies recorded at the simulator from real runs, including a budget-guard continuation."""
    from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest

    async def run(url: str) -> None:
        settings = load_settings(runtime_url=url, runtime_retry_backoff=0.01)
        client = SGLangClient(settings)
        runtime = GuardedRuntime(client, settings)
        try:
            await runtime.complete(RuntimeRequest(messages=HISTORY, tools=TOOLS))
            await runtime.complete(
                RuntimeRequest(
                    messages=[{"role": "user", "content": "think"}],
                    thinking=True,
                    thinking_budget=16,
                )
            )
        finally:
            await client.aclose()

    import asyncio

    with running_simulator() as sim:
        sim.sim.config.ignore_thinking_budget = True
        sim.sim.add_rule(Rule(match="think", continuation=False, output="hmm " * 200))
        sim.sim.add_rule(Rule(continuation=True, output="answer"))
        asyncio.run(run(sim.url))
        bodies = [record.body for record in sim.sim.requests]
    assert len(bodies) == 3  # plain, runaway thinking, guard continuation
    assert bodies[-1]["continue_final_message"] is True
    for body in bodies:
        ChatCompletionRequest.model_validate(body)
