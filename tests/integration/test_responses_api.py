"""`/v1/responses` driven by the official openai SDK, against the simulator and Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.integration.test_chat_api import WEATHER_CALL
from tests.media_server import png_bytes
from tests.redis_server import RedisServer, free_port
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Fault, Rule
from tests.sglang_sim.testing import SimHandle

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

WEATHER_FUNCTION: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


def post(cascade: Cascade, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(cascade.url + "/v1/responses", json=body, headers=headers, timeout=30)


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


# ----------------------------------------------------------------------------- 1: create


def test_a_plain_answer_is_a_valid_response_with_output_text(
    client: OpenAI, cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="hello", output="Hi! How can I help?"))
    raw = post(cascade, {"model": "m", "input": "hello", "metadata": {"k": "v"}})
    assert raw.status_code == 200
    body = Response.model_validate(raw.json())
    assert body.object == "response" and body.id.startswith("resp_")
    assert body.status == "completed" and body.metadata == {"k": "v"}
    assert body.output_text == "Hi! How can I help?"
    assert body.usage is not None and body.usage.input_tokens > 0
    assert body.usage.total_tokens == body.usage.input_tokens + body.usage.output_tokens
    response = client.responses.create(model="m", input="hello")
    assert response.output_text == "Hi! How can I help?"
    # The server tools offered by default are not listed: the client named none.
    assert [item.type for item in response.output] == ["message"]


def test_reasoning_is_a_reasoning_item_and_effort_turns_thinking_on(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="sky", output="Rayleigh scattering.\n</think>\n\nBlue."))
    response = client.responses.create(
        model="m", input="what colour is the sky", reasoning={"effort": "low"}
    )
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == []
    assert reasoning.content is not None
    assert reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text.strip() == "Rayleigh scattering."
    assert response.output_text.strip() == "Blue."
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0
    sent = sim.sim.requests[-1].body
    assert sent["chat_template_kwargs"]["enable_thinking"] is True
    assert sent["custom_params"] == {"thinking_budget": 1024}


def test_instructions_sampling_and_limits_reach_the_runtime(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="pirate", output="Arr."))
    response = client.responses.create(
        model="m",
        instructions="Talk like a pirate.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "pirate hi"}]}],
        temperature=0.2,
        top_p=0.5,
        max_output_tokens=64,
        text={
            "format": {
                "type": "json_schema",
                "name": "reply",
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
            }
        },
    )
    assert response.instructions == "Talk like a pirate."
    sent = sim.sim.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert sent["messages"][1]["role"] == "user"
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.5
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "reply"


def test_an_answer_cut_by_max_output_tokens_is_incomplete(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 200))
    response = client.responses.create(model="m", input="a long story", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_an_input_image_goes_through_the_image_intake(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="picture", output="A red rectangle."))
    uri = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    response = client.responses.create(
        model="m",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is in the picture"},
                    {"type": "input_image", "image_url": uri, "detail": "auto"},
                ],
            }
        ],
    )
    assert response.output_text == "A red rectangle."
    parts = sim.sim.requests[-1].body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]


def test_bad_input_is_a_400_naming_the_field(cascade: Cascade) -> None:
    bad_part = {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}
    cases = [
        (bad_part, "input[0].content[0].type"),
        ({"input": [{"type": "nonsense"}]}, "input[0].type"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]},
            "input[0].tool_call_id",
        ),
        ({"input": "hi", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": ""}, "input"),
    ]
    for body, param in cases:
        response = post(cascade, {"model": "m", **body})
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param, body


# ----------------------------------------------------------------------------- 2: state


def test_a_chain_of_three_sends_only_new_input_and_the_runtime_sees_it_all(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="one", output="First."))
    sim.sim.add_rule(Rule(match="two", output="Second."))
    sim.sim.add_rule(Rule(match="three", output="Third."))
    first = client.responses.create(model="m", input="one", instructions="Be brief.")
    prompt_one = sim.sim.requests[-1].body["messages"]
    second = client.responses.create(model="m", input="two", previous_response_id=first.id)
    prompt_two = sim.sim.requests[-1].body["messages"]
    third = client.responses.create(model="m", input="three", previous_response_id=second.id)
    assert third.output_text == "Third." and third.previous_response_id == second.id
    sent = sim.sim.requests[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "one"),
        ("assistant", "First."),
        ("user", "two"),
        ("assistant", "Second."),
        ("user", "three"),
    ]  # the first response's instructions are not inherited
    assert prompt_one[0] == {"role": "system", "content": "Be brief."}
    assert prompt_two[: len(sent) - 2] == sent[:-2]  # byte-stable prefix


def test_retrieve_input_items_and_delete(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Done."))
    created = client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    )
    again = client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == "Done."
    items = client.responses.input_items.list(created.id)
    texts = [item.content[0].text for item in items.data]  # type: ignore[union-attr]
    assert texts == ["c", "b", "a"]  # newest first
    page = client.responses.input_items.list(created.id, order="asc", limit=2)
    assert [item.content[0].text for item in page.data] == ["a", "b"]  # type: ignore[union-attr]
    assert page.has_more is True and page.last_id == page.data[-1].id
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing_and_cannot_be_continued(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    created = client.responses.create(model="m", input="x", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model="m", input="y", previous_response_id=created.id)
    assert raised.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_another_key_sees_a_response_as_unknown(sim: SimHandle, redis_server: RedisServer) -> None:
    sim.sim.add_rule(Rule(output="Mine."))
    app = create_app(cascade_settings(sim, redis_server, api_keys="k1,k2"))
    with serve_in_thread(app) as url:
        one = OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        two = OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0)
        created = one.responses.create(model="m", input="hi")
        assert one.responses.retrieve(created.id).id == created.id
        with pytest.raises(openai.NotFoundError):
            two.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.input_items.list(created.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.create(model="m", input="more", previous_response_id=created.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.delete(created.id)
        assert one.responses.retrieve(created.id).id == created.id


def test_two_continuations_of_one_response_branch(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    root = client.responses.create(model="m", input="root")
    left = client.responses.create(model="m", input="left", previous_response_id=root.id)
    right = client.responses.create(model="m", input="right", previous_response_id=root.id)
    assert left.id != right.id
    client.responses.create(model="m", input="after", previous_response_id=left.id)
    users = [m["content"] for m in sim.sim.requests[-1].body["messages"] if m["role"] == "user"]
    assert users == ["root", "left", "after"]


def test_the_store_ttl_is_the_setting(cascade: Cascade, client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    created = client.responses.create(model="m", input="x")
    store = cascade.app.state.services.responses
    ttl_ms = store.settings.response_ttl_ms
    assert ttl_ms == 30 * 86_400_000
    assert cascade.settings.redis_url is not None
    with redis.Redis.from_url(cascade.settings.redis_url) as sync:
        assert ttl_ms - 60_000 < sync.pttl(store.key(created.id)) <= ttl_ms


# ----------------------------------------------------------------------------- 3: streaming


def stream_events(cascade: Cascade, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = post(cascade, {"model": "m", "stream": True, **body})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    for event in events:
        EVENTS.validate_python(event)
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0
    return events


def test_a_streamed_answer_is_the_responses_event_sequence(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="sky", output="Rayleigh.\n</think>\n\nBlue sky."))
    events = stream_events(cascade, {"input": "sky colour", "reasoning": {"effort": "low"}})
    kinds = [e["type"] for e in events]
    compact = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert compact == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == text and text.strip() == "Blue sky."
    assert [item.type for item in final.output] == ["reasoning", "message"]
    stored = httpx.get(f"{cascade.url}/v1/responses/{final.id}", timeout=10).json()
    assert stored["output"] == events[-1]["response"]["output"]


def test_the_sdk_streams_a_response(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="hello", output="Hi there, friend."))
    deltas, final = [], None
    with client.responses.create(model="m", input="hello", stream=True) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
    assert final is not None and final.output_text == "".join(deltas) == "Hi there, friend."


def test_a_streamed_cut_answer_ends_incomplete(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 200))
    events = stream_events(cascade, {"input": "long", "max_output_tokens": 16})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_stream_while_the_runtime_is_down_is_a_503(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(
        sim, redis_server, runtime_url=f"http://127.0.0.1:{free_port()}", runtime_max_retries=0
    )
    with serve_in_thread(create_app(settings)) as url:
        body = {"model": "m", "input": "hi", "stream": True}
        response = httpx.post(url + "/v1/responses", json=body, timeout=30)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "runtime_unavailable"


def test_a_streamed_server_tool_step_is_an_mcp_call(cascade: Cascade, sim: SimHandle) -> None:
    register_tools(cascade, Recorder())
    sim.sim.add_rule(Rule(output=call("lookup", key="a"), times=1))
    sim.sim.add_rule(Rule(output="It is value-of-a."))
    events = stream_events(cascade, {"input": "look a up", "server_tools": ["lookup"]})
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert [t.name for t in final.output[0].tools] == ["lookup"]  # type: ignore[union-attr]
    mcp = final.output[1]
    assert mcp.type == "mcp_call" and mcp.server_label == "cascade" and mcp.name == "lookup"
    assert json.loads(mcp.arguments) == {"key": "a"} and mcp.output == "value-of-a"
    kinds = [e["type"] for e in events]
    start = kinds.index("response.mcp_call_arguments.delta") - 1
    assert kinds[start : start + 6] == [
        "response.output_item.added",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.done",
    ]
    assert events[start + 2]["arguments"] == mcp.arguments


def test_a_server_tool_step_is_an_mcp_call_unstreamed(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    register_tools(cascade, Recorder())
    sim.sim.add_rule(Rule(output=call("lookup", key="b"), times=1))
    sim.sim.add_rule(Rule(output="It is value-of-b."))
    response = client.responses.create(
        model="m", input="look b up", extra_body={"server_tools": ["lookup"]}
    )
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output[1].output == "value-of-b"  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- 4: function tools


@pytest.fixture
def weather_rules(sim: SimHandle) -> Iterator[None]:
    sim.sim.add_rule(Rule(match="weather", output=WEATHER_CALL, times=1))
    sim.sim.add_rule(Rule(output="It is sunny in Paris."))
    yield


@pytest.mark.usefixtures("weather_rules")
def test_a_function_tool_round_trip(client: OpenAI, sim: SimHandle) -> None:
    first = client.responses.create(
        model="m",
        input="weather in Paris?",
        tools=[WEATHER_FUNCTION],  # type: ignore[list-item]
    )
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    fc = calls[0]
    assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Paris", "days": 3}
    assert fc.id is not None and fc.id.startswith("fc_") and fc.status == "completed"
    second = client.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}],
        tools=[WEATHER_FUNCTION],  # type: ignore[list-item]
    )
    assert second.output_text == "It is sunny in Paris."
    sent = sim.sim.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == fc.call_id
    assert sent[2]["tool_call_id"] == fc.call_id and sent[2]["content"] == "sunny"


@pytest.mark.usefixtures("weather_rules")
def test_a_streamed_function_tool_round_trip(cascade: Cascade, sim: SimHandle) -> None:
    events = stream_events(cascade, {"input": "weather in Paris?", "tools": [WEATHER_FUNCTION]})
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert len(done) == 1 and json.loads(done[0]["arguments"]) == {"city": "Paris", "days": 3}
    assert kinds.index("response.function_call_arguments.done") < kinds.index("response.completed")
    final = Response.model_validate(events[-1]["response"])
    fc = next(item for item in final.output if item.type == "function_call")
    assert fc.status == "completed" and fc.name == "get_weather"  # type: ignore[union-attr]
    answer = stream_events(
        cascade,
        {
            "previous_response_id": final.id,
            "input": [{"type": "function_call_output", "call_id": fc.call_id, "output": "sunny"}],  # type: ignore[union-attr]
            "tools": [WEATHER_FUNCTION],
        },
    )
    assert Response.model_validate(answer[-1]["response"]).output_text == "It is sunny in Paris."


def test_a_function_call_output_answering_no_call_is_a_400(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    first = client.responses.create(model="m", input="hi")
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model="m",
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_x", "output": "?"}],
        )
    assert raised.value.body["param"] == "input[0].tool_call_id"  # type: ignore[index]


def test_a_client_that_leaves_mid_stream_aborts_the_runtime_request(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 400, tpot=0.01))
    body = {"model": "m", "input": "a long answer please", "stream": True}
    with httpx.stream("POST", cascade.url + "/v1/responses", json=body, timeout=30) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ") and "output_text.delta" in line
            if seen >= 5:
                break  # leaves the with-block: the connection closes mid-stream
    rid = sim.sim.requests[-1].rid
    deadline = time.monotonic() + 5
    while rid not in sim.sim.aborted_rids:
        assert time.monotonic() < deadline, "the runtime request was not aborted"
        time.sleep(0.05)


def test_a_runtime_failure_after_output_is_a_response_failed_event(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(
        Rule(match="cut", output="word " * 50, fault=Fault(kind="cut_stream", after_chunks=3))
    )
    response = post(cascade, {"model": "m", "input": "cut me", "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    for event in events:
        EVENTS.validate_python(event)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "failed"
    assert "Traceback" not in response.text
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
