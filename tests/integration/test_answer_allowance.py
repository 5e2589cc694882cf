"""`max_tokens` bounds the answer (content and tool calls) beyond the reasoning, exactly, whether
the runtime holds the thinking budget (strict thinking, as seen on a real runtime: N + 1
reasoning tokens) or ignores it (sglang issue #25536), through cascade's API."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from tests.integration.test_chat_api import extra
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle
from tests.sglang_sim.tokens import count_tokens

MAX_TOKENS = 48
BUDGET = 8
LONG_ANSWER = " ".join(f"word{i}" for i in range(300))
REASONING = {
    "runaway": "Let me think about this again. " * 60,  # far past budget + margin
    "short": "Easy. ",  # ends well before the budget
    "within_margin": "Think " * 20,  # past the budget, not past budget + margin
}


def _ask(client: OpenAI, *, stream: bool) -> tuple[str, Any]:
    kwargs: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "tell me everything"}],
        "max_tokens": MAX_TOKENS,
        "extra_body": {"thinking": True, "thinking_budget": BUDGET},
    }
    if not stream:
        response = client.chat.completions.create(**kwargs)
        return response.choices[0].message.content or "", response.usage
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    content = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    return content, chunks[-1].usage


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("reasoning", list(REASONING))
@pytest.mark.parametrize("ignores_budget", [False, True], ids=["enforcing", "ignoring"])
def test_the_answer_never_exceeds_max_tokens(
    client: OpenAI, sim: SimHandle, ignores_budget: bool, reasoning: str, stream: bool
) -> None:
    sim.sim.config.ignore_thinking_budget = ignores_budget
    sim.sim.add_rule(
        Rule(continuation=False, output=REASONING[reasoning] + "</think>\n\n" + LONG_ANSWER)
    )
    sim.sim.add_rule(Rule(continuation=True, output=LONG_ANSWER))
    content, usage = _ask(client, stream=stream)
    assert content.strip().startswith("word0")
    assert count_tokens(content) <= MAX_TOKENS
    assert usage is not None
    assert usage.completion_tokens - extra(usage, "reasoning_tokens") <= MAX_TOKENS
    assert extra(usage, "thinking_budget")["used"] <= BUDGET + sim_margin()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_runtime_holding_the_budget_leaves_the_answer_its_whole_allowance(
    client: OpenAI, sim: SimHandle, stream: bool
) -> None:
    sim.sim.add_rule(Rule(output=REASONING["runaway"] + "</think>\n\n" + LONG_ANSWER))
    content, usage = _ask(client, stream=stream)
    (only,) = sim.sim.requests
    assert only.reasoning_tokens == BUDGET + 1
    assert only.body["max_completion_tokens"] == BUDGET + 1 + MAX_TOKENS
    assert only.completion_tokens - only.reasoning_tokens == MAX_TOKENS
    assert usage.completion_tokens - extra(usage, "reasoning_tokens") == MAX_TOKENS
    # The content is the answer's tokens, all of them but the blank line after `</think>`
    # (cascade drops it from the content).
    assert count_tokens("\n\n" + content) == MAX_TOKENS
    assert not content.startswith("\n")
    assert extra(usage, "thinking_budget")["closed_by_guard"] is False


def test_an_answer_cut_by_cascade_ends_with_length_and_an_abort(
    client: OpenAI, sim: SimHandle
) -> None:
    # Reasoning that ends early leaves the runtime's max_tokens room past the allowance.
    sim.sim.update_config(tpot=0.005)  # still generating when cascade cuts
    sim.sim.add_rule(Rule(output=REASONING["short"] + "</think>\n\n" + LONG_ANSWER))
    response = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "tell me everything"}],
        max_tokens=MAX_TOKENS,
        extra_body={"thinking": True, "thinking_budget": BUDGET},
    )
    assert response.choices[0].finish_reason == "length"
    (only,) = sim.sim.requests
    assert only.rid in sim.sim.aborted_rids  # the runtime stopped paying for the rest
    assert only.finish_reason == "abort"
    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens - extra(usage, "reasoning_tokens") == MAX_TOKENS


def sim_margin() -> int:
    from app.config import load_settings

    return load_settings().budget_margin
