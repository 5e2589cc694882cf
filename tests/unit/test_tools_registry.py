"""The tool registry: declaration, canonical schemas, validation, limits and policy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tools import ToolSettings, build_registry
from tools.registry import (
    TRUNCATION_MARKER,
    ConfirmationRequired,
    EmptyArgs,
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    ToolPolicy,
    ToolRegistry,
    ToolResult,
    canonical_schema,
    tool,
)


class Point(ToolArgs):
    x: int = Field(description="x coordinate")
    y: int = 0


class Shape(ToolArgs):
    kind: Literal["circle", "square"] = Field(description="which shape")
    center: Point
    label: str | None = Field(default=None, description="optional label")
    size: float = Field(default=1.0, gt=0)


@tool(name="draw")
async def draw(args: Shape, ctx: ToolContext) -> str:
    """Draw a shape.

    Second paragraph
    wrapped over lines."""
    return f"{args.kind} at {args.center.x},{args.center.y} size {args.size}"


@tool(name="sleepy", timeout=0.2)
async def sleepy(args: EmptyArgs, ctx: ToolContext) -> str:
    """Sleep for a long time."""
    await asyncio.sleep(30)
    return "never"


@tool(name="chatty", max_output_chars=100)
async def chatty(args: EmptyArgs, ctx: ToolContext) -> ToolResult:
    """Say a lot."""
    return ToolResult(text="abcdefghij" * 50, images=[{"type": "image_ref", "sha256": "0" * 64}])


@tool(name="broken")
async def broken(args: EmptyArgs, ctx: ToolContext) -> str:
    """Fail unexpectedly."""
    raise KeyError("secret-internal-detail")


@tool(name="polite_failure")
async def polite_failure(args: EmptyArgs, ctx: ToolContext) -> str:
    """Fail on purpose."""
    raise ToolError("the widget is out of stock")


@tool(name="inner_timeout")
async def inner_timeout(args: EmptyArgs, ctx: ToolContext) -> str:
    """Time out inside."""
    await asyncio.wait_for(asyncio.sleep(10), 0.01)
    return "never"


RUNS: list[str] = []


@tool(name="switch_on", side_effect="write")
async def switch_on(args: EmptyArgs, ctx: ToolContext) -> str:
    """Switch the thing on."""
    RUNS.append(ctx.call_id)
    return "switched on"


def make_registry() -> ToolRegistry:
    return ToolRegistry([draw, sleepy, chatty, broken, polite_failure, inner_timeout, switch_on])


def ctx(call_id: str = "call_1", confirmed: set[str] | None = None) -> ToolContext:
    return ToolContext(owner="o", call_id=call_id, confirmed_call_ids=confirmed or set())


READ_ONLY = ToolPolicy(allow_write=False)


# --- declaration ---


def test_decorator_builds_a_tool_from_the_function() -> None:
    assert isinstance(draw, Tool)
    assert draw.name == "draw"
    assert draw.description == "Draw a shape.\n\nSecond paragraph wrapped over lines."
    assert draw.args_model is Shape
    assert draw.side_effect == "read"
    assert switch_on.side_effect == "write"
    assert sleepy.timeout == 0.2


class Loose(BaseModel):
    a: int


def test_decorator_rejects_bad_declarations() -> None:
    with pytest.raises(TypeError, match="forbid extras"):

        @tool()
        async def loose(args: Loose, ctx: ToolContext) -> str:
            """Doc."""
            return ""

    with pytest.raises(TypeError, match="async"):

        @tool()  # type: ignore[arg-type]
        def sync(args: EmptyArgs, ctx: ToolContext) -> str:
            """Doc."""
            return ""

    with pytest.raises(TypeError, match="description"):

        @tool()
        async def undocumented(args: EmptyArgs, ctx: ToolContext) -> str:
            return ""

    class Local(ToolArgs):
        a: int

    with pytest.raises(TypeError, match="cannot be resolved"):

        @tool()
        async def local(args: Local, ctx: ToolContext) -> str:
            """Doc."""
            return ""

    @tool(args_model=Local)
    async def explicit(args: Local, ctx: ToolContext) -> str:
        """Doc."""
        return ""

    assert explicit.args_model is Local

    with pytest.raises(ValueError, match="invalid tool name"):

        @tool(name="has space")
        async def spaced(args: EmptyArgs, ctx: ToolContext) -> str:
            """Doc."""
            return ""


def test_duplicate_registration_is_an_error() -> None:
    registry = ToolRegistry([draw])
    with pytest.raises(ValueError, match="already registered"):
        registry.register(draw)
    registry.unregister("draw")
    assert registry.get("draw") is None
    registry.unregister("draw")  # absent: no error


# --- schemas ---


def test_schema_is_strict_inlined_and_ordered() -> None:
    schema = draw.openai_schema()
    assert list(schema) == ["type", "function"]
    assert list(schema["function"]) == ["name", "description", "parameters"]
    params = schema["function"]["parameters"]
    assert params == {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "description": "which shape", "enum": ["circle", "square"]},
            "center": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "description": "x coordinate"},
                    "y": {"type": "integer", "default": 0},
                },
                "required": ["x"],
                "additionalProperties": False,
            },
            "label": {"type": "string", "description": "optional label"},
            "size": {"type": "number", "default": 1.0, "exclusiveMinimum": 0},
        },
        "required": ["kind", "center"],
        "additionalProperties": False,
    }
    # Declared property order is kept; keys inside a property follow the fixed order.
    assert list(params["properties"]) == ["kind", "center", "label", "size"]
    assert list(params["properties"]["kind"]) == ["type", "description", "enum"]
    text = json.dumps(params)
    assert "$ref" not in text and "$defs" not in text and '"title"' not in text


def test_property_named_title_is_kept() -> None:
    class Doc(ToolArgs):
        title: str

    schema = canonical_schema(Doc.model_json_schema())
    assert schema["properties"] == {"title": {"type": "string"}}


def test_recursive_models_are_rejected() -> None:
    class Node(ToolArgs):
        child: Node | None = None

    Node.model_rebuild()
    with pytest.raises(ValueError, match="recursive"):
        canonical_schema(Node.model_json_schema())


def test_schemas_sorted_by_name_and_selectable() -> None:
    registry = make_registry()
    names = [s["function"]["name"] for s in registry.schemas()]
    assert names == sorted(names) == registry.names()
    assert [s["function"]["name"] for s in registry.schemas(["switch_on", "draw", "nope"])] == [
        "draw",
        "switch_on",
    ]
    policy = ToolPolicy(enabled={"chatty", "draw"})
    assert [s["function"]["name"] for s in registry.schemas_for(policy)] == ["chatty", "draw"]


def test_schemas_are_byte_identical_across_registries() -> None:
    settings = ToolSettings(
        searxng_url="http://127.0.0.1:9/",
        home_assistant_url="http://127.0.0.1:9",
        home_assistant_token="tok",
        home_assistant_allow=["light.*"],
    )
    one = json.dumps(build_registry(settings).schemas())
    two = json.dumps(build_registry(settings).schemas())
    assert one == two
    # Mutating a returned schema does not change the next one.
    first = build_registry(settings)
    first.schemas()[0]["function"]["parameters"]["properties"].clear()
    assert json.dumps(first.schemas()) == one


def test_schemas_are_byte_identical_across_processes() -> None:
    code = (
        "import json, sys\n"
        "from tools import ToolSettings, build_registry\n"
        "s = ToolSettings(searxng_url='http://127.0.0.1:9/', home_assistant_url="
        "'http://127.0.0.1:9', home_assistant_token='tok', home_assistant_allow=['light.*'])\n"
        "sys.stdout.write(json.dumps(build_registry(s).schemas()))\n"
    )
    outputs = set()
    for seed in ("0", "12345"):  # different hash seeds: no set/dict-order leaks
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            timeout=60,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1
    assert json.loads(outputs.pop())[0]["function"]["name"] == "calculator"


# --- execution ---


async def test_execute_runs_a_valid_call() -> None:
    result = await make_registry().execute(
        "draw", '{"kind": "circle", "center": {"x": 3}}', ctx(), READ_ONLY
    )
    assert result == ToolResult(text="circle at 3,0 size 1.0")


async def test_unknown_tool_is_a_tool_error_listing_available_tools() -> None:
    policy = ToolPolicy(enabled={"draw", "chatty"})
    result = await make_registry().execute("delete_everything", "{}", ctx(), policy)
    assert result.is_error
    assert "Unknown tool 'delete_everything'" in result.text
    assert "chatty, draw" in result.text
    # A registered tool the policy does not enable is unknown too.
    hidden = await make_registry().execute("broken", "{}", ctx(), policy)
    assert hidden.is_error and "Unknown tool 'broken'" in hidden.text


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"kind": "triangle", "center": {"x": 1}}', "kind: Input should be 'circle' or 'square'"),
        ('{"kind": "circle"}', "center: Field required"),
        ('{"kind": "circle", "center": {"x": "abc"}}', "center.x: Input should be a valid integer"),
        ('{"kind": "circle", "center": {"x": 1}, "color": "red"}', "color: Extra inputs"),
        ('{"kind": "circle", "center": {"x": 1}, "size": -1}', "size: Input should be greater"),
    ],
)
async def test_invalid_arguments_are_tool_errors(arguments: str, expected: str) -> None:
    result = await make_registry().execute("draw", arguments, ctx(), READ_ONLY)
    assert result.is_error
    assert result.text.startswith("Invalid arguments for tool 'draw': ")
    assert expected in result.text


async def test_empty_arguments_mean_no_arguments() -> None:
    result = await make_registry().execute("chatty", "", ctx(), READ_ONLY)
    assert not result.is_error


async def test_timeout_is_a_tool_error() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await make_registry().execute("sleepy", "{}", ctx(), READ_ONLY)
    assert loop.time() - start < 2
    assert result.is_error
    assert result.text == "Tool 'sleepy' timed out after 0.2 seconds."


async def test_timeout_inside_a_tool_is_not_reported_as_the_tool_timeout() -> None:
    result = await make_registry().execute("inner_timeout", "{}", ctx(), READ_ONLY)
    assert result.is_error
    assert "operation inside it timed out" in result.text


async def test_exception_is_a_tool_error_without_internals() -> None:
    result = await make_registry().execute("broken", "{}", ctx(), READ_ONLY)
    assert result.is_error
    assert result.text == "Tool 'broken' failed with an internal error."
    assert "secret-internal-detail" not in result.text


async def test_tool_error_message_reaches_the_model() -> None:
    result = await make_registry().execute("polite_failure", "{}", ctx(), READ_ONLY)
    assert result == ToolResult(
        text="Tool 'polite_failure' failed: the widget is out of stock", is_error=True
    )


async def test_output_is_capped_with_a_marker() -> None:
    result = await make_registry().execute("chatty", "{}", ctx(), READ_ONLY)
    assert not result.is_error
    assert result.text == "abcdefghij" * 10 + TRUNCATION_MARKER.format(shown=100, total=500)
    assert "output truncated" in result.text
    assert len(result.images) == 1


# --- policy ---


async def test_write_denied_by_policy_does_not_run() -> None:
    RUNS.clear()
    result = await make_registry().execute("switch_on", "{}", ctx(), READ_ONLY)
    assert result.is_error
    assert "not allowed" in result.text and "It was not run" in result.text
    assert RUNS == []
    only_other = ToolPolicy(allow_write={"something_else"}, confirm_write=False)
    result = await make_registry().execute("switch_on", "{}", ctx(), only_other)
    assert result.is_error and RUNS == []


async def test_write_allowed_without_confirmation_runs() -> None:
    RUNS.clear()
    policy = ToolPolicy(allow_write={"switch_on"}, confirm_write=False)
    result = await make_registry().execute("switch_on", "{}", ctx("call_a"), policy)
    assert result == ToolResult(text="switched on")
    assert RUNS == ["call_a"]


async def test_confirmation_required_raises_until_confirmed() -> None:
    RUNS.clear()
    policy = ToolPolicy(allow_write=True, confirm_write={"switch_on"})
    with pytest.raises(ConfirmationRequired) as info:
        await make_registry().execute("switch_on", "{}", ctx("call_b"), policy)
    assert info.value.tool_name == "switch_on"
    assert info.value.call_id == "call_b"
    assert info.value.arguments == {}
    assert RUNS == []
    # Confirming another call id does not confirm this one.
    with pytest.raises(ConfirmationRequired):
        await make_registry().execute("switch_on", "{}", ctx("call_b", {"call_x"}), policy)
    result = await make_registry().execute("switch_on", "{}", ctx("call_b", {"call_b"}), policy)
    assert result.text == "switched on"
    assert RUNS == ["call_b"]


async def test_tool_declared_requires_confirmation_needs_it_whatever_the_policy() -> None:
    careful = switch_on.with_options(requires_confirmation=True)
    registry = ToolRegistry([careful])
    policy = ToolPolicy(allow_write=True, confirm_write=False)
    with pytest.raises(ConfirmationRequired):
        await registry.execute("switch_on", "{}", ctx("call_c"), policy)
    assert switch_on.requires_confirmation is False  # the original is unchanged


async def test_invalid_write_call_is_rejected_before_asking_for_confirmation() -> None:
    policy = ToolPolicy(allow_write=True, confirm_write=True)
    result = await make_registry().execute("switch_on", '{"force": true}', ctx(), policy)
    assert result.is_error and "force: Extra inputs" in result.text


async def test_read_tools_never_need_confirmation() -> None:
    policy = ToolPolicy(allow_write=False, confirm_write=True)
    result = await make_registry().execute(
        "draw", '{"kind": "square", "center": {"x": 0}}', ctx(), policy
    )
    assert not result.is_error


def test_settings_policy() -> None:
    settings = ToolSettings(
        tools_allow_write="memory_remember, home_assistant_call",
        tools_confirm_write="*",
        tools_enabled="calculator,clock",
    )
    policy = settings.policy()
    assert policy.allow_write == {"memory_remember", "home_assistant_call"}
    assert policy.confirm_write is True
    assert policy.enabled == {"calculator", "clock"}
    default = ToolSettings().policy()
    assert default.allow_write is False and default.confirm_write is True
    assert default.enabled is None


def test_tools_without_their_backend_are_never_registered() -> None:
    names = build_registry(ToolSettings()).names()
    assert "web_search" not in names
    assert not [n for n in names if n.startswith("home_assistant")]
    # A Home Assistant URL without its token is not a configured backend either.
    half = ToolSettings(home_assistant_url="http://127.0.0.1:9")
    assert not [n for n in build_registry(half).names() if n.startswith("home_assistant")]


def test_a_tool_is_usable_only_when_what_it_needs_is_present() -> None:
    registry = build_registry(ToolSettings())
    names = registry.names()
    assert registry.usable(names, ["images", "redis"]) == names
    plain = registry.usable(names, [])
    assert "image_zoom" not in plain and not [n for n in plain if n.startswith("memory_")]
    assert "calculator" in plain
    assert "image_zoom" in registry.usable(names, ["images"])
    assert registry.usable(["nope", "clock"], []) == ["clock"]


def test_the_operator_setting_reaches_the_policy() -> None:
    assert ToolSettings().policy().server_tools_with_client_tools is False
    on = ToolSettings(server_tools_with_client_tools=True)
    assert on.policy().server_tools_with_client_tools is True
