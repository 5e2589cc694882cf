"""The OpenAI Agents SDK, unmodified, with its default Responses model and a `@function_tool`,
against cascade (streamed and not): the tool runs, its output reaches the model, the answer
comes back."""

from __future__ import annotations

import asyncio

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from tests.integration.conftest import Cascade
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

CALL = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "</function>\n</tool_call>"
)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_an_agent_with_a_function_tool_runs_against_cascade(
    cascade: Cascade, sim: SimHandle, streamed: bool
) -> None:
    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    sim.sim.add_rule(Rule(match="weather", output=CALL, times=1))
    sim.sim.add_rule(Rule(output="It is sunny in Paris."))

    async def run() -> str:
        client = AsyncOpenAI(base_url=cascade.url + "/v1", api_key="k", max_retries=0)
        agent = Agent(
            name="assistant",
            instructions="Be brief.",
            tools=[get_weather],
            model=OpenAIResponsesModel(model="m", openai_client=client),
        )
        try:
            if not streamed:
                result = await Runner.run(agent, "what is the weather in Paris?")
                return str(result.final_output)
            streaming = Runner.run_streamed(agent, "what is the weather in Paris?")
            kinds = {event.type async for event in streaming.stream_events()}
            assert "raw_response_event" in kinds
            return str(streaming.final_output)
        finally:
            await client.close()

    assert asyncio.run(run()) == "It is sunny in Paris."
    assert calls == ["Paris"]
    last = sim.sim.requests[-1].body["messages"]
    assert last[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in last[1:]] == ["user", "assistant", "tool"]
    assert last[-1]["content"] == "sunny in Paris"
