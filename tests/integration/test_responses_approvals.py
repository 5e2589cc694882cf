"""Approvals in `/v1/responses`: a write call that needs confirmation is an
`mcp_approval_request`; an `mcp_approval_response` with `previous_response_id` runs it once
(approve) or tells the model it was declined (deny). Driven by the openai SDK against the
simulator, with write tools allowed by the operator and each needing confirmation."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response

from app.agent.responses_approvals import DECLINED
from tests.integration.conftest import Cascade
from tests.integration.test_agent_tools import (
    Recorder,
    call,
    register_tools,
    two_keys_with_confirmed_writes,
    writable,
)
from tests.integration.test_responses_api import EVENTS, sse_events
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

__all__ = ["writable"]  # the fixture, used by name

DOOR: dict[str, Any] = {"server_tools": ["open_door"]}


def approve(request_id: str, approve: bool = True, reason: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "mcp_approval_response",
        "approval_request_id": request_id,
        "approve": approve,
    }
    if reason is not None:
        item["reason"] = reason
    return item


def paused(client: OpenAI, sim: SimHandle, door: str = "garage") -> Response:
    sim.sim.add_rule(Rule(output=call("open_door", door=door), times=1))
    return client.responses.create(model="m", input=f"open the {door}", extra_body=DOOR)


def requests_of(response: Response) -> list[Any]:
    return [item for item in response.output if item.type == "mcp_approval_request"]


def test_a_paused_write_call_is_an_approval_request_and_approving_runs_it_once(
    writable: Cascade, sim: SimHandle
) -> None:
    rec = Recorder()
    register_tools(writable, rec)
    client = writable.client()
    first = paused(client, sim)
    assert first.status == "completed"
    assert [item.type for item in first.output if item.type != "mcp_list_tools"] == [
        "mcp_approval_request"
    ]
    request = requests_of(first)[0]
    assert request.id.startswith("pause_") and request.server_label == "cascade"
    assert request.name == "open_door" and json.loads(request.arguments) == {"door": "garage"}
    assert rec.doors_opened == []

    sim.sim.add_rule(Rule(output="The garage is open.", times=1))
    second = client.responses.create(
        model="m",
        input=[approve(request.id)],  # type: ignore[list-item]
        previous_response_id=first.id,
        extra_body=DOOR,
    )
    assert rec.doors_opened == ["garage"]
    kinds = [item.type for item in second.output if item.type != "mcp_list_tools"]
    assert kinds == ["mcp_call", "message"]
    ran = next(item for item in second.output if item.type == "mcp_call")
    assert ran.approval_request_id == request.id and ran.output == "garage opened"
    assert second.output_text == "The garage is open."
    sent = sim.sim.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2]["content"] == "garage opened"

    # Answered: neither the same approval again, nor on another branch of the paused response.
    for previous in (first.id, second.id):
        with pytest.raises(openai.BadRequestError) as again:
            client.responses.create(
                model="m",
                input=[approve(request.id)],  # type: ignore[list-item]
                previous_response_id=previous,
                extra_body=DOOR,
            )
        assert again.value.body["param"] == "input[0].approval_request_id"  # type: ignore[index]
    assert rec.doors_opened == ["garage"]


def test_a_denied_call_is_not_run_and_the_model_is_told(writable: Cascade, sim: SimHandle) -> None:
    rec = Recorder()
    register_tools(writable, rec)
    client = writable.client()
    first = paused(client, sim, "front")
    request = requests_of(first)[0]
    sim.sim.add_rule(Rule(output="Understood, the door stays shut.", times=1))
    second = client.responses.create(
        model="m",
        input=[approve(request.id, False, "not at night")],  # type: ignore[list-item]
        previous_response_id=first.id,
        extra_body=DOOR,
    )
    assert rec.doors_opened == []
    assert second.output_text == "Understood, the door stays shut."
    sent = sim.sim.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[2]["tool_call_id"] == sent[1]["tool_calls"][0]["id"]
    assert sent[2]["content"] == f"{DECLINED} Reason: not at night"
    # The decline is part of the chain: the next response sees it, and cannot approve now.
    sim.sim.add_rule(Rule(output="Fine."))
    third = client.responses.create(
        model="m", input="ok", previous_response_id=second.id, extra_body=DOOR
    )
    assert third.output_text == "Fine."
    assert [m["role"] for m in sim.sim.requests[-1].body["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="m",
            input=[approve(request.id)],  # type: ignore[list-item]
            previous_response_id=third.id,
            extra_body=DOOR,
        )
    assert rec.doors_opened == []


def test_approval_ids_are_only_those_the_owners_stored_chain_issued(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with two_keys_with_confirmed_writes(sim, redis_server, monkeypatch) as (url, rec):
        a = OpenAI(base_url=url + "/v1", api_key="key-a", max_retries=0)
        b = OpenAI(base_url=url + "/v1", api_key="key-b", max_retries=0)
        first = paused(a, sim)
        request = requests_of(first)[0]
        call_id = a.responses.retrieve(first.id)  # stored as it was answered
        assert requests_of(call_id)[0].id == request.id

        def refused(client: OpenAI, body: dict[str, Any]) -> openai.APIStatusError:
            with pytest.raises(openai.APIStatusError) as caught:
                client.responses.create(model="m", extra_body=DOOR, **body)
            return caught.value

        stranger = refused(b, {"input": [approve(request.id)], "previous_response_id": first.id})
        assert stranger.status_code == 404
        made_up = refused(
            a, {"input": [approve("pause_" + "0" * 24)], "previous_response_id": first.id}
        )
        assert made_up.status_code == 400
        assert made_up.body["param"] == "input[0].approval_request_id"  # type: ignore[index]
        no_chain = refused(a, {"input": [approve(request.id)]})
        assert no_chain.status_code == 400
        assert "previous response" in no_chain.message
        mixed = refused(
            a,
            {
                "input": [approve(request.id), {"role": "user", "content": "and hurry"}],
                "previous_response_id": first.id,
            },
        )
        assert mixed.status_code == 400 and mixed.body["param"] == "input[1]"  # type: ignore[index]
        assert rec.doors_opened == []
        # None of the refusals used the approval up.
        sim.sim.add_rule(Rule(output="Open."))
        done = a.responses.create(
            model="m",
            input=[approve(request.id)],  # type: ignore[list-item]
            previous_response_id=first.id,
            extra_body=DOOR,
        )
        assert done.output_text == "Open." and rec.doors_opened == ["garage"]


def test_a_streamed_pause_sends_the_approval_request_item(
    writable: Cascade, sim: SimHandle
) -> None:
    rec = Recorder()
    register_tools(writable, rec)
    sim.sim.add_rule(Rule(output=call("open_door", door="shed"), times=1))
    raw = httpx.post(
        writable.url + "/v1/responses",
        json={"model": "m", "input": "open the shed", "stream": True, **DOOR},
        timeout=30,
    )
    assert raw.status_code == 200
    events = sse_events(raw.text)
    for event in events:
        EVENTS.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.output_item.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.completed",
    ]
    added, done = events[6]["item"], events[7]["item"]
    assert added == done and done["type"] == "mcp_approval_request"
    assert done["name"] == "open_door" and json.loads(done["arguments"]) == {"door": "shed"}
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_approval_request"]
    assert rec.doors_opened == []
    # Approved in a stream: the call runs once, as an mcp_call item with its arguments.
    sim.sim.add_rule(Rule(output="Shed open."))
    resumed = httpx.post(
        writable.url + "/v1/responses",
        json={
            "model": "m",
            "stream": True,
            "previous_response_id": final.id,
            "input": [approve(done["id"])],
            **DOOR,
        },
        timeout=30,
    )
    assert resumed.status_code == 200, resumed.text
    later = sse_events(resumed.text)
    for event in later:
        EVENTS.validate_python(event)
    assert rec.doors_opened == ["shed"]
    last = Response.model_validate(later[-1]["response"])
    ran = next(item for item in last.output if item.type == "mcp_call")
    assert ran.approval_request_id == done["id"] and ran.output == "shed opened"
    assert json.loads(ran.arguments) == {"door": "shed"}
    assert last.output_text == "Shed open."
