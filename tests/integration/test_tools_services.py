"""web_search and the Home Assistant tools, through the registry, against local servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from app.media.config import MediaSettings
from tests.redis_server import free_port
from tests.tool_servers import HomeAssistantServer, SearxngServer
from tools import ToolSettings, build_registry
from tools.registry import ConfirmationRequired, ToolContext, ToolPolicy, ToolRegistry

TOKEN = "ha-secret-token-7f3a9c"


def ctx(call_id: str = "call_1", confirmed: set[str] | None = None) -> ToolContext:
    return ToolContext(owner="o", call_id=call_id, confirmed_call_ids=confirmed or set())


def registry_for(**settings: Any) -> ToolRegistry:
    return build_registry(ToolSettings(**settings), media_settings=MediaSettings())


@pytest.fixture
def searxng() -> Iterator[SearxngServer]:
    with SearxngServer() as server:
        assert isinstance(server, SearxngServer)
        yield server


@pytest.fixture
def ha() -> Iterator[HomeAssistantServer]:
    with HomeAssistantServer(TOKEN) as server:
        assert isinstance(server, HomeAssistantServer)
        yield server


# --- web_search ---


def test_web_search_absent_without_url() -> None:
    assert "web_search" not in registry_for()
    assert "web_search" in registry_for(searxng_url="http://127.0.0.1:9")


async def test_web_search_returns_top_results(searxng: SearxngServer) -> None:
    registry = registry_for(searxng_url=searxng.url + "/")
    args = json.dumps({"query": "rust async", "max_results": 3, "language": "en"})
    result = await registry.execute("web_search", args, ctx(), ToolPolicy())
    assert not result.is_error, result.text
    assert result.text == "\n".join(
        f"{n}. Result {n} about rust async\n   https://example.org/{n}\n"
        f"   Snippet {n}: all about rust async."
        for n in (1, 2, 3)
    )
    (request,) = searxng.requests
    assert request.path == "/search"
    assert request.query == {"q": ["rust async"], "format": ["json"], "language": ["en"]}


async def test_web_search_default_count_and_answers(searxng: SearxngServer) -> None:
    registry = registry_for(searxng_url=searxng.url, web_search_max_results=2)
    result = await registry.execute("web_search", '{"query": "x"}', ctx(), ToolPolicy())
    assert result.text.count("https://example.org/") == 2


async def test_web_search_no_results() -> None:
    with SearxngServer(results=lambda q: []) as server:
        registry = registry_for(searxng_url=server.url)
        result = await registry.execute("web_search", '{"query": "zzz"}', ctx(), ToolPolicy())
    assert not result.is_error
    assert result.text == "No results for 'zzz'."


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "the search service had an internal error (HTTP 500)"),
        (403, "enable the json format"),
        (429, "the search service rejected the request (HTTP 429)"),
    ],
)
async def test_web_search_http_errors(searxng: SearxngServer, status: int, message: str) -> None:
    searxng.fail_status = status
    registry = registry_for(searxng_url=searxng.url)
    result = await registry.execute("web_search", '{"query": "x"}', ctx(), ToolPolicy())
    assert result.is_error
    assert message in result.text


async def test_web_search_server_down() -> None:
    registry = registry_for(searxng_url=f"http://127.0.0.1:{free_port()}")
    result = await registry.execute("web_search", '{"query": "x"}', ctx(), ToolPolicy())
    assert result.is_error
    assert result.text == "Tool 'web_search' failed: the search service cannot be reached"


async def test_web_search_slow_server_times_out(searxng: SearxngServer) -> None:
    searxng.delay = 5
    registry = registry_for(searxng_url=searxng.url, tool_timeout=0.6)
    result = await registry.execute("web_search", '{"query": "x"}', ctx(), ToolPolicy())
    assert result.is_error
    assert result.text == "Tool 'web_search' failed: the search service did not answer in time"


async def test_web_search_invalid_arguments(searxng: SearxngServer) -> None:
    registry = registry_for(searxng_url=searxng.url)
    result = await registry.execute(
        "web_search", '{"query": "", "max_results": 99}', ctx(), ToolPolicy()
    )
    assert result.is_error
    assert "query: String should have at least 1 character" in result.text
    assert "max_results: Input should be less than or equal to 20" in result.text
    assert searxng.requests == []


# --- Home Assistant ---


def ha_registry(server: HomeAssistantServer, **extra: Any) -> ToolRegistry:
    settings: dict[str, Any] = {
        "home_assistant_url": server.url,
        "home_assistant_token": TOKEN,
        "home_assistant_allow": ["light.*", "switch.turn_on"],
    }
    settings.update(extra)
    return registry_for(**settings)


def test_home_assistant_tools_present_only_when_configured() -> None:
    assert "home_assistant_state" not in registry_for()
    url_only = registry_for(home_assistant_url="http://127.0.0.1:9")
    assert "home_assistant_state" not in url_only
    read_only = registry_for(home_assistant_url="http://127.0.0.1:9", home_assistant_token="t")
    assert "home_assistant_state" in read_only
    assert "home_assistant_call" not in read_only  # nothing allowed: no call tool at all
    both = registry_for(
        home_assistant_url="http://127.0.0.1:9",
        home_assistant_token="t",
        home_assistant_allow=["light.*"],
    )
    call = both.get("home_assistant_call")
    assert call is not None and call.side_effect == "write" and call.requires_confirmation
    assert "Services you may call: light.*." in call.description


async def test_ha_list_states(ha: HomeAssistantServer) -> None:
    result = await ha_registry(ha).execute("home_assistant_state", "{}", ctx(), ToolPolicy())
    assert result.text == (
        "5 entities:\n"
        "light.kitchen: off (Kitchen light)\n"
        "light.porch: on (Porch light)\n"
        "lock.front_door: locked (Front door)\n"
        "sensor.outside_temperature: 21.5 °C (Outside temperature)\n"
        "switch.heater: off (Heater)"
    )
    assert ha.requests[0].path == "/api/states"
    assert ha.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_ha_list_states_by_domain_and_read_patterns(ha: HomeAssistantServer) -> None:
    registry = ha_registry(ha, home_assistant_read=["light.*", "sensor.*"])
    lights = await registry.execute(
        "home_assistant_state", '{"domain": "light"}', ctx(), ToolPolicy()
    )
    assert (
        lights.text
        == "2 entities:\nlight.kitchen: off (Kitchen light)\nlight.porch: on (Porch light)"
    )
    locks = await registry.execute(
        "home_assistant_state", '{"domain": "lock"}', ctx(), ToolPolicy()
    )
    assert locks.text == "No entities in domain lock."
    hidden = await registry.execute(
        "home_assistant_state", '{"entity_id": "lock.front_door"}', ctx(), ToolPolicy()
    )
    assert hidden.is_error and "reading lock.front_door is not allowed" in hidden.text


async def test_ha_one_entity(ha: HomeAssistantServer) -> None:
    result = await ha_registry(ha).execute(
        "home_assistant_state", '{"entity_id": "light.porch"}', ctx(), ToolPolicy()
    )
    assert result.text == (
        "light.porch: on (Porch light)\n"
        "last changed: 2025-01-01T12:00:00+00:00\n"
        'attributes: {"brightness": 180, "friendly_name": "Porch light"}'
    )
    assert ha.requests[0].path == "/api/states/light.porch"
    missing = await ha_registry(ha).execute(
        "home_assistant_state", '{"entity_id": "light.attic"}', ctx(), ToolPolicy()
    )
    assert missing.is_error and "Home Assistant has no entity light.attic" in missing.text


async def test_ha_entity_id_is_checked_before_it_reaches_a_url(ha: HomeAssistantServer) -> None:
    result = await ha_registry(ha).execute(
        "home_assistant_state", '{"entity_id": "../config/core"}', ctx(), ToolPolicy()
    )
    assert result.is_error and "entity_id: String should match pattern" in result.text
    bad_service = await ha_registry(ha).execute(
        "home_assistant_call",
        '{"domain": "light", "service": "turn_on/../../x"}',
        ctx(),
        ToolPolicy(allow_write=True, confirm_write=False),
    )
    assert bad_service.is_error and "service: String should match pattern" in bad_service.text
    assert ha.requests == []


ALLOW_ALL_WRITES = ToolPolicy(allow_write=True, confirm_write=False)


async def test_ha_call_service_needs_confirmation_then_runs(ha: HomeAssistantServer) -> None:
    registry = ha_registry(ha)
    args = json.dumps(
        {
            "domain": "light",
            "service": "turn_on",
            "entity_id": "light.kitchen",
            "data": {"brightness": 99},
        }
    )
    with pytest.raises(ConfirmationRequired) as info:
        await registry.execute("home_assistant_call", args, ctx("call_9"), ALLOW_ALL_WRITES)
    assert info.value.arguments["entity_id"] == "light.kitchen"
    assert ha.requests == []
    result = await registry.execute(
        "home_assistant_call", args, ctx("call_9", {"call_9"}), ALLOW_ALL_WRITES
    )
    assert result.text == "Called light.turn_on. Changed: light.kitchen: on (Kitchen light)."
    (request,) = ha.requests
    assert request.method == "POST" and request.path == "/api/services/light/turn_on"
    assert json.loads(request.body) == {"brightness": 99, "entity_id": ["light.kitchen"]}
    assert ha.states["light.kitchen"]["state"] == "on"


async def test_ha_call_without_confirmation_when_operator_says_so(ha: HomeAssistantServer) -> None:
    registry = ha_registry(ha, home_assistant_confirm=False)
    args = '{"domain": "switch", "service": "turn_on", "entity_id": ["switch.heater"]}'
    result = await registry.execute("home_assistant_call", args, ctx(), ALLOW_ALL_WRITES)
    assert result.text == "Called switch.turn_on. Changed: switch.heater: on (Heater)."


async def test_ha_call_refused_when_not_allow_listed(ha: HomeAssistantServer) -> None:
    registry = ha_registry(ha, home_assistant_confirm=False)
    for domain, service in (("lock", "unlock"), ("switch", "turn_off")):
        args = json.dumps({"domain": domain, "service": service, "entity_id": ["lock.front_door"]})
        result = await registry.execute("home_assistant_call", args, ctx(), ALLOW_ALL_WRITES)
        assert result.is_error
        assert f"calling {domain}.{service} is not allowed" in result.text
    assert ha.requests == []
    assert ha.states["lock.front_door"]["state"] == "locked"


async def test_ha_call_refused_by_policy(ha: HomeAssistantServer) -> None:
    args = '{"domain": "light", "service": "turn_on", "entity_id": ["light.kitchen"]}'
    result = await ha_registry(ha).execute("home_assistant_call", args, ctx(), ToolPolicy())
    assert result.is_error and "not allowed" in result.text
    assert ha.requests == []


async def test_ha_unknown_service(ha: HomeAssistantServer) -> None:
    registry = ha_registry(ha, home_assistant_allow=["light.*"], home_assistant_confirm=False)
    args = '{"domain": "light", "service": "explode"}'
    result = await registry.execute("home_assistant_call", args, ctx(), ALLOW_ALL_WRITES)
    assert result.is_error
    assert "rejected the call to light.explode" in result.text


async def test_ha_wrong_token(ha: HomeAssistantServer) -> None:
    registry = registry_for(home_assistant_url=ha.url, home_assistant_token="wrong-token")
    result = await registry.execute("home_assistant_state", "{}", ctx(), ToolPolicy())
    assert result.is_error
    assert "Home Assistant refused the request (HTTP 401)" in result.text
    assert "wrong-token" not in result.text


@pytest.mark.parametrize("status", [500, 502])
async def test_ha_server_errors(ha: HomeAssistantServer, status: int) -> None:
    ha.fail_status = status
    result = await ha_registry(ha).execute("home_assistant_state", "{}", ctx(), ToolPolicy())
    assert result.is_error
    assert f"Home Assistant had an internal error (HTTP {status})" in result.text


async def test_ha_down_and_slow(ha: HomeAssistantServer) -> None:
    down = registry_for(
        home_assistant_url=f"http://127.0.0.1:{free_port()}", home_assistant_token=TOKEN
    )
    result = await down.execute("home_assistant_state", "{}", ctx(), ToolPolicy())
    assert result.text == "Tool 'home_assistant_state' failed: Home Assistant cannot be reached"
    ha.delay = 5
    slow = ha_registry(ha, tool_timeout=0.6)
    result = await slow.execute("home_assistant_state", "{}", ctx(), ToolPolicy())
    assert (
        result.text == "Tool 'home_assistant_state' failed: Home Assistant did not answer in time"
    )


async def test_ha_token_never_in_output_or_logs(ha: HomeAssistantServer) -> None:
    registry = ha_registry(ha, home_assistant_confirm=False)
    calls = [
        ("home_assistant_state", "{}"),
        ("home_assistant_state", '{"entity_id": "light.kitchen"}'),
        ("home_assistant_state", '{"entity_id": "light.none"}'),
        (
            "home_assistant_call",
            '{"domain": "light", "service": "toggle", "entity_id": ["light.porch"]}',
        ),
        ("home_assistant_call", '{"domain": "lock", "service": "unlock"}'),
    ]
    outputs = []
    with capture_logs() as logs:
        for name, args in calls:
            outputs.append((await registry.execute(name, args, ctx(), ALLOW_ALL_WRITES)).text)
        ha.fail_status = 500
        outputs.append(
            (await registry.execute("home_assistant_state", "{}", ctx(), ToolPolicy())).text
        )
        ha.fail_status = None
        ha.delay = 5
        slow = ha_registry(ha, tool_timeout=0.5)
        outputs.append((await slow.execute("home_assistant_state", "{}", ctx(), ToolPolicy())).text)
    assert len(outputs) == 7
    everything = json.dumps(outputs) + repr(logs)
    assert TOKEN not in everything
    for name in ("home_assistant_state", "home_assistant_call"):
        tool = registry.get(name)
        assert tool is not None
        assert TOKEN not in json.dumps(tool.openai_schema())
