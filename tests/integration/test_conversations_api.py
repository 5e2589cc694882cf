"""`/v1/conversations` and `POST /v1/responses` with `conversation`, driven by the official openai
SDK against the simulator and Redis: one conversation is one session, seen by every door."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.conversations import (
    Conversation,
    ConversationDeletedResource,
    ConversationItem,
    ConversationItemList,
)
from openai.types.responses import Response
from pydantic import TypeAdapter

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.integration.test_chat_api import WEATHER_CALL
from tests.integration.test_responses_api import WEATHER_FUNCTION, sse_events
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Fault, Rule
from tests.sglang_sim.testing import SimHandle

pytestmark = pytest.mark.integration

ITEM: TypeAdapter[Any] = TypeAdapter(ConversationItem)


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def texts(item: Any) -> str:
    return "".join(part.text for part in item.content)


def runtime_texts(sim: SimHandle) -> list[tuple[str, str]]:
    """The (role, text) pairs of the last runtime request."""
    return [(m["role"], m.get("content") or "") for m in sim.sim.requests[-1].body["messages"]]


# ----------------------------------------------------------------------------- the conversation


def test_create_retrieve_update_delete_parse_as_sdk_types(client: OpenAI, cascade: Cascade) -> None:
    created = client.conversations.create(
        items=[user("hello there")], metadata={"topic": "greetings"}
    )
    assert isinstance(created, Conversation)
    assert created.object == "conversation" and created.id.startswith("conv_")
    assert created.metadata == {"topic": "greetings"} and created.created_at > 0

    fetched = client.conversations.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()

    updated = client.conversations.update(created.id, metadata={"topic": "weather", "n": "2"})
    assert updated.metadata == {"topic": "weather", "n": "2"}
    assert client.conversations.retrieve(created.id).metadata == {"topic": "weather", "n": "2"}
    cleared = client.conversations.update(created.id, metadata=None)
    assert cleared.metadata == {}

    deleted = client.conversations.delete(created.id)
    assert isinstance(deleted, ConversationDeletedResource)
    assert deleted.id == created.id and deleted.deleted is True
    assert deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError) as raised:
        client.conversations.retrieve(created.id)
    assert raised.value.body["code"] == "conversation_not_found"  # type: ignore[index]
    assert httpx.get(f"{cascade.url}/v1/sessions/{created.id}").status_code == 404


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
    ],
    ids=["17 pairs", "long key", "long value"],
)
def test_metadata_past_openais_limits_is_a_400(client: OpenAI, metadata: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.create(metadata=metadata)
    assert raised.value.body["param"] == "metadata"  # type: ignore[index]
    conversation = client.conversations.create(metadata={"ok": "yes"})
    with pytest.raises(openai.BadRequestError):
        client.conversations.update(conversation.id, metadata=metadata)
    assert client.conversations.retrieve(conversation.id).metadata == {"ok": "yes"}
    at_the_limit = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    assert client.conversations.update(conversation.id, metadata=at_the_limit).metadata == (
        at_the_limit
    )


def test_unknown_and_malformed_conversations_are_404(client: OpenAI) -> None:
    for conversation_id in ["conv_" + "0" * 24, "conv_nope", "sess_" + "1" * 24]:
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conversation_id)
        with pytest.raises(openai.NotFoundError):
            client.conversations.items.list(conversation_id)
        with pytest.raises(openai.NotFoundError):
            client.conversations.items.create(conversation_id, items=[user("x")])
        with pytest.raises(openai.NotFoundError):
            client.conversations.update(conversation_id, metadata={"a": "b"})
        with pytest.raises(openai.NotFoundError):
            client.conversations.delete(conversation_id)
        with pytest.raises(openai.NotFoundError) as raised:
            client.responses.create(model="m", input="hi", conversation=conversation_id)
        assert raised.value.body["param"] == "conversation"  # type: ignore[index]


# ----------------------------------------------------------------------------- items


def test_items_list_in_both_orders_with_pagination_and_stable_ids(client: OpenAI) -> None:
    conversation = client.conversations.create(items=[user(f"m{i}") for i in range(5)])
    page = client.conversations.items.list(conversation.id, order="asc", limit=2)
    assert [texts(item) for item in page.data] == ["m0", "m1"] and page.has_more is True
    assert page.last_id == page.data[-1].id
    for item in page.data:
        ITEM.validate_python(item.model_dump())
    rest = client.conversations.items.list(conversation.id, order="asc", after=page.data[-1].id)
    assert [texts(item) for item in rest.data] == ["m2", "m3", "m4"] and rest.has_more is False

    newest_first = client.conversations.items.list(conversation.id)  # OpenAI's default: desc
    assert [texts(item) for item in newest_first.data] == ["m4", "m3", "m2", "m1", "m0"]
    every = [item.id for item in client.conversations.items.list(conversation.id, limit=1)]
    assert every == [item.id for item in newest_first.data]  # auto-paginated, same ids
    assert len(set(every)) == 5

    one = client.conversations.items.retrieve(every[2], conversation_id=conversation.id)
    assert one.type == "message" and texts(one) == "m2" and one.id == every[2]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve("msg_unknown", conversation_id=conversation.id)
    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.list(conversation.id, after="msg_unknown")
    assert raised.value.body["param"] == "after"  # type: ignore[index]


def test_items_create_appends_and_answers_with_the_new_items(client: OpenAI) -> None:
    conversation = client.conversations.create(items=[user("first")])
    before = [item.id for item in client.conversations.items.list(conversation.id)]
    added = client.conversations.items.create(
        conversation.id,
        items=[
            user("second"),
            {"type": "message", "role": "assistant", "content": "an answer"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
        include=["message.output_text.logprobs"],
    )
    assert isinstance(added, ConversationItemList) and added.has_more is False
    assert [item.type for item in added.data] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
    ]
    assert added.first_id == added.data[0].id and added.last_id == added.data[-1].id
    listed = client.conversations.items.list(conversation.id, order="asc")
    assert [item.id for item in listed.data] == [*before, *(item.id for item in added.data)]
    call_item, output_item = listed.data[3], listed.data[4]
    assert call_item.type == "function_call" and call_item.call_id == "c1"
    assert output_item.type == "function_call_output" and output_item.output == "42"
    assert listed.data[2].type == "message" and listed.data[2].role == "assistant"
    assert listed.data[2].content[0].type == "output_text"

    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.create(
            conversation.id,
            items=[{"type": "function_call_output", "call_id": "zz", "output": "x"}],
        )
    assert raised.value.body["param"].startswith("items[0]")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.conversations.items.create(conversation.id, items=[user(str(i)) for i in range(21)])
    assert len(client.conversations.items.list(conversation.id).data) == 5


def test_deleting_items_and_tool_exchanges(client: OpenAI) -> None:
    conversation = client.conversations.create(
        items=[
            user("keep me"),
            user("drop me"),
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            user("last"),
        ]
    )
    items = client.conversations.items.list(conversation.id, order="asc").data
    answer = client.conversations.items.delete(items[1].id, conversation_id=conversation.id)
    assert isinstance(answer, Conversation) and answer.id == conversation.id
    left = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.id for item in left] == [items[0].id, *(item.id for item in items[2:])]

    with pytest.raises(openai.BadRequestError) as raised:
        client.conversations.items.delete(items[3].id, conversation_id=conversation.id)
    assert raised.value.body["param"] == "item_id"  # type: ignore[index]
    client.conversations.items.delete(items[2].id, conversation_id=conversation.id)  # the call
    left = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.id for item in left] == [items[0].id, items[4].id]  # its output went along
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(items[1].id, conversation_id=conversation.id)


def test_deleting_part_of_an_assistant_message_keeps_the_other_ids(
    client: OpenAI, cascade: Cascade
) -> None:
    conversation = client.conversations.create(
        items=[
            user("why?"),
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Think."}]},
            {"type": "message", "role": "assistant", "content": "Because."},
        ]
    )
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.type for item in items] == ["message", "reasoning", "message"]
    client.conversations.items.delete(items[1].id, conversation_id=conversation.id)
    left = client.conversations.items.list(conversation.id, order="asc").data
    assert [item.id for item in left] == [items[0].id, items[2].id]
    assert texts(left[1]) == "Because."
    session = httpx.get(f"{cascade.url}/v1/sessions/{conversation.id}").json()
    assert "reasoning_content" not in session["messages"][1]
    assert session["messages"][1]["content"] == "Because."


# ----------------------------------------------------------------------------- responses


def test_a_two_turn_conversation_through_responses(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="name", output="Nice to meet you, Ada."))
    sim.sim.add_rule(Rule(match="who am I", output="You are Ada."))
    conversation = client.conversations.create(metadata={"user": "ada"})

    first = client.responses.create(model="m", input="my name is Ada", conversation=conversation.id)
    assert isinstance(first, Response) and first.conversation is not None
    assert first.conversation.id == conversation.id
    assert first.output_text == "Nice to meet you, Ada."

    stream = client.responses.create(
        model="m", input="who am I?", conversation={"id": conversation.id}, stream=True
    )
    events = list(stream)
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.conversation is not None
    assert done.response.conversation.id == conversation.id
    assert done.response.output_text == "You are Ada."
    assert runtime_texts(sim)[-3:] == [
        ("user", "my name is Ada"),
        ("assistant", "Nice to meet you, Ada."),
        ("user", "who am I?"),
    ]

    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [(item.type, getattr(item, "role", None), texts(item)) for item in items] == [
        ("message", "user", "my name is Ada"),
        ("message", "assistant", "Nice to meet you, Ada."),
        ("message", "user", "who am I?"),
        ("message", "assistant", "You are Ada."),
    ]
    assert client.conversations.retrieve(conversation.id).metadata == {"user": "ada"}


def test_a_conversation_is_a_session_for_chat_and_sessions_doors(
    client: OpenAI, cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="colour", output="Blue."))
    sim.sim.add_rule(Rule(match="again", output="Still blue."))
    sim.sim.add_rule(Rule(match="third", output="Blue, thrice."))
    conversation = client.conversations.create()
    client.responses.create(model="m", input="favourite colour?", conversation=conversation.id)

    session = httpx.get(f"{cascade.url}/v1/sessions/{conversation.id}").json()
    assert session["id"] == conversation.id and session["object"] == "session"
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "favourite colour?"),
        ("assistant", "Blue."),
    ]

    chat = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "again?"}],
        extra_body={"session_id": conversation.id},
    )
    assert chat.choices[0].message.content == "Still blue."
    assert runtime_texts(sim)[-3:] == [
        ("user", "favourite colour?"),
        ("assistant", "Blue."),
        ("user", "again?"),
    ]

    client.responses.create(model="m", input="third time", conversation=conversation.id)
    assert [text for _, text in runtime_texts(sim)][-4:] == [
        "Blue.",
        "again?",
        "Still blue.",
        "third time",
    ]
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [texts(item) for item in items] == [
        "favourite colour?",
        "Blue.",
        "again?",
        "Still blue.",
        "third time",
        "Blue, thrice.",
    ]


def test_conversation_with_previous_response_id_is_a_400(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    conversation = client.conversations.create()
    earlier = client.responses.create(model="m", input="hi")
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(
            model="m", input="more", conversation=conversation.id, previous_response_id=earlier.id
        )
    assert raised.value.body["param"] == "conversation"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):  # checked before the response is looked up
        client.responses.create(
            model="m", input="more", conversation=conversation.id, previous_response_id="resp_x"
        )
    assert client.conversations.items.list(conversation.id).data == []


def test_a_failed_response_appends_nothing_and_frees_the_conversation(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(
        Rule(match="cut", output="word " * 50, fault=Fault(kind="cut_stream", after_chunks=3))
    )
    sim.sim.add_rule(Rule(output="Fine."))
    conversation = client.conversations.create(items=[user("before")])
    body = {"model": "m", "input": "cut me", "stream": True, "conversation": conversation.id}
    failed = httpx.post(cascade.url + "/v1/responses", json=body, timeout=30)
    assert sse_events(failed.text)[-1]["type"] == "response.failed"
    items = client.conversations.items.list(conversation.id).data
    assert [texts(item) for item in items] == ["before"]

    # a 400 while the request is read lets the conversation go as well
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="m",
            input=[{"type": "function_call_output", "call_id": "nope", "output": "x"}],
            conversation=conversation.id,
        )
    ok = client.responses.create(model="m", input="and now", conversation=conversation.id)
    assert ok.output_text == "Fine."
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [texts(item) for item in items] == ["before", "and now", "Fine."]


def test_tool_steps_are_function_call_and_mcp_call_items(
    cascade: Cascade, client: OpenAI, sim: SimHandle
) -> None:
    register_tools(cascade, Recorder())
    sim.sim.add_rule(Rule(match="weather", output=WEATHER_CALL, times=1))
    sim.sim.add_rule(Rule(match="look", output=call("lookup", key="a"), times=1))
    sim.sim.add_rule(Rule(output="Done."))
    conversation = client.conversations.create()
    asked = client.responses.create(
        model="m", input="weather in Paris?", tools=[WEATHER_FUNCTION], conversation=conversation.id
    )
    function_call = next(item for item in asked.output if item.type == "function_call")
    client.responses.create(
        model="m",
        input=[
            {"type": "function_call_output", "call_id": function_call.call_id, "output": "sunny"}
        ],
        tools=[WEATHER_FUNCTION],
        conversation=conversation.id,
    )
    client.responses.create(
        model="m",
        input="look a up",
        conversation=conversation.id,
        extra_body={"server_tools": ["lookup"]},
    )
    items = client.conversations.items.list(conversation.id, order="asc").data
    for item in items:
        ITEM.validate_python(item.model_dump())
    assert [item.type for item in items] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "mcp_call",
        "message",
    ]
    assert items[2].call_id == function_call.call_id  # type: ignore[union-attr]
    assert items[3].output == "sunny"  # type: ignore[union-attr]
    mcp = items[6]
    assert mcp.type == "mcp_call" and mcp.server_label == "cascade" and mcp.name == "lookup"
    assert json.loads(mcp.arguments) == {"key": "a"} and mcp.output == "value-of-a"


def test_another_key_sees_a_conversation_as_unknown(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(output="Mine."))
    app = create_app(cascade_settings(sim, redis_server, api_keys="k1,k2"))
    with (
        serve_in_thread(app) as url,
        OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0) as one,
        OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0) as two,
    ):
        conversation = one.conversations.create(items=[user("secret")], metadata={"a": "b"})
        item_id = one.conversations.items.list(conversation.id).data[0].id
        with pytest.raises(openai.NotFoundError):
            two.conversations.retrieve(conversation.id)
        with pytest.raises(openai.NotFoundError):
            two.conversations.update(conversation.id, metadata={"x": "y"})
        with pytest.raises(openai.NotFoundError):
            two.conversations.items.list(conversation.id)
        with pytest.raises(openai.NotFoundError):
            two.conversations.items.create(conversation.id, items=[user("intrude")])
        with pytest.raises(openai.NotFoundError):
            two.conversations.items.retrieve(item_id, conversation_id=conversation.id)
        with pytest.raises(openai.NotFoundError):
            two.conversations.items.delete(item_id, conversation_id=conversation.id)
        with pytest.raises(openai.NotFoundError):
            two.responses.create(model="m", input="hi", conversation=conversation.id)
        with pytest.raises(openai.NotFoundError):
            two.conversations.delete(conversation.id)
        assert one.conversations.retrieve(conversation.id).metadata == {"a": "b"}
        items = one.conversations.items.list(conversation.id).data
        assert [texts(item) for item in items] == ["secret"]


def test_items_added_while_a_response_runs_wait_for_it(client: OpenAI, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="slow", output="Done.", ttft=0.8))
    conversation = client.conversations.create()
    answers: list[Response] = []
    running = threading.Thread(
        target=lambda: answers.append(
            client.responses.create(model="m", input="slow one", conversation=conversation.id)
        )
    )
    running.start()
    deadline = time.monotonic() + 5
    while not sim.sim.requests:  # the response holds the conversation once it reaches the runtime
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.conversations.items.create(conversation.id, items=[user("added meanwhile")])
    running.join(timeout=10)
    assert answers and answers[0].output_text == "Done."
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [texts(item) for item in items] == ["slow one", "Done.", "added meanwhile"]
