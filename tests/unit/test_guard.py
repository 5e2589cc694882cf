"""The budget guard's logic against a scripted inner runtime (the HTTP path is covered in
tests/integration/test_runtime_client.py against the simulator)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from app.config import load_settings
from app.runtime.guard import GuardedRuntime
from app.runtime.models import (
    Chunk,
    Completion,
    RuntimeHealth,
    RuntimeRequest,
    ToolCallDelta,
    Usage,
)


class ScriptedRuntime:
    """Yields scripted chunk lists, one list per call; records requests and aborts."""

    def __init__(self, *scripts: list[Chunk]) -> None:
        self.scripts = list(scripts)
        self.requests: list[RuntimeRequest] = []
        self.aborted: list[str] = []
        self.closed_early = 0

    async def complete(self, req: RuntimeRequest, *, rid: str | None = None) -> Completion:
        raise AssertionError("the guard streams thinking calls")

    async def stream(
        self, req: RuntimeRequest, *, rid: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        self.requests.append(req)
        script = self.scripts.pop(0)
        done = False
        try:
            for chunk in script:
                yield chunk
            done = True
        finally:
            if not done:
                self.closed_early += 1

    async def abort(self, rid: str) -> bool:
        self.aborted.append(rid)
        return True

    async def health(self) -> RuntimeHealth:
        return RuntimeHealth(reachable=True, healthy=True)

    async def model_name(self) -> str:
        return "m"


def reasoning(n: int) -> list[Chunk]:
    return [Chunk(reasoning_content=f"r{i} ", completion_tokens=i + 1) for i in range(n)]


REQ = RuntimeRequest(messages=[{"role": "user", "content": "q"}], thinking=True, thinking_budget=10)


async def test_runtime_that_enforces_the_budget_is_left_alone() -> None:
    inner = ScriptedRuntime(
        [
            *reasoning(10),
            Chunk(content="\n\nanswer", completion_tokens=12),
            Chunk(finish_reason="stop", usage=Usage(completion_tokens=12, reasoning_tokens=11)),
        ]
    )
    result = await GuardedRuntime(inner, load_settings()).complete(REQ)
    assert result.content == "answer"  # without the blank line the model writes after </think>
    assert result.reasoning_content is not None and result.reasoning_content.count("r") == 10
    assert result.thinking.closed_by_guard is False
    assert result.thinking.used == 11
    assert len(inner.requests) == 1 and inner.aborted == []


async def test_overrun_is_cut_aborted_and_the_answer_continued() -> None:
    settings = load_settings(budget_margin=4)
    inner = ScriptedRuntime(
        reasoning(100),  # a runtime ignoring the budget: reasoning runs on
        [Chunk(content="final answer"), Chunk(finish_reason="stop", usage=Usage(prompt_tokens=3))],
    )
    result = await GuardedRuntime(inner, settings).complete(REQ)
    assert result.content == "final answer"
    assert result.reasoning_content is not None
    assert result.reasoning_content.count("r") == 14  # budget 10 + margin 4, not one more
    assert result.thinking.closed_by_guard is True
    assert result.thinking.used == 14
    assert inner.closed_early == 1
    assert len(inner.aborted) == 1
    follow = inner.requests[1]
    assert follow.continue_final_message is True
    assert follow.thinking is False and follow.thinking_budget is None
    assert follow.preserve_thinking is True
    assert follow.messages[-1]["role"] == "assistant"
    # SGLang 0.5.23 renders only the content of the continued message: thinking closed there.
    assert follow.messages[-1]["content"] == result.reasoning_content.rstrip("\n") + (
        "\n</think>\n\n"
    )


async def test_length_while_reasoning_gets_an_answer() -> None:
    inner = ScriptedRuntime(
        [*reasoning(5), Chunk(finish_reason="length", usage=Usage(reasoning_tokens=5))],
        [Chunk(reasoning_content="classified as reasoning"), Chunk(finish_reason="stop")],
    )
    result = await GuardedRuntime(inner, load_settings()).complete(REQ)
    # Whatever the runtime classifies the continuation as, it is the answer.
    assert result.content == "classified as reasoning"
    assert result.thinking.closed_by_guard is True
    assert result.finish_reason == "stop"


async def test_tool_call_after_reasoning_passes_through() -> None:
    inner = ScriptedRuntime(
        [
            *reasoning(3),
            Chunk(tool_calls=[ToolCallDelta(index=0, id="call_1", name="f", arguments="")]),
            Chunk(tool_calls=[ToolCallDelta(index=0, arguments='{"a": 1}')]),
            Chunk(finish_reason="tool_calls"),
        ]
    )
    result = await GuardedRuntime(inner, load_settings()).complete(REQ)
    assert [c.function.name for c in result.tool_calls] == ["f"]
    assert result.tool_calls[0].function.arguments == '{"a": 1}'
    assert result.finish_reason == "tool_calls"
    assert result.thinking.closed_by_guard is False


async def test_estimates_when_runtime_reports_no_running_counts() -> None:
    settings = load_settings(budget_margin=0)
    chunks = [Chunk(reasoning_content="abcd" * 2) for _ in range(50)]  # ~2 tokens each
    inner = ScriptedRuntime(chunks, [Chunk(content="ok"), Chunk(finish_reason="stop")])
    result = await GuardedRuntime(inner, settings).complete(REQ)
    assert result.content == "ok"
    assert result.reasoning_content is not None
    assert len(result.reasoning_content) // 4 <= 10


async def test_streamed_chunks_carry_the_report_on_the_last_one() -> None:
    inner = ScriptedRuntime(
        reasoning(50), [Chunk(content="a"), Chunk(content="b"), Chunk(finish_reason="stop")]
    )
    seen = [c async for c in GuardedRuntime(inner, load_settings(budget_margin=0)).stream(REQ)]
    assert [c.content for c in seen if c.content] == ["a", "b"]
    assert seen[-1].thinking is not None and seen[-1].thinking.closed_by_guard
    assert all(c.thinking is None for c in seen[:-1])
    assert sum(1 for c in seen if c.reasoning_content) == 10


def answer(start: int, n: int) -> list[Chunk]:
    """`n` one-token content chunks, the first at completion token `start` + 1."""
    return [Chunk(content=f"a{i} ", completion_tokens=start + i + 1) for i in range(n)]


async def test_an_answer_past_its_allowance_is_cut_and_aborted() -> None:
    req = REQ.model_copy(update={"max_answer_tokens": 5})
    # Reasoning ends early (3 tokens, then `</think>` as token 4): the runtime's max_tokens
    # would leave the answer 10 + 1 + 5 - 4 = 12 tokens.
    inner = ScriptedRuntime(
        [
            *reasoning(3),
            *answer(4, 12),
            Chunk(finish_reason="abort", usage=Usage(prompt_tokens=7, reasoning_tokens=4)),
        ]
    )
    result = await GuardedRuntime(inner, load_settings()).complete(req)
    assert result.content == "a0 a1 a2 a3 a4 "
    assert result.finish_reason == "length"
    assert inner.aborted == [result.rid]
    assert result.usage.completion_tokens - result.usage.reasoning_tokens == 5
    # Read on to the runtime's finish for its usage; completion counts what was handed on.
    assert result.usage.prompt_tokens == 7 and result.usage.total_tokens == 7 + 9
    assert len(inner.requests) == 1


async def test_an_answer_within_its_allowance_is_left_alone() -> None:
    req = REQ.model_copy(update={"max_answer_tokens": 5})
    inner = ScriptedRuntime(
        [
            *reasoning(3),
            *answer(4, 5),
            Chunk(finish_reason="stop", usage=Usage(completion_tokens=9, reasoning_tokens=4)),
        ]
    )
    result = await GuardedRuntime(inner, load_settings()).complete(req)
    assert result.finish_reason == "stop" and result.content.count("a") == 5
    assert inner.aborted == []


async def test_the_answer_allowance_is_estimated_without_running_counts() -> None:
    req = REQ.model_copy(update={"max_answer_tokens": 4})
    inner = ScriptedRuntime(
        [
            Chunk(reasoning_content="hm"),
            *[Chunk(content="abcd" * 2) for _ in range(5)],  # ~2 tokens each
            Chunk(finish_reason="stop"),
        ]
    )
    result = await GuardedRuntime(inner, load_settings()).complete(req)
    assert result.content == "abcd" * 4  # two chunks fit in 4 estimated tokens
    assert result.finish_reason == "length"
