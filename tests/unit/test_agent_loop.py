"""The agent loop against a scripted model: repair of tool calls the runtime missed, one retry
for unusable ones, max_steps, and the one budget per run."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from app.agent.loop import AgentRun
from app.agent.models import Final, RunConfig
from app.agent.repair import extract_calls
from app.runtime.models import (
    Chunk,
    Completion,
    RuntimeHealth,
    RuntimeRequest,
    ThinkingReport,
    ToolCall,
    ToolCallFunction,
    Usage,
)
from tools.registry import ToolArgs, ToolContext, ToolPolicy, ToolRegistry, tool


class KeyArgs(ToolArgs):
    key: str
    count: int = 1


@tool(name="lookup")
async def lookup(args: KeyArgs, ctx: ToolContext) -> str:
    """Look a key up."""
    return f"{args.key}={args.count}"


SCHEMAS = {"lookup": lookup.parameters_schema()}


class ScriptedModel:
    """Returns scripted completions in order and records the requests."""

    def __init__(self, *completions: Completion) -> None:
        self.completions = list(completions)
        self.requests: list[RuntimeRequest] = []

    async def complete(self, req: RuntimeRequest, *, rid: str | None = None) -> Completion:
        self.requests.append(req)
        return self.completions.pop(0)

    async def stream(
        self, req: RuntimeRequest, *, rid: str | None = None
    ) -> AsyncGenerator[Chunk, None]:
        raise AssertionError("not streamed in these tests")
        yield Chunk()  # pragma: no cover

    async def abort(self, rid: str) -> bool:
        return True

    async def health(self) -> RuntimeHealth:
        return RuntimeHealth(reachable=True, healthy=True)

    async def model_name(self) -> str:
        return "m"


def answer(
    content: str = "",
    reasoning: str | None = None,
    calls: list[ToolCall] | None = None,
    *,
    completion_tokens: int = 5,
    reasoning_used: int = 0,
) -> Completion:
    return Completion(
        rid="r",
        model="m",
        content=content,
        reasoning_content=reasoning,
        tool_calls=calls or [],
        finish_reason="tool_calls" if calls else "stop",
        usage=Usage(completion_tokens=completion_tokens, reasoning_tokens=reasoning_used),
        thinking=ThinkingReport(enabled=reasoning_used > 0, used=reasoning_used),
    )


def make_run(model: ScriptedModel, **config: object) -> AgentRun:
    registry = ToolRegistry([lookup])
    return AgentRun(
        runtime=model,
        registry=registry,
        media=None,
        history=[],
        new_messages=[{"role": "user", "content": "go"}],
        config=RunConfig(server_tools=["lookup"], **config),  # type: ignore[arg-type]
        policy=ToolPolicy(enabled={"lookup"}),
        owner="o",
        session_id=None,
        stream=False,
    )


XML = "<tool_call>\n<function=lookup>\n<parameter=key>\nabc\n</parameter>\n<parameter=count>\n3\n</parameter>\n</function>\n</tool_call>"  # noqa: E501


def test_extract_calls_converts_by_schema() -> None:
    found = extract_calls("text " + XML, SCHEMAS)
    assert [c.function.name for c in found.calls] == ["lookup"]
    assert found.calls[0].function.arguments == '{"key": "abc", "count": 3}'
    assert found.remaining_text == "text"
    assert found.calls[0].id.startswith("call_") and len(found.calls[0].id) == 29


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<tool_call>\nlookup key=x\n</tool_call>", "without a <function=NAME>"),
        (XML.replace("lookup", "unknown"), "unknown tool"),
        (XML.replace("<parameter=key>\nabc\n</parameter>\n", ""), "missing key"),
        (XML.replace("\n3\n", "\nthree\n"), "not valid"),
    ],
)
def test_extract_calls_reports_what_it_cannot_repair(text: str, problem: str) -> None:
    found = extract_calls(text, SCHEMAS)
    assert found.calls == []
    assert problem in found.problems[0]


async def test_tool_call_left_in_the_reasoning_is_repaired_and_run() -> None:
    model = ScriptedModel(answer(reasoning="I need it. " + XML), answer("done"))
    result = await make_run(model).run()
    assert result.content == "done"
    roles = [m["role"] for m in result.new_messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert result.new_messages[2]["content"] == "abc=3"
    assert result.new_messages[1]["tool_calls"][0]["function"]["name"] == "lookup"


async def test_unusable_call_is_reported_to_the_model_once() -> None:
    bad = "<tool_call>\nlookup key=x\n</tool_call>"
    model = ScriptedModel(answer(bad), answer(bad), answer("gave up"))
    result = await make_run(model).run()
    # One retry with the problem named, then the second failure is the answer.
    assert len(model.requests) == 2
    hint = model.requests[1].messages[-1]
    assert hint["role"] == "user" and "could not be used" in hint["content"]
    assert result.outcome == "final"


async def test_a_run_ended_by_an_unusable_retry_says_stop_not_tool_calls() -> None:
    # The runtime reports `tool_calls` for a call it could not parse, twice: the answer holds
    # no tool call, so its finish reason must not claim one.
    swallowed = answer("", completion_tokens=40).model_copy(update={"finish_reason": "tool_calls"})
    model = ScriptedModel(swallowed, swallowed)
    result = await make_run(model).run()
    assert result.outcome == "final"
    assert result.client_tool_calls == []
    assert result.finish_reason == "stop"
    assert isinstance(result.end, Final)


async def test_call_swallowed_by_the_runtime_is_not_silently_dropped() -> None:
    # SGLang drops a <tool_call> block it cannot parse: no text, no call, tokens spent.
    model = ScriptedModel(answer("", completion_tokens=40), answer("retried answer"))
    result = await make_run(model).run()
    assert result.content == "retried answer"
    assert "runtime could not read it" in model.requests[1].messages[-1]["content"]


async def test_max_steps_is_a_clear_stored_outcome() -> None:
    call = ToolCall(id="call_1", function=ToolCallFunction(name="lookup", arguments='{"key": "k"}'))
    model = ScriptedModel(
        *[answer(calls=[call.model_copy(update={"id": f"c{i}"})]) for i in range(3)]
    )
    result = await make_run(model, max_steps=3).run()
    assert result.outcome == "max_steps"
    assert result.finish_reason == "length"
    assert result.new_messages[-1]["meta"] == {"outcome": "max_steps"}
    assert "max_steps" in result.content


async def test_one_thinking_budget_covers_every_step() -> None:
    call = ToolCall(id="call_1", function=ToolCallFunction(name="lookup", arguments='{"key": "k"}'))
    model = ScriptedModel(
        answer(reasoning="r", calls=[call], reasoning_used=70),
        answer(reasoning="r", calls=[call.model_copy(update={"id": "c2"})], reasoning_used=30),
        answer("final"),
    )
    result = await make_run(model, thinking=True, thinking_budget=100).run()
    budgets = [(r.thinking, r.thinking_budget) for r in model.requests]
    # Step 2 gets what step 1 left; with nothing left, step 3 runs without thinking.
    assert budgets == [(True, 100), (True, 30), (False, None)]
    assert result.thinking.used == 100
    assert result.content == "final"
