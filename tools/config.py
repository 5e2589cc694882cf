"""Tool settings from `CASCADE_*` environment variables (kept apart from `app.config`).

Field `x` is read from env `CASCADE_X`. Lists of names are comma-separated; `CASCADE_MCP_SERVERS`
is a JSON list of `{"name": ..., "command": ..., "args": [...]}` or `{"name": ..., "url": ...}`.
Write policy (`CASCADE_TOOLS_ALLOW_WRITE`, `CASCADE_TOOLS_CONFIRM_WRITE`): `*` = every write
tool, empty = none, otherwise a comma-separated list of tool names.
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Any

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from app.settings_base import CascadeSettings, split_csv
from tools.registry import ToolPolicy

_SERVER_NAME_RE = r"^[A-Za-z0-9_-]{1,32}$"


class McpServerConfig(BaseModel):
    """One MCP server: a stdio command (`command` + `args`) or a streamable HTTP `url`.

    Tools from MCP servers are `write` tools unless named in `read_tools` (the operator vouches
    for them): what a third-party tool does cannot be known from its description.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_SERVER_NAME_RE)
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: AnyHttpUrl | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="Per call; default tool_timeout")
    connect_timeout: float = Field(default=20.0, gt=0)
    read_tools: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs exactly one of `command` or `url`")
        return self


def _names_or_all(value: object) -> object:
    """`*`/`true`/`all` → True, ``/`false`/`none` → False, `a,b` → {"a", "b"}."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("*", "all", "true", "1", "yes"):
            return True
        if text in ("", "none", "false", "0", "no"):
            return False
        return {part.strip() for part in value.split(",") if part.strip()}
    return value


class ToolSettings(CascadeSettings):
    """Settings of the tool registry, the built-in tools and MCP servers."""

    # --- limits and policy ---
    tool_timeout: float = Field(default=15.0, gt=0, le=600, description="Seconds per tool call.")
    tool_max_output_chars: int = Field(default=16000, ge=256, le=1_000_000)
    tools_enabled: Annotated[set[str] | None, NoDecode] = Field(
        default=None, description="Comma-separated tool names the model may use; unset = all."
    )
    tools_allow_write: Annotated[bool | set[str], NoDecode] = Field(
        default=False, description="Write tools that may run: `*`, none (empty) or names."
    )
    tools_confirm_write: Annotated[bool | set[str], NoDecode] = Field(
        default=True, description="Write tools that need the user's OK per call."
    )
    server_tools_with_client_tools: bool = Field(
        default=False,
        description=(
            "Offer the server tools to a request that declares its own `tools` even when it "
            "does not name them in `server_tools` (off: such a request gets only its own)."
        ),
    )

    # --- clock ---
    timezone: str = Field(default="UTC", description="The operator's IANA time zone.")

    # --- fetch_url ---
    fetch_max_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    # --- web_search (SearXNG) ---
    searxng_url: AnyHttpUrl | None = Field(default=None, description="Unset = no web_search.")
    web_search_max_results: int = Field(default=5, ge=1, le=20)

    # --- Home Assistant ---
    home_assistant_url: AnyHttpUrl | None = None
    home_assistant_token: SecretStr | None = None
    home_assistant_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Services the model may call: `domain.service` or `domain.*`, comma-separated.",
    )
    home_assistant_read: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Entity ids the model may read (glob patterns, e.g. `sensor.*`).",
    )
    home_assistant_confirm: bool = Field(
        default=True, description="Every service call needs the user's OK."
    )

    # --- memory ---
    memory_max_notes: int = Field(default=200, ge=1, le=10_000)
    memory_max_note_chars: int = Field(default=1000, ge=16, le=100_000)

    # --- MCP ---
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)

    @field_validator("tools_enabled", mode="before")
    @classmethod
    def _enabled(cls, value: object) -> object:
        if isinstance(value, str):
            names = {part.strip() for part in value.split(",") if part.strip()}
            return None if not names or names == {"*"} else names
        return value

    @field_validator("tools_allow_write", "tools_confirm_write", mode="before")
    @classmethod
    def _write_sets(cls, value: object) -> object:
        return _names_or_all(value)

    @field_validator("home_assistant_allow", "home_assistant_read", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("home_assistant_allow")
    @classmethod
    def _check_allow(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[a-z0-9_]+\.([a-z0-9_]+|\*)", item):
                raise ValueError("each entry must be `domain.service` or `domain.*`")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as Europe/Paris)") from None
        return value

    @field_validator("mcp_servers")
    @classmethod
    def _unique_servers(cls, value: list[McpServerConfig]) -> list[McpServerConfig]:
        names = [s.name for s in value]
        if len(names) != len(set(names)):
            raise ValueError("MCP server names must be unique")
        return value

    @property
    def searxng_base(self) -> str | None:
        return None if self.searxng_url is None else str(self.searxng_url).rstrip("/")

    @property
    def home_assistant_base(self) -> str | None:
        if self.home_assistant_url is None or self.home_assistant_token is None:
            return None
        return str(self.home_assistant_url).rstrip("/")

    def policy(self) -> ToolPolicy:
        """The operator's default policy (a request may narrow it, never widen it)."""
        return ToolPolicy(
            enabled=None if self.tools_enabled is None else set(self.tools_enabled),
            allow_write=_copy(self.tools_allow_write),
            confirm_write=_copy(self.tools_confirm_write),
            server_tools_with_client_tools=self.server_tools_with_client_tools,
        )


def _copy(value: bool | set[str]) -> bool | set[str]:
    return value if isinstance(value, bool) else set(value)


def load_tool_settings(**overrides: Any) -> ToolSettings:
    """Read and validate tool settings; raise `ConfigError` naming every bad variable."""
    return ToolSettings.load(**overrides)
