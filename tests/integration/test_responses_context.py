"""`/v1/responses` request features against the simulator: `truncation` (a chain that outgrows
the runtime's context window), `item_reference` inputs, and the echoed tool settings."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import Cascade
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

NO_TOOLS: dict[str, Any] = {"server_tools": []}


def turn_text(label: str) -> str:
    # Two-letter words: one simulator token each, three bytes each in the estimate.
    return label + " " + "ab " * 200


def grow_chain(client: OpenAI, turns: int) -> str:
    """A chain of `turns` responses of about 200 tokens each; the last response id."""
    previous: str | None = None
    for n in range(turns):
        response = client.responses.create(
            model="m",
            input=turn_text(f"turn{n}"),
            previous_response_id=previous,
            max_output_tokens=50,
            extra_body=NO_TOOLS,
        )
        previous = response.id
    assert previous is not None
    return previous


def test_truncation_disabled_refuses_a_too_long_prompt_as_context_length_exceeded(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.update_config(context_length=800)
    sim.sim.add_rule(Rule(output="Noted."))
    previous = grow_chain(client, 3)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="m",
            input=turn_text("turn3"),
            previous_response_id=previous,
            max_output_tokens=50,
            extra_body=NO_TOOLS,
        )
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded"
    assert body["type"] == "invalid_request_error"
    assert "ab ab" not in body["message"]  # nothing of the runtime's text or the input


def test_truncation_auto_drops_the_oldest_turns_and_keeps_the_instructions(
    client: OpenAI, cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.update_config(context_length=800)
    sim.sim.add_rule(Rule(output="Noted."))
    previous = grow_chain(client, 3)
    raw = httpx.post(
        cascade.url + "/v1/responses",
        json={
            "model": "m",
            "input": turn_text("turn3"),
            "previous_response_id": previous,
            "instructions": "Be brief.",
            "truncation": "auto",
            "max_output_tokens": 50,
            **NO_TOOLS,
        },
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["truncation"] == "auto"
    assert body["cascade"]["truncation"] == {"dropped_turns": 1, "dropped_messages": 2}
    sent = sim.sim.requests[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    users = [m["content"].split()[0] for m in sent if m["role"] == "user"]
    assert users == ["turn1", "turn2", "turn3"]
    # The stored chain keeps every turn: a later response can still see them all.
    stored = httpx.get(f"{cascade.url}/v1/responses/{body['id']}", timeout=10).json()
    assert stored["truncation"] == "auto"


def test_truncation_auto_with_an_input_too_long_alone_is_a_400(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.update_config(context_length=100)
    response = httpx.post(
        cascade.url + "/v1/responses",
        json={"model": "m", "input": turn_text("alone"), "truncation": "auto", **NO_TOOLS},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert sim.sim.requests == []  # refused before the runtime was asked


def test_truncation_defaults_to_disabled_and_tool_settings_are_echoed(client: OpenAI) -> None:
    plain = client.responses.create(model="m", input="hi")
    assert plain.truncation == "disabled"
    assert plain.parallel_tool_calls is True and plain.tool_choice == "auto"
    function = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
    named = client.responses.create(
        model="m",
        input="hi",
        tools=[function],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    assert named.parallel_tool_calls is False
    assert named.tool_choice.type == "function"  # type: ignore[union-attr]
    assert named.tool_choice.name == "get_weather"  # type: ignore[union-attr]
    required = client.responses.create(
        model="m",
        input="hi",
        tools=[function],
        tool_choice="none",  # type: ignore[list-item]
    )
    assert required.tool_choice == "none"


def test_item_references_resolve_against_the_whole_stored_chain(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="alpha", output="Alpha noted.", times=1))
    sim.sim.add_rule(Rule(output="Done."))
    first = client.responses.create(model="m", input="remember alpha", extra_body=NO_TOOLS)
    said = next(item for item in first.output if item.type == "message")
    asked = client.responses.input_items.list(first.id).data[0]
    second = client.responses.create(
        model="m", input="next", previous_response_id=first.id, extra_body=NO_TOOLS
    )
    third = client.responses.create(
        model="m",
        input=[
            {"type": "item_reference", "id": asked.id},
            {"type": "item_reference", "id": said.id},
            {"role": "user", "content": "again"},
        ],
        previous_response_id=second.id,
        extra_body=NO_TOOLS,
    )
    assert third.output_text == "Done."
    sent = [(m["role"], m["content"]) for m in sim.sim.requests[-1].body["messages"]]
    assert sent[-3:] == [
        ("user", "remember alpha"),
        ("assistant", "Alpha noted."),
        ("user", "again"),
    ]
    listed = client.responses.input_items.list(third.id, order="asc").data
    assert [item.id for item in listed][:2] == [asked.id, said.id]  # stored resolved
    with pytest.raises(openai.BadRequestError) as unknown:
        client.responses.create(
            model="m",
            input=[{"type": "item_reference", "id": "msg_unknown"}],
            previous_response_id=third.id,
            extra_body=NO_TOOLS,
        )
    assert unknown.value.body["param"] == "input[0].id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as unchained:
        client.responses.create(
            model="m", input=[{"type": "item_reference", "id": said.id}], extra_body=NO_TOOLS
        )
    assert unchained.value.body["param"] == "input[0].id"  # type: ignore[index]


def test_server_tools_are_listed_once_per_chain(client: OpenAI, sim: SimHandle) -> None:
    first = client.responses.create(
        model="m", input="hi", extra_body={"server_tools": ["calculator"]}
    )
    listing = first.output[0]
    assert listing.type == "mcp_list_tools" and listing.server_label == "cascade"
    assert [(t.name, bool(t.description)) for t in listing.tools] == [("calculator", True)]
    assert listing.tools[0].input_schema["type"] == "object"  # type: ignore[index]
    same = client.responses.create(
        model="m",
        input="again",
        previous_response_id=first.id,
        extra_body={"server_tools": ["calculator"]},
    )
    assert "mcp_list_tools" not in [item.type for item in same.output]
    changed = client.responses.create(
        model="m",
        input="more",
        previous_response_id=same.id,
        extra_body={"server_tools": ["clock"]},
    )
    assert changed.output[0].type == "mcp_list_tools"
    assert [t.name for t in changed.output[0].tools] == ["clock"]  # type: ignore[union-attr]
    plain = client.responses.create(model="m", input="none", extra_body=NO_TOOLS)
    assert [item.type for item in plain.output] == ["message"]
