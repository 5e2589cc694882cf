"""The OpenAI chat-completion shapes cascade accepts and emits: the one wire contract.

- Requests: `ChatRequest` (OpenAI's fields, the sampling ones from `Sampling`, plus cascade's
  extensions), validated whole by `parse_chat_request` with messages that name the field.
  Unknown fields are ignored (clients send many). Extensions (`session_id`, `thinking`,
  `thinking_budget`, `server_tools`, `preserve_thinking`, `confirm_tool_calls`) are reachable
  through the SDK's `extra_body`.
- Responses: `completion_body` (and its `usage`, `tool_calls` and `cascade` parts).
- Stream chunks: `ChunkWriter`, with pre-serialised bytes: a content (or reasoning) delta
  costs one `orjson.dumps` of its text and one join with the bytes around it, rendered once
  per response, which is what keeps cascade's CPU per relayed chunk small. Extension fields
  (`session_id`, `cascade`) are ignored by standard clients.
- Errors: the body is `CascadeError.to_body()` (`app.errors`), in a response or a chunk.

Shared by the HTTP API and the batch workers, so a batch line means what a request means.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from app.agent.models import RunResult, ToolProgress
from app.errors import InvalidRequestError
from app.jsonbody import JsonBodyError, parse_json
from app.runtime.models import Sampling, ThinkingReport, ToolCall, Usage
from app.sessions.keys import SESSION_ID_PATTERN


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
_PART_TYPES = ("text", "input_text", "image_url", "video_url")
_MEDIA_PARTS = ("image_url", "video_url")
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
    session_id: str | None = Field(default=None, pattern=f"^{SESSION_ID_PATTERN}$")
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
        if kind not in _PART_TYPES or (kind in _MEDIA_PARTS and role != "user"):
            allowed = "text, image_url or video_url" if role == "user" else "text"
            raise _bad(f"{at}.type must be {allowed} in a {role} message", f"{at}.type")
        if kind in _MEDIA_PARTS:
            media = part.get(kind)
            url = media.get("url") if isinstance(media, dict) else media
            if not isinstance(url, str) or not url:
                raise _bad(f"{kind}.url must be a non-empty string", f"{at}.{kind}.url")
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


TASK_PROMPT_MARK = "### Task:"


def is_task_prompt(req: ChatRequest) -> bool:
    """Whether `req` looks like a chat UI's background task rather than a conversation turn.

    A heuristic, for Open WebUI (0.12): its title, tags and follow-up calls (and its query,
    autocomplete and emoji ones) are not streamed, carry no session and no `metadata` marker
    to the backend (it takes `metadata.task` off), and are one user message whose text starts
    with `### Task:` (its default prompt templates), after any system messages a model's own
    system prompt adds. A real turn has a conversation, or is streamed."""
    if req.stream or req.session_id is not None or not req.messages:
        return False
    *head, last = req.messages
    if last.get("role") != "user" or any(
        m.get("role") not in ("system", "developer") for m in head
    ):
        return False
    content = last.get("content")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = texts[0] if texts else None
    return isinstance(content, str) and content.lstrip().startswith(TASK_PROMPT_MARK)


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


# ----------------------------------------------------------------------------- responses


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage_body(usage: Usage, thinking: ThinkingReport) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "reasoning_tokens": usage.reasoning_tokens,
        "thinking_budget": {
            "enabled": thinking.enabled,
            "granted": thinking.budget,
            "used": thinking.used,
            "closed_by_guard": thinking.closed_by_guard,
        },
    }


def cascade_extension(result: RunResult) -> dict[str, Any]:
    ext: dict[str, Any] = {"outcome": result.outcome, "steps": result.steps}
    if result.pending_confirmation is not None:
        ext["pending_confirmation"] = result.pending_confirmation
    return ext


def tool_calls_body(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [
        {
            "id": c.id,
            "type": "function",
            "function": {"name": c.function.name, "arguments": c.function.arguments},
        }
        for c in calls
    ]


TOOL_STEP_ARGUMENTS_CHARS = 200
TOOL_STEP_RESULT_CHARS = 200


def _clip(text: str, limit: int) -> str:
    """`text` on one line, cut to `limit` characters (an ellipsis marks the cut)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def tool_step_line(step: ToolProgress) -> str:
    """A server tool step as a line of `reasoning_content`, for clients that show only standard
    fields: `\n[name] {arguments} → result\n`, both parts cut to about 200 characters.

    Display only: the doors add it to what they send, never to the run's messages, so it is
    never stored as the model's reasoning nor sent to the model."""
    try:
        arguments = orjson.dumps(orjson.loads(step.arguments)).decode()
    except orjson.JSONDecodeError:
        arguments = step.arguments
    result = step.output if step.output is not None else "(no result yet)"
    return (
        f"\n[{step.name}] {_clip(arguments, TOOL_STEP_ARGUMENTS_CHARS)} → "
        f"{_clip(result, TOOL_STEP_RESULT_CHARS) or '(no output)'}\n"
    )


def completion_body(
    result: RunResult,
    *,
    cid: str,
    model: str,
    session_id: str | None,
    tool_steps: bool = False,
) -> dict[str, Any]:
    """The chat-completion body of a run; with `tool_steps`, `reasoning_content` starts with a
    `tool_step_line` for each server tool step of the run (the run's result is not changed)."""
    reasoning = result.reasoning
    if tool_steps and result.tool_steps:
        reasoning = "".join(tool_step_line(s) for s in result.tool_steps) + (reasoning or "")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.content,
        "reasoning_content": reasoning,
    }
    if result.client_tool_calls:
        message["tool_calls"] = tool_calls_body(result.client_tool_calls)
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": usage_body(result.usage, result.thinking),
        "cascade": cascade_extension(result),
    }
    if session_id is not None:
        body["session_id"] = session_id
    return body


# ----------------------------------------------------------------------------- stream chunks


_TEXT_TAIL = b'},"finish_reason":null}]}\n\n'


class ChunkWriter:
    """Serialises the chunks of one streamed response."""

    __slots__ = ("_content_head", "_head", "_plain_head", "_reasoning_head")

    def __init__(self, *, cid: str, model: str) -> None:
        created = int(time.time())
        common = orjson.dumps(
            {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        )[:-1]
        self._plain_head = b"data: " + common
        self._head = self._plain_head + b',"choices":[{"index":0,"delta":{'
        # The text deltas (nearly every chunk): everything but the text, rendered once.
        self._content_head = self._head + b'"content":'
        self._reasoning_head = self._head + b'"reasoning_content":'

    def _delta(self, inner: bytes, finish: bytes = b"null", extra: bytes = b"") -> bytes:
        return self._head + inner + b'},"finish_reason":' + finish + b"}]" + extra + b"}\n\n"

    def role(self, session_id: str | None) -> bytes:
        extra = b',"session_id":' + orjson.dumps(session_id) if session_id else b""
        return self._delta(b'"role":"assistant","content":""', extra=extra)

    def content(self, text: str) -> bytes:
        return b"".join((self._content_head, orjson.dumps(text), _TEXT_TAIL))

    def reasoning(self, text: str) -> bytes:
        return b"".join((self._reasoning_head, orjson.dumps(text), _TEXT_TAIL))

    def tool_call(self, index: int, call_id: str | None, name: str | None, args: str) -> bytes:
        call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
        if call_id is not None:
            call["id"] = call_id
            call["type"] = "function"
        if name is not None:
            call["function"]["name"] = name
        return self._delta(b'"tool_calls":' + orjson.dumps([call]))

    def progress(self, info: dict[str, Any]) -> bytes:
        return self._delta(b"", extra=b',"cascade":' + orjson.dumps({"tool_progress": info}))

    def finish(self, reason: str, ext: dict[str, Any], session_id: str | None) -> bytes:
        extra = b',"cascade":' + orjson.dumps(ext)
        if session_id:
            extra += b',"session_id":' + orjson.dumps(session_id)
        return self._delta(b"", finish=orjson.dumps(reason), extra=extra)

    def usage(self, usage: Usage, thinking: ThinkingReport) -> bytes:
        body = orjson.dumps(usage_body(usage, thinking))
        return self._plain_head + b',"choices":[],"usage":' + body + b"}\n\n"

    def error(self, body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"
