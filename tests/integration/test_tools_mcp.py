"""MCP tools: a real MCP server (tests/mcp_server_fixture.py) over stdio and streamable HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis.asyncio as aioredis

from app.media.config import MediaSettings
from app.media.intake import ImageIntake
from tests.redis_server import RedisServer, free_port
from tools.config import McpServerConfig, ToolSettings
from tools.mcp import McpManager, exposed_name
from tools.registry import ToolContext, ToolPolicy, ToolRegistry, ToolResult

ROOT = Path(__file__).resolve().parents[2]
ALLOW = ToolPolicy(allow_write=True, confirm_write=False)


def stdio_config(**extra: Any) -> McpServerConfig:
    return McpServerConfig(
        name="fixture",
        command=sys.executable,
        args=["-m", "tests.mcp_server_fixture"],
        cwd=str(ROOT),
        **extra,
    )


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[IO[str]]:
    with open(tmp_path / "mcp-stderr.log", "w") as fh:
        yield fh


@pytest.fixture
async def stdio(errlog: IO[str]) -> AsyncIterator[tuple[McpManager, ToolRegistry]]:
    registry = ToolRegistry()
    manager = McpManager(
        [stdio_config(read_tools=["add"], timeout=5)],
        registry,
        errlog=errlog,
        reconnect_interval=3600,
    )
    await manager.start()
    try:
        yield manager, registry
    finally:
        await manager.aclose()


async def call(registry: ToolRegistry, name: str, args: dict[str, Any], **ctx: Any) -> ToolResult:
    context = ToolContext(owner="o", call_id="call_1", **ctx)
    return await registry.execute(name, json.dumps(args), context, ALLOW)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) still answers kill(0); read its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_exposed_names() -> None:
    assert exposed_name("fs", "read_file") == "fs.read_file"
    assert exposed_name("fs", "weird name/with>chars") == "fs.weird_name_with_chars"
    assert exposed_name("fs", "admin.tools.list") == "fs.admin.tools.list"
    assert len(exposed_name("fs", "x" * 200)) == 64


def test_mcp_servers_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    servers = [
        {"name": "files", "command": "mcp-files", "args": ["--root", "/srv"]},
        {"name": "remote", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "x"}},
    ]
    monkeypatch.setenv("CASCADE_MCP_SERVERS", json.dumps(servers))
    settings = ToolSettings()
    assert [s.name for s in settings.mcp_servers] == ["files", "remote"]
    assert settings.mcp_servers[0].args == ["--root", "/srv"]
    assert "x" not in repr(settings.mcp_servers[1])  # header values are secrets
    with pytest.raises(ValueError, match="exactly one of"):
        McpServerConfig(name="both", command="a", url="http://127.0.0.1:9")


async def test_stdio_server_discovered_and_called(stdio: tuple[McpManager, ToolRegistry]) -> None:
    manager, registry = stdio
    assert manager.status() == {"fixture": None}
    expected = [
        "fixture.add",
        "fixture.die",
        "fixture.echo",
        "fixture.pid",
        "fixture.red_square",
        "fixture.shout",
        "fixture.sleep",
    ]
    assert registry.names() == expected == manager.tool_names()
    add = registry.get("fixture.add")
    echo = registry.get("fixture.echo")
    assert add is not None and echo is not None
    assert add.side_effect == "read"  # listed in read_tools
    assert echo.side_effect == "write"  # everything else
    assert add.openai_schema() == {
        "type": "function",
        "function": {
            "name": "fixture.add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
    result = await call(registry, "fixture.add", {"a": 2, "b": 40})
    assert result == ToolResult(text="42")
    echoed = await call(registry, "fixture.echo", {"text": "héllo <b>"})
    assert echoed.text == "héllo <b>"


async def test_arguments_validated_against_the_server_schema(
    stdio: tuple[McpManager, ToolRegistry],
) -> None:
    _, registry = stdio
    result = await call(registry, "fixture.add", {"a": "two", "b": 1})
    assert result.is_error
    assert (
        result.text
        == "Invalid arguments for tool 'fixture.add': a: 'two' is not of type 'integer'."
    )
    missing = await call(registry, "fixture.add", {"a": 1})
    assert missing.is_error and "'b' is a required property" in missing.text
    extra = await call(registry, "fixture.add", {"a": 1, "b": 2, "c": 3})
    assert extra.is_error and "Additional properties are not allowed" in extra.text


async def test_write_tools_of_mcp_servers_follow_the_policy(
    stdio: tuple[McpManager, ToolRegistry],
) -> None:
    _, registry = stdio
    ctx = ToolContext(owner="o", call_id="call_1")
    refused = await registry.execute("fixture.echo", '{"text": "x"}', ctx, ToolPolicy())
    assert refused.is_error and "not allowed" in refused.text
    allowed_read = await registry.execute("fixture.add", '{"a": 1, "b": 1}', ctx, ToolPolicy())
    assert allowed_read.text == "2"


async def test_server_error_result_is_a_tool_error(stdio: tuple[McpManager, ToolRegistry]) -> None:
    _, registry = stdio
    result = await call(registry, "fixture.shout", {"text": ""})
    assert result.is_error
    assert "shout" in result.text


async def test_image_content(
    stdio: tuple[McpManager, ToolRegistry], redis_server: RedisServer
) -> None:
    _, registry = stdio
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        intake = ImageIntake(client, MediaSettings())
        result = await call(registry, "fixture.red_square", {"size": 64}, media=intake)
        assert not result.is_error, result.text
        (part,) = result.images
        assert part["type"] == "image_ref"
        img = await intake.load_image(part)
        assert img.getpixel((10, 10)) == (255, 0, 0)
    finally:
        await client.aclose()
    without_media = await call(registry, "fixture.red_square", {"size": 8})
    assert without_media.images == []
    assert without_media.text == "[an image was returned but cannot be shown here]"


async def test_slow_call_times_out_and_the_server_stays_usable(errlog: IO[str]) -> None:
    registry = ToolRegistry()
    manager = McpManager([stdio_config(timeout=0.5)], registry, errlog=errlog)
    await manager.start()
    try:
        start = time.monotonic()
        result = await call(registry, "fixture.sleep", {"seconds": 20})
        assert time.monotonic() - start < 5
        assert result.is_error
        assert "timed out" in result.text or "did not answer in time" in result.text
        assert (await call(registry, "fixture.add", {"a": 1, "b": 2})).text == "3"
    finally:
        await manager.aclose()


async def test_server_death_fails_its_tools_cleanly_and_refresh_recovers(
    stdio: tuple[McpManager, ToolRegistry],
) -> None:
    manager, registry = stdio
    pid = int((await call(registry, "fixture.pid", {})).text)
    died = await call(registry, "fixture.die", {})
    assert died.is_error
    assert "MCP server 'fixture' stopped (connection closed)" in died.text
    after = await call(registry, "fixture.add", {"a": 1, "b": 2})
    assert after.is_error
    assert "MCP server 'fixture' is not available (connection closed)" in after.text
    assert manager.status() == {"fixture": "connection closed"}
    # The tools stay listed (a stable prompt) and fail cleanly until the server is back.
    assert "fixture.add" in registry
    assert not alive(pid)

    await manager.refresh()
    assert manager.status() == {"fixture": None}
    assert (await call(registry, "fixture.add", {"a": 1, "b": 2})).text == "3"
    new_pid = int((await call(registry, "fixture.pid", {})).text)
    assert new_pid != pid


async def test_server_killed_from_outside(stdio: tuple[McpManager, ToolRegistry]) -> None:
    manager, registry = stdio
    pid = int((await call(registry, "fixture.pid", {})).text)
    os.kill(pid, signal.SIGKILL)
    result = await call(registry, "fixture.add", {"a": 1, "b": 2})
    assert result.is_error
    assert "MCP server 'fixture'" in result.text
    assert manager.status()["fixture"] is not None


async def test_lazy_reconnect_after_the_interval(errlog: IO[str]) -> None:
    registry = ToolRegistry()
    manager = McpManager([stdio_config()], registry, errlog=errlog, reconnect_interval=0)
    await manager.start()
    try:
        await call(registry, "fixture.die", {})
        # The next call reconnects by itself (interval 0).
        assert (await call(registry, "fixture.add", {"a": 2, "b": 2})).text == "4"
    finally:
        await manager.aclose()


async def test_server_that_cannot_start(errlog: IO[str]) -> None:
    registry = ToolRegistry()
    config = McpServerConfig(name="ghost", command="/nonexistent/mcp-server", connect_timeout=5)
    manager = McpManager([config], registry, errlog=errlog)
    await manager.start()  # does not raise
    try:
        assert registry.names() == []
        status = manager.status()["ghost"]
        assert status is not None and status != "not started"
    finally:
        await manager.aclose()


async def test_server_that_never_answers(tmp_path: Path, errlog: IO[str]) -> None:
    registry = ToolRegistry()
    config = McpServerConfig(
        name="mute",
        command=sys.executable,
        args=["-c", "import time; time.sleep(60)"],
        connect_timeout=1,
    )
    manager = McpManager([config], registry, errlog=errlog)
    start = time.monotonic()
    await manager.start()
    try:
        assert time.monotonic() - start < 5
        assert registry.names() == []
        assert manager.status()["mute"] is not None
    finally:
        await manager.aclose()


async def test_aclose_stops_the_server_and_unregisters(errlog: IO[str]) -> None:
    registry = ToolRegistry()
    manager = McpManager([stdio_config()], registry, errlog=errlog)
    await manager.start()
    pid = int((await call(registry, "fixture.pid", {})).text)
    assert alive(pid)
    await manager.aclose()
    assert registry.names() == []
    assert not alive(pid)  # aclose waits for the process to exit


# --- streamable HTTP ---


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with open(tmp_path / "http-server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.mcp_server_fixture", "--http", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the MCP HTTP fixture did not start") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/mcp", proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def test_streamable_http_server(http_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = http_server
    registry = ToolRegistry()
    config = McpServerConfig(name="remote", url=url, timeout=5)
    manager = McpManager([config], registry, reconnect_interval=3600)
    await manager.start()
    try:
        assert manager.status() == {"remote": None}
        assert "remote.add" in registry
        assert (await call(registry, "remote.add", {"a": 20, "b": 22})).text == "42"
        proc.kill()
        proc.wait()
        result = await call(registry, "remote.add", {"a": 1, "b": 1})
        assert result.is_error
        assert "MCP server 'remote'" in result.text
    finally:
        await manager.aclose()
