"""The tool offer is the smallest that serves the turn, and byte-identical from turn to turn.

`image_zoom` only with an image in the conversation; tools whose backend is missing never (the
memory tools without Redis; web_search and Home Assistant without their configuration); a
request that declares its own tools gets server tools only when `server_tools` names them,
unless the operator says otherwise (`CASCADE_SERVER_TOOLS_WITH_CLIENT_TOOLS`)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
from openai import OpenAI
from PIL import Image

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_chat_api import WEATHER_TOOL, extra
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
DEFAULT_OFFER = ["calculator", "clock", "fetch_url", "memory_forget", "memory_recall"]
DEFAULT_OFFER += ["memory_remember"]


def png_data_uri() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 120, 200)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def offered(request: Any) -> list[str]:
    return [t["function"]["name"] for t in request.body.get("tools") or []]


def test_a_one_line_question_is_offered_no_image_tool(client: OpenAI, sim: SimHandle) -> None:
    client.chat.completions.create(model="m", messages=QUESTION)  # type: ignore[arg-type]
    (request,) = sim.sim.requests
    assert offered(request) == DEFAULT_OFFER


def test_an_image_brings_image_zoom_for_the_rest_of_the_session(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="A blue rectangle."))
    picture = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": png_data_uri()}},
    ]
    first = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": picture}],  # type: ignore[list-item]
        extra_body={"store": True},
    )
    session_id = extra(first, "session_id")
    for text in ("and the colour?", "thanks"):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": text}],
            extra_body={"session_id": session_id},
        )
    assert "image_zoom" in offered(sim.sim.requests[0])
    # The same conversation gets the same offer, byte for byte: the prefix stays cacheable.
    assert len({json.dumps(r.body["tools"]) for r in sim.sim.requests}) == 1


def test_the_offer_of_a_session_is_byte_identical_across_turns(
    client: OpenAI, sim: SimHandle
) -> None:
    first = client.chat.completions.create(
        model="m",
        messages=QUESTION,  # type: ignore[arg-type]
        extra_body={"store": True},
    )
    for text in ("and Germany?", "and Spain?"):
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": text}],
            extra_body={"session_id": extra(first, "session_id")},
        )
    tools = {json.dumps(r.body["tools"]) for r in sim.sim.requests}
    assert len(tools) == 1
    assert [t["function"]["name"] for t in json.loads(tools.pop())] == DEFAULT_OFFER
    # Each turn's prompt starts with the previous turn's system turn, tools and all.
    prompts = [r.prompt for r in sim.sim.requests]
    system_turn = prompts[0][: prompts[0].index("<|im_end|>")]
    assert all(p.startswith(system_turn) for p in prompts)


def test_a_request_with_its_own_tools_gets_only_the_server_tools_it_names(
    client: OpenAI, sim: SimHandle
) -> None:
    tools: Any = [WEATHER_TOOL]
    client.chat.completions.create(model="m", messages=QUESTION, tools=tools)  # type: ignore[arg-type]
    client.chat.completions.create(
        model="m",
        messages=QUESTION,  # type: ignore[arg-type]
        tools=tools,
        extra_body={"server_tools": ["clock"]},
    )
    own, named = sim.sim.requests
    assert offered(own) == ["get_weather"]
    assert offered(named) == ["clock", "get_weather"]


def test_the_operator_may_offer_server_tools_beside_client_tools(
    generous: Cascade, sim: SimHandle
) -> None:
    with generous.client() as client:
        client.chat.completions.create(
            model="m",
            messages=QUESTION,  # type: ignore[arg-type]
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
        )
    assert offered(sim.sim.requests[0]) == [*DEFAULT_OFFER, "get_weather"]


def test_without_redis_the_memory_tools_are_not_offered(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(sim, redis_server, redis_url=None)
    with serve_in_thread(create_app(settings)) as url:
        response = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", "messages": QUESTION, "server_tools": ["memory_recall", "clock"]},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    assert offered(sim.sim.requests[0]) == ["clock"]
