"""Tools the agent can run: a registry, the built-in tools, and tools from MCP servers.

`build_registry(settings)` gives the built-ins that are configured: calculator, clock,
image_zoom, fetch_url and the memory tools always; web_search when `CASCADE_SEARXNG_URL` is set;
home_assistant_state when Home Assistant's URL and token are set, and home_assistant_call when
`CASCADE_HOME_ASSISTANT_ALLOW` names services too. MCP tools are added by `McpManager`. Of the
registered tools, a turn is offered only those whose needs are met (`Tool.needs`: image_zoom
needs an image in the conversation, the memory tools Redis; see `app.agent.turn`).
"""

from __future__ import annotations

from app.media.config import MediaSettings
from app.media.fetch import Resolver
from app.media.ssrf import FetchPolicy
from tools.builtin.calculator import calculator
from tools.builtin.clock import make_clock_tool
from tools.builtin.fetch_url import make_fetch_url_tool
from tools.builtin.home_assistant import make_home_assistant_tools
from tools.builtin.image_zoom import image_zoom
from tools.builtin.memory import make_memory_tools
from tools.builtin.web_search import make_web_search_tool
from tools.config import McpServerConfig, ToolSettings, load_tool_settings
from tools.registry import (
    ConfirmationRequired,
    SideEffect,
    Tool,
    ToolArgs,
    ToolContext,
    ToolError,
    ToolPolicy,
    ToolRegistry,
    ToolResult,
    tool,
)

__all__ = [
    "ConfirmationRequired",
    "McpServerConfig",
    "SideEffect",
    "Tool",
    "ToolArgs",
    "ToolContext",
    "ToolError",
    "ToolPolicy",
    "ToolRegistry",
    "ToolResult",
    "ToolSettings",
    "build_registry",
    "load_tool_settings",
    "tool",
]


def build_registry(
    settings: ToolSettings,
    *,
    media_settings: MediaSettings | None = None,
    fetch_resolver: Resolver | None = None,
) -> ToolRegistry:
    """A registry of the configured built-in tools.

    `media_settings` (default: read from the environment) gives fetch_url its allow/deny host
    lists and the memory tools their Redis key prefix; `fetch_resolver` is for tests.
    """
    media = media_settings or MediaSettings()
    cap = settings.tool_max_output_chars
    tools: list[Tool] = [
        calculator.with_options(max_output_chars=cap),
        make_clock_tool(settings.timezone).with_options(max_output_chars=cap),
        image_zoom.with_options(max_output_chars=cap),
        make_fetch_url_tool(
            FetchPolicy(allow=media.fetch_allow_hosts, deny=media.fetch_deny_hosts),
            max_bytes=settings.fetch_max_bytes,
            timeout=settings.tool_timeout,
            slice_chars=min(12000, cap),
            resolver=fetch_resolver,
        ),
    ]
    tools += [
        t.with_options(max_output_chars=cap)
        for t in make_memory_tools(
            max_notes=settings.memory_max_notes,
            max_note_chars=settings.memory_max_note_chars,
            key_prefix=media.key_prefix,
        )
    ]
    if settings.searxng_base is not None:
        tools.append(
            make_web_search_tool(
                settings.searxng_base,
                default_results=settings.web_search_max_results,
                timeout=settings.tool_timeout,
            ).with_options(max_output_chars=cap)
        )
    ha_base = settings.home_assistant_base
    if ha_base is not None and settings.home_assistant_token is not None:
        tools += [
            t.with_options(max_output_chars=cap)
            for t in make_home_assistant_tools(
                ha_base,
                settings.home_assistant_token,
                allow=settings.home_assistant_allow,
                read=settings.home_assistant_read,
                confirm=settings.home_assistant_confirm,
                timeout=settings.tool_timeout,
            )
        ]
    return ToolRegistry(tools)
