"""Configuration from `CASCADE_*` environment variables, validated once at start.

Every setting has a default that works on a single homelab box; `load_settings()` turns a
validation failure into a `ConfigError` whose message names each bad variable and why, without
echoing secret values.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from app.errors import ConfigError
from app.redact import redact_url
from app.settings_base import CascadeSettings, split_csv


class Settings(CascadeSettings):
    """cascade's settings. Field `x` is read from env `CASCADE_X`."""

    # --- the runtime (SGLang) ---
    runtime_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:30000"),
        description="Base URL of the SGLang runtime (or SGLang router).",
    )
    runtime_api_key: SecretStr | None = Field(
        default=None, description="Bearer key the runtime was started with (--api-key)."
    )
    model: str | None = Field(
        default=None,
        description="Served model name; unset = ask the runtime (/model_info).",
    )
    runtime_connect_timeout: float = Field(default=3.0, gt=0, description="Seconds.")
    runtime_read_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds without a byte from the runtime before a call fails.",
    )
    runtime_total_timeout: float = Field(
        default=1800.0, gt=0, description="Seconds a whole runtime call may take."
    )
    runtime_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries on connection errors, 429 and 5xx."
    )
    runtime_retry_backoff: float = Field(
        default=0.25, gt=0, description="Base of the jittered exponential backoff, seconds."
    )
    runtime_max_connections: int = Field(default=256, ge=1)

    # --- thinking and sampling ---
    thinking_default: bool = Field(
        default=False, description="Thinking on when a request does not say."
    )
    thinking_budget_default: int = Field(
        default=3000, ge=1, description="Reasoning tokens granted when a request does not say."
    )
    thinking_budget_max: int = Field(
        default=16000, ge=1, description="Upper bound on any requested thinking budget."
    )
    budget_margin: int = Field(
        default=32,
        ge=0,
        description="Reasoning tokens tolerated beyond the budget before cascade cuts it.",
    )
    answer_tokens_default: int = Field(
        default=4096,
        ge=16,
        description="Answer tokens allowed beyond the thinking budget when max_tokens is unset.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=20, ge=-1)
    repetition_penalty: float = Field(default=1.1, gt=0, le=2)
    allow_greedy: bool = Field(
        default=False,
        description="Allow temperature 0 (this model loops when decoded greedily).",
    )

    # --- the agent ---
    agent_max_steps: int = Field(
        default=8, ge=1, le=64, description="Model calls per request before the run stops."
    )
    system_prompt: str | None = Field(
        default=None,
        description="System prompt added when a conversation has none (stable text only).",
    )
    task_prompts_without_tools: bool = Field(
        default=True,
        description="A chat UI's background task call (not streamed, one user message starting "
        "with `### Task:`: Open WebUI's titles, tags, follow-ups) gets no server tools.",
    )
    tool_steps_in_reasoning: bool = Field(
        default=True,
        description="Chat answers show each server tool step as a line in reasoning_content "
        "(display only: never stored as reasoning, never sent to the model).",
    )

    # --- the Ollama API (/api/*) ---
    ollama_server_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Server tools the Ollama API offers (comma-separated, * = all enabled); "
        "unset = none, so an Ollama client gets only the tools it declares.",
    )

    # --- storage and service ---
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (`redis+cluster://host:port`: a Redis Cluster); unset = "
        "`cascade up` starts a local redis-server.",
    )
    state_dir: Path = Field(default=Path("./state"), description="Local state (Redis data).")
    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8080, ge=1, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated client API keys; unset = auth off.",
    )
    allow_no_auth: bool = Field(
        default=False,
        description="Allow auth off on a non-loopback bind (every caller is the local owner).",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Server secret sealing data clients hand back (encrypted reasoning).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated browser origins allowed to call the API; unset = none.",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without an API key (for a scraper on a trusted network).",
    )
    log_format: Literal["auto", "json", "console"] = Field(default="auto")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("ollama_server_tools", mode="before")
    @classmethod
    def _split_ollama_tools(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError("each origin must be scheme://host[:port] (or *)")
        return [origin.lower() for origin in value]

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        schemes = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
        if not value.startswith(schemes):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+cluster:// or "
                "rediss+cluster://"
            )
        return value

    @model_validator(mode="after")
    def _check_budgets(self) -> Settings:
        if self.thinking_budget_default > self.thinking_budget_max:
            raise ValueError(
                "CASCADE_THINKING_BUDGET_DEFAULT must not exceed CASCADE_THINKING_BUDGET_MAX"
            )
        return self

    @property
    def runtime_base(self) -> str:
        """The runtime URL without a trailing slash."""
        return str(self.runtime_url).rstrip("/")

    @property
    def runtime_display(self) -> str:
        """The runtime URL as it may be shown or logged (credentials masked)."""
        return redact_url(self.runtime_base)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @cached_property
    def api_key_digests(self) -> dict[str, str]:
        """sha256 digest of each client key → a short key id (the owner id of its sessions).

        Only digests are kept for comparison; the raw keys are not needed after start.
        """
        out: dict[str, str] = {}
        for key in self.api_keys:
            digest = hashlib.sha256(key.get_secret_value().encode()).hexdigest()
            out[digest] = "key_" + digest[:12]
        return out


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; raise `ConfigError` naming every bad variable."""
    return Settings.load(**overrides)


def is_loopback_host(host: str) -> bool:
    """True for a bind address that only this machine can reach."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind_auth(settings: Settings, host: str) -> None:
    """Refuse to serve without API keys on an address other machines can reach.

    With auth off every caller is the local owner (all sessions, all tools); that is safe only
    on loopback. `CASCADE_ALLOW_NO_AUTH=true` overrides, and is logged as an error-level warning.
    """
    if settings.auth_enabled or is_loopback_host(host):
        return
    if not settings.allow_no_auth:
        raise ConfigError(
            f"refusing to serve on {host} without API keys: set CASCADE_API_KEYS, bind to "
            "127.0.0.1, or set CASCADE_ALLOW_NO_AUTH=true to accept every caller as the owner"
        )
    structlog.get_logger(__name__).error(
        "auth_disabled_on_network",
        host=host,
        detail="CASCADE_ALLOW_NO_AUTH=true: anyone who can reach this address owns every "
        "session and may use every enabled tool",
    )
