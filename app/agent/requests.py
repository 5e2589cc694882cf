"""A chat-completion request (OpenAI fields plus cascade's extensions) and its run config.

Shared by the HTTP API and the batch workers, so a batch line means what a request means.

Unknown fields are ignored (clients send many), known ones are validated with messages that
name the field. Extensions (`session_id`, `thinking`, `thinking_budget`, `server_tools`,
`preserve_thinking`, `confirm_tool_calls`) are reachable through the SDK's `extra_body`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from app.agent.models import RunConfig
from app.config import Settings
from app.errors import InvalidRequestError
from app.jsonbody import JsonBodyError, parse_json
from app.runtime.body import check_temperature, grant_budget
from app.runtime.models import Sampling
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


_ROLES = ("system", "developer", "user", "assistant", "tool")
_PART_TYPES = ("text", "input_text", "image_url")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_STOP_SEQUENCES = 4


class ChatRequest(Sampling):
    """A chat-completion request: OpenAI's fields (the sampling ones from `Sampling`) and
    cascade's extensions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[ToolDef] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=1)
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


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _check_parts(content: list[Any], where: str, *, role: str) -> None:
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise _bad("a content part must be an object", at)
        kind = part.get("type")
        if kind not in _PART_TYPES or (kind == "image_url" and role != "user"):
            allowed = "text or image_url" if role == "user" else "text"
            raise _bad(f"{at}.type must be {allowed} in a {role} message", f"{at}.type")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _bad("image_url.url must be a non-empty string", f"{at}.image_url.url")
        elif not isinstance(part.get("text"), str):
            raise _bad("a text part needs a string `text`", f"{at}.text")


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise _bad("tool_calls must be a list", f"{where}.tool_calls")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise _bad("a tool call must be an object", at)
        call_id = call.get("id")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= 256:
            raise _bad("a tool call needs a string `id`", f"{at}.id")
        if call.get("type", "function") != "function":
            raise _bad("a tool call's type must be 'function'", f"{at}.type")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _bad("a tool call needs a `function` object", f"{at}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _bad("function.name must be a tool name", f"{at}.function.name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            raise _bad(
                "function.arguments must be a string holding a JSON object",
                f"{at}.function.arguments",
            )
        try:
            parsed = parse_json(arguments) if arguments.strip() else {}
        except JsonBodyError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _bad(
                "function.arguments must be a string holding a JSON object",
                f"{at}.function.arguments",
            )


def check_messages(messages: list[Any]) -> None:
    """Validate client messages fully; the first problem is a 400 naming its field.

    A `tool` message must answer a call made earlier in the same list or, for a session, in
    its stored history (see `check_tool_results`).
    """
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad("a message must be an object", where)
        role = message.get("role")
        if role not in _ROLES:
            raise _bad(f"{where}.role must be one of {', '.join(_ROLES)}", f"{where}.role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad("content must be a string or a list of parts", f"{where}.content")
        if isinstance(content, list):
            _check_parts(content, where, role=role)
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad("name must be a string", f"{where}.name")
        reasoning = message.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise _bad("reasoning_content must be a string", f"{where}.reasoning_content")
        if role == "assistant" and message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"], where)
        elif message.get("tool_calls") is not None:
            raise _bad("only assistant messages carry tool_calls", f"{where}.tool_calls")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad("a tool message needs tool_call_id", f"{where}.tool_call_id")


def check_tool_offer(req: ChatRequest) -> None:
    """Client tool schemas, `tool_choice`'s shape and `stop` are checked here, with the field
    named; whether `tool_choice` names an offered tool is known only once the run's server
    tools are (`AgentRun`)."""
    for i, tool_def in enumerate(req.tools or ()):
        parameters = tool_def.function.parameters
        if parameters is None:
            continue
        at = f"tools[{i}].function.parameters"
        if parameters.get("type", "object") != "object":
            raise _bad("a tool's parameters must be a JSON Schema of type object", at)
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise _bad(
                f"a tool's parameters are not a valid JSON Schema (at '{where or '/'}')", at
            ) from None
    choice = req.tool_choice
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        raise _bad("tool_choice must be none, auto, required or a function", "tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise _bad(
                'tool_choice must look like {"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
    stops = req.stop or []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _bad(f"stop takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
    if any(not stop for stop in stops):
        raise _bad("stop sequences must not be empty", "stop")


def check_tool_results(history: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    """Every `tool` message in `new` answers a call of an earlier assistant message (in the
    stored `history` or earlier in `new`) that has no answer yet."""
    open_calls: set[str] = set()
    for message in history:
        if message.get("role") == "assistant":
            open_calls = {c.get("id") for c in message.get("tool_calls") or []}
        elif message.get("role") == "tool":
            open_calls.discard(message.get("tool_call_id"))
    for i, message in enumerate(new):
        if message.get("role") == "assistant":
            open_calls = {c["id"] for c in message.get("tool_calls") or []}
        elif message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                raise _bad(
                    f"messages[{i}] answers tool call {call_id!r}, which no earlier assistant "
                    "message made (or which is answered already)",
                    f"messages[{i}].tool_call_id",
                )
            open_calls.discard(call_id)


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
        out.append(item)
    return out


EFFORT_BUDGETS = {"minimal": 512, "low": 1024, "medium": 4096, "high": 12000}


def parse_chat_request(data: Any) -> ChatRequest:
    """Validate a request body; any problem is an `InvalidRequestError` naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{first.get('msg', 'invalid value')} at {loc}"
        raise InvalidRequestError(message, param=loc or None) from None
    check_messages(req.messages)
    check_tool_offer(req)
    if req.session_id is None:
        check_tool_results([], req.messages)
    return req


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
        sampling=req.sampling(),
        confirm_pause_ids=set(req.confirm_tool_calls or ()),
        routing_key=req.session_id,
    )
    policy = ToolPolicy(
        enabled=set(config.server_tools),
        allow_write=base_policy.allow_write,
        confirm_write=base_policy.confirm_write,
    )
    return config, policy
