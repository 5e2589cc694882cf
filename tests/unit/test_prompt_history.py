"""`app.agent.prompt.runtime_messages` rendered by cascade's Qwen3.6 template (with the
`preserve_thinking` cascade always sends): past turns render as the model generated them."""

from __future__ import annotations

import asyncio
from typing import Any

from app.agent.prompt import runtime_messages
from tests.sglang_sim.template import render_chat_prompt


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def render(messages: list[dict[str, Any]], *, thinking: bool, keep: bool = True) -> str:
    sent = asyncio.run(runtime_messages(messages, None, keep_reasoning=keep))
    return render_chat_prompt(sent, enable_thinking=thinking, preserve_thinking=True)


def test_a_thinking_off_turn_keeps_the_empty_think_block_its_prompt_ended_with() -> None:
    first = render([user("Hi")], thinking=False)
    assert first.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    history = [user("Hi"), {"role": "assistant", "content": "Hello."}, user("Bye")]
    for keep in (True, False):
        assert render(history, thinking=False, keep=keep).startswith(first + "Hello.<|im_end|>")


def test_a_thinking_on_turn_keeps_its_reasoning_verbatim() -> None:
    first = render([user("Hi")], thinking=True)
    output = "Greet back.\n</think>\n\nHello."
    turn = {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet back.\n"}
    second = render([user("Hi"), turn, user("Bye")], thinking=True)
    assert second.startswith(first + output + "<|im_end|>")


def test_without_keep_reasoning_earlier_turns_lose_their_reasoning_but_keep_the_block() -> None:
    history = [
        user("Hi"),
        {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet back."},
        user("Weather?"),
        {"role": "assistant", "content": "<think>\nold\n</think>\n\nSunny."},
        user("Thanks"),
        {"role": "assistant", "content": "", "reasoning_content": "Look it up.", "tool_calls": []},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    prompt = render(history, thinking=True, keep=False)
    assert "Greet back." not in prompt and "old" not in prompt
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\nHello.<|im_end|>" in prompt
    assert "<|im_start|>assistant\n<think>\n\n</think>\n\nSunny.<|im_end|>" in prompt
    # The running tool loop (after the last user message) keeps its reasoning.
    assert "<think>\nLook it up.\n</think>" in prompt
    assert history[1]["reasoning_content"] == "Greet back."  # the stored history is untouched
