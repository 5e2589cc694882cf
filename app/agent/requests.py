"""A chat-completion request (OpenAI fields plus cascade's extensions) and its run config.

Shared by the HTTP API and the batch workers, so a batch line means what a request means.

Unknown fields are ignored (clients send many), known ones are validated with messages that
name the field. Extensions (`session_id`, `thinking`, `thinking_budget`, `server_tools`,
`preserve_thinking`, `confirm_tool_calls`) are reachable through the SDK's `extra_body`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.agent.models import RunConfig
from app.config import Settings
from app.errors import InvalidRequestError
from app.runtime.body import check_temperature, grant_budget
from app.sessions.models import SessionOptions
from tools.registry import ToolPolicy, ToolRegistry


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


_ROLES = {"system", "developer", "user", "assistant", "tool"}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    response_format: dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    store: bool | None = None
    user: str | None = None
    # --- cascade extensions ---
    session_id: str | None = Field(default=None, pattern=r"^sess_[0-9a-f]{24}$")
    thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=1)
    server_tools: list[str] | None = None
    preserve_thinking: bool | None = None
    confirm_tool_calls: list[str] | None = None

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in _ROLES:
                raise ValueError(f"messages[{i}].role must be one of {sorted(_ROLES)}")
            content = message.get("content")
            if content is not None and not isinstance(content, str | list):
                raise ValueError(f"messages[{i}].content must be a string or a list of parts")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind not in ("text", "image_url", "input_text"):
                        raise ValueError(
                            f"messages[{i}].content[{j}].type must be text or image_url"
                        )
                    if kind == "image_url" and role not in ("user",):
                        raise ValueError(f"messages[{i}]: images are only allowed in user turns")
            if role == "tool" and not message.get("tool_call_id"):
                raise ValueError(f"messages[{i}]: a tool message needs tool_call_id")
        return messages

    @model_validator(mode="after")
    def _check_tools(self) -> ChatRequest:
        if not self.messages and self.session_id is None:
            # Only a session turn may be empty: it resumes a run paused for confirmation.
            raise ValueError("messages must not be empty")
        if self.tools:
            names = [t.function.name for t in self.tools]
            if len(set(names)) != len(names):
                raise ValueError("tools: function names must be unique")
        return self

    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def normalise_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Client messages → stored form: `developer` is `system`, text parts kept, no nulls."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item = {k: v for k, v in message.items() if v is not None and k != "meta"}
        if item["role"] == "developer":
            item["role"] = "system"
        content = item.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "input_text":
                    part = {"type": "text", "text": part.get("text", "")}
                parts.append(part)
            item["content"] = parts
        if item["role"] == "assistant":
            calls = item.get("tool_calls")
            if calls is not None and not isinstance(calls, list):
                raise InvalidRequestError("assistant tool_calls must be a list", param="messages")
        out.append(item)
    return out


EFFORT_BUDGETS = {"minimal": 512, "low": 1024, "medium": 4096, "high": 12000}


def parse_chat_request(data: Any) -> ChatRequest:
    """Validate a request body; any problem is an `InvalidRequestError` naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{first.get('msg', 'invalid value')} at {loc}"
        raise InvalidRequestError(message, param=loc or None) from None


def run_config(
    req: ChatRequest,
    settings: Settings,
    options: SessionOptions,
    registry: ToolRegistry | None,
    base_policy: ToolPolicy | None = None,
) -> tuple[RunConfig, ToolPolicy]:
    """Resolve a request over the session's options and the operator's defaults.

    A request may narrow the operator's tool policy (fewer tools), never widen it: tools the
    operator disabled stay unavailable, and write permission always comes from the operator.
    """
    base_policy = base_policy or ToolPolicy()  # the safe default: no writes
    check_temperature(req.temperature, settings)
    thinking = req.thinking
    budget_wanted = req.thinking_budget
    if req.reasoning_effort is not None and thinking is None:
        thinking = req.reasoning_effort != "none"
        budget_wanted = budget_wanted or EFFORT_BUDGETS.get(req.reasoning_effort)
    if thinking is None:
        thinking = options.thinking if options.thinking is not None else settings.thinking_default
    budget = grant_budget(budget_wanted or options.thinking_budget, settings) if thinking else None
    available = [
        name
        for name in (registry.names() if registry is not None else [])
        if base_policy.is_enabled(name)
    ]
    wanted = req.server_tools if req.server_tools is not None else options.server_tools
    if wanted is None:
        wanted = available
    unknown = sorted(set(wanted) - set(available))
    if unknown and req.server_tools is not None:
        raise InvalidRequestError(
            f"unknown server tool(s): {', '.join(unknown)}; "
            f"available: {', '.join(available) or 'none'}",
            param="server_tools",
        )
    sampling: dict[str, Any] = {}
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "response_format",
    ):
        value = getattr(req, name)
        if value is not None:
            sampling[name] = value
    if req.stop is not None:
        sampling["stop"] = req.stop_list()
    config = RunConfig(
        thinking=thinking,
        thinking_budget=budget,
        preserve_thinking=(
            req.preserve_thinking
            if req.preserve_thinking is not None
            else options.preserve_thinking
        ),
        max_steps=settings.agent_max_steps,
        server_tools=[name for name in wanted if name in available],
        client_tools=[t.model_dump(exclude_none=True) for t in req.tools or []],
        tool_choice=req.tool_choice,
        max_answer_tokens=req.answer_tokens(),
        sampling=sampling,
        confirm_pause_ids=set(req.confirm_tool_calls or ()),
        routing_key=req.session_id,
    )
    policy = ToolPolicy(
        enabled=set(config.server_tools),
        allow_write=base_policy.allow_write,
        confirm_write=base_policy.confirm_write,
    )
    return config, policy
