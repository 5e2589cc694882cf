"""Built-in tools and images end to end: openai SDK → cascade → simulator, with local servers.

Each built-in tool is called by the (simulated) model through the agent loop; the tool talks to
a local server written in the tests (Home Assistant, SearXNG, a web page) or to Redis, and the
model sees its result in the next prompt.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from PIL import Image

from app.api.app import create_app
from app.media.resize import smart_resize
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import call
from tests.integration.test_chat_api import extra
from tests.media_server import MediaServer, Route, encode
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle
from tests.tool_servers import HomeAssistantServer, PageServer, SearxngServer, html_page

HA_TOKEN = "ha-secret-token"


@pytest.fixture
def servers() -> Iterator[dict[str, Any]]:
    ha, searx = HomeAssistantServer(HA_TOKEN), SearxngServer()
    pages = PageServer({"/article": html_page("<h1>Otters</h1><p>Otters hold hands.</p>")})
    media = MediaServer()
    for server in (ha, searx, pages):
        server.start()
    media.start()
    try:
        yield {"ha": ha, "searx": searx, "pages": pages, "media": media}
    finally:
        for server in (ha, searx, pages):
            server.stop()
        media.stop()


@pytest.fixture
def full(
    sim: SimHandle,
    redis_server: RedisServer,
    servers: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cascade]:
    """cascade with every built-in tool configured against the local servers."""
    monkeypatch.setenv("CASCADE_SEARXNG_URL", servers["searx"].url)
    monkeypatch.setenv("CASCADE_HOME_ASSISTANT_URL", servers["ha"].url)
    monkeypatch.setenv("CASCADE_HOME_ASSISTANT_TOKEN", HA_TOKEN)
    monkeypatch.setenv("CASCADE_HOME_ASSISTANT_ALLOW", "light.*")
    monkeypatch.setenv("CASCADE_TOOLS_ALLOW_WRITE", "*")
    monkeypatch.setenv("CASCADE_TOOLS_CONFIRM_WRITE", "")
    monkeypatch.setenv("CASCADE_HOME_ASSISTANT_CONFIRM", "false")
    monkeypatch.setenv("CASCADE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    monkeypatch.setenv("CASCADE_TIMEZONE", "Europe/Paris")
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def ask(client: OpenAI, text: str, **body: Any) -> Any:
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], extra_body=body or None
    )


def tool_outputs(sim: SimHandle) -> list[str]:
    return [m["content"] for m in sim.sim.requests[-1].body["messages"] if m["role"] == "tool"]


def test_tools_endpoint_lists_the_configured_tools(full: Cascade) -> None:
    data = httpx.get(full.url + "/v1/tools").json()["data"]
    names = {t["function"]["name"] for t in data}
    assert {
        "calculator",
        "clock",
        "fetch_url",
        "image_zoom",
        "memory_recall",
        "memory_remember",
        "memory_forget",
        "web_search",
        "home_assistant_state",
        "home_assistant_call",
    } <= names
    for entry in data:
        assert entry["function"]["parameters"]["type"] == "object"
        assert entry["side_effect"] in ("read", "write")


def test_calculator_and_clock(full: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(
        Rule(
            output=call("calculator", expression="(2**10 - 24) / 8")
            + "\n"
            + call("clock", operation="weekday", date="2026-11-27"),
            times=1,
        )
    )
    sim.sim.add_rule(Rule(output="125, on a Friday."))
    with full.client() as client:
        response = ask(client, "compute and tell me the weekday")
    assert response.choices[0].message.content == "125, on a Friday."
    calc, clock = tool_outputs(sim)
    assert "125" in calc
    assert "Friday" in clock


def test_calculator_errors_reach_the_model(full: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output=call("calculator", expression="1/0"), times=1))
    sim.sim.add_rule(Rule(output="Cannot divide by zero."))
    with full.client() as client:
        ask(client, "divide")
    assert "zero" in tool_outputs(sim)[0].lower()


def test_web_search_and_fetch_url(full: Cascade, sim: SimHandle, servers: dict[str, Any]) -> None:
    page = servers["pages"].url + "/article"
    sim.sim.add_rule(
        Rule(
            output=call("web_search", query="otters") + "\n" + call("fetch_url", url=page), times=1
        )
    )
    sim.sim.add_rule(Rule(output="Otters hold hands."))
    with full.client() as client:
        response = ask(client, "tell me about otters")
    assert response.choices[0].message.content == "Otters hold hands."
    search, fetched = tool_outputs(sim)
    assert "otters" in search.lower()
    assert "Otters hold hands." in fetched
    assert "<p>" not in fetched


def test_fetch_url_refuses_private_addresses_by_default(
    client: OpenAI, sim: SimHandle, servers: dict[str, Any]
) -> None:
    sim.sim.add_rule(Rule(output=call("fetch_url", url=servers["pages"].url + "/article"), times=1))
    sim.sim.add_rule(Rule(output="I could not read it."))
    ask(client, "read the page", server_tools=["fetch_url"])
    assert "private" in tool_outputs(sim)[0] or "loopback" in tool_outputs(sim)[0]
    assert servers["pages"].requests == []


def test_home_assistant_read_and_call(
    full: Cascade, sim: SimHandle, servers: dict[str, Any]
) -> None:
    sim.sim.add_rule(Rule(output=call("home_assistant_state", entity_id="light.kitchen"), times=1))
    sim.sim.add_rule(
        Rule(
            output=call(
                "home_assistant_call",
                domain="light",
                service="turn_on",
                entity_id='["light.kitchen"]',
            ),
            times=1,
        )
    )
    sim.sim.add_rule(Rule(output="The kitchen light is on."))
    with full.client() as client:
        response = ask(client, "turn on the kitchen light")
    assert response.choices[0].message.content == "The kitchen light is on."
    assert servers["ha"].states["light.kitchen"]["state"] == "on"
    outputs = tool_outputs(sim)
    assert "light.kitchen" in outputs[0] and "off" in outputs[0]
    assert all(HA_TOKEN not in text for text in outputs)


def test_home_assistant_outside_the_allow_list_is_refused(
    full: Cascade, sim: SimHandle, servers: dict[str, Any]
) -> None:
    sim.sim.add_rule(
        Rule(
            output=call(
                "home_assistant_call",
                domain="lock",
                service="unlock",
                entity_id='["lock.front_door"]',
            ),
            times=1,
        )
    )
    sim.sim.add_rule(Rule(output="I may not unlock doors."))
    with full.client() as client:
        ask(client, "unlock the front door")
    assert servers["ha"].states["lock.front_door"]["state"] == "locked"
    assert "allow" in tool_outputs(sim)[0].lower()


def test_home_assistant_down_is_a_clean_tool_error(
    full: Cascade, sim: SimHandle, servers: dict[str, Any]
) -> None:
    servers["ha"].fail_status = 500
    sim.sim.add_rule(Rule(output=call("home_assistant_state", entity_id="light.porch"), times=1))
    sim.sim.add_rule(Rule(output="Home Assistant is not answering."))
    with full.client() as client:
        response = ask(client, "is the porch light on?")
    assert response.choices[0].message.content == "Home Assistant is not answering."
    assert "500" in tool_outputs(sim)[0] or "error" in tool_outputs(sim)[0].lower()


def test_memory_remember_then_recall_in_another_session(full: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(
        Rule(match="remember", output=call("memory_remember", text="likes green tea"), times=1)
    )
    sim.sim.add_rule(Rule(match="remember", output="Noted."))
    sim.sim.add_rule(Rule(match="what do I like", output=call("memory_recall"), times=1))
    sim.sim.add_rule(Rule(match="what do I like", output="Green tea."))
    with full.client() as client:
        ask(client, "remember that I like green tea", store=True)
        response = ask(client, "what do I like?", store=True)
    assert response.choices[0].message.content == "Green tea."
    assert "green tea" in tool_outputs(sim)[0]


def photo(width: int, height: int) -> Image.Image:
    """A gradient image of any size, fast (no per-pixel Python)."""
    across = Image.linear_gradient("L").rotate(90).resize((width, height))
    down = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (across, down, Image.new("L", (width, height), 128)))


def data_uri(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


def image_parts(body: dict[str, Any]) -> list[str]:
    urls = []
    for message in body["messages"]:
        if isinstance(message.get("content"), list):
            urls += [
                p["image_url"]["url"] for p in message["content"] if p.get("type") == "image_url"
            ]
    return urls


def decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_image_zoom_hands_back_the_exact_region(full: Cascade, sim: SimHandle) -> None:
    source = photo(640, 480)
    sim.sim.add_rule(
        Rule(output=call("image_zoom", box="[64, 32, 320, 288]", units="pixels"), times=1)
    )
    sim.sim.add_rule(Rule(output="The crop shows a gradient."))
    with full.client() as client:
        client.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "zoom in"},
                        {
                            "type": "image_url",
                            "image_url": {"url": data_uri(encode(source, "PNG"))},
                        },
                    ],
                }
            ],
        )
    urls = image_parts(sim.sim.requests[-1].body)
    assert len(urls) == 2  # the original and the crop
    crop = decode(urls[1]).convert("RGB")
    expected = source.crop((64, 32, 320, 288)).convert("RGB")
    assert crop.size == expected.size
    assert crop.tobytes() == expected.tobytes()


def test_multi_turn_session_with_images_is_byte_stable(client: OpenAI, sim: SimHandle) -> None:
    first_image = encode(photo(320, 256), "PNG")
    second_image = encode(photo(256, 320), "PNG")
    sim.sim.add_rule(Rule(match="two pictures", output="Two gradients."))
    sim.sim.add_rule(Rule(match="which is wider", output="The first."))
    first = client.chat.completions.create(
        model="m",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "two pictures"},
                    {"type": "image_url", "image_url": {"url": data_uri(first_image)}},
                    {"type": "image_url", "image_url": {"url": data_uri(second_image)}},
                ],
            }
        ],
        extra_body={"store": True},
    )
    session_id = extra(first, "session_id")
    sent_first = image_parts(sim.sim.requests[-1].body)
    assert len(sent_first) == 2  # every image reaches the model
    assert [decode(u).size for u in sent_first] == [(320, 256), (256, 320)]
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "which is wider?"}],
        extra_body={"session_id": session_id},
    )
    assert image_parts(sim.sim.requests[-1].body) == sent_first  # identical bytes
    assert sim.sim.requests[-1].cached_tokens > 0
    stored = httpx.get(f"{client.base_url}sessions/{session_id}").json()["messages"][0]
    kinds = [p["type"] for p in stored["content"]]
    assert kinds == ["text", "image_ref", "image_ref"]  # references, not copies
    assert "data:" not in json.dumps(stored)


def test_large_photo_reaches_the_runtime_at_the_smart_resize_size(
    full: Cascade, sim: SimHandle, servers: dict[str, Any]
) -> None:
    media: MediaServer = servers["media"]
    media.add(
        "/photo.jpg",
        Route(body=encode(photo(4000, 3000), "JPEG", quality=90), content_type="image/jpeg"),
    )
    url = f"http://127.0.0.1:{media.port}/photo.jpg"
    sim.sim.add_rule(Rule(output="A photo."))
    with full.client() as client:
        for _ in range(2):
            client.chat.completions.create(
                model="m",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "describe"},
                            {"type": "image_url", "image_url": {"url": url}},
                        ],
                    }
                ],
            )
    settings = full.app.state.services.media_settings
    height, width = smart_resize(
        3000,
        4000,
        factor=32,
        min_pixels=settings.image_min_pixels,
        max_pixels=settings.image_max_pixels,
    )
    (sent,) = image_parts(sim.sim.requests[-1].body)
    assert decode(sent).size == (width, height)
    assert width * height <= settings.image_max_pixels
    assert media.hits["/photo.jpg"] == 1  # the same image twice is fetched once


def test_bad_images_are_clear_400s(client: OpenAI) -> None:
    truncated = encode(photo(64, 64), "JPEG")[:200]
    with pytest.raises(Exception) as info:
        client.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_uri(truncated, "jpeg")}}
                    ],
                }
            ],
        )
    assert getattr(info.value, "status_code", None) == 400


@pytest.fixture
def with_mcp(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cascade]:
    """cascade with the test MCP server (stdio) configured; discovered at start."""
    root = str(Path(__file__).resolve().parents[2])
    server = {
        "name": "fixture",
        "command": sys.executable,
        "args": ["-m", "tests.mcp_server_fixture"],
        "cwd": root,
        "read_tools": ["add", "pid", "die"],
    }
    monkeypatch.setenv("CASCADE_MCP_SERVERS", json.dumps([server]))
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def test_mcp_tool_called_through_the_agent_loop_and_its_death_handled(
    with_mcp: Cascade, sim: SimHandle
) -> None:
    listed = {t["function"]["name"] for t in httpx.get(with_mcp.url + "/v1/tools").json()["data"]}
    assert {"fixture.add", "fixture.echo"} <= listed
    sim.sim.add_rule(Rule(match="sum", output=call("fixture.add", a=2, b=40), times=1))
    sim.sim.add_rule(Rule(match="sum", output="42"))
    with with_mcp.client() as client:
        response = ask(client, "sum of 2 and 40")
        assert response.choices[0].message.content == "42"
        assert tool_outputs(sim) == ["42"]

        # The server dies mid-conversation: its tool fails cleanly, the service goes on.
        sim.sim.add_rule(Rule(match="crash", output=call("fixture.die"), times=1))
        sim.sim.add_rule(Rule(match="crash", output="The tool server stopped."))
        response = ask(client, "crash it")
        assert response.choices[0].message.content == "The tool server stopped."
        sim.sim.add_rule(Rule(match="retry", output=call("fixture.add", a=1, b=1), times=1))
        sim.sim.add_rule(Rule(match="retry", output="It is unavailable."))
        response = ask(client, "retry the tool")
        assert response.choices[0].message.content == "It is unavailable."
        assert "not available" in tool_outputs(sim)[0]
    assert httpx.get(with_mcp.url + "/healthz").status_code == 200
