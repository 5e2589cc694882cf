"""Ollama's API shapes (`/api/chat`, `/api/generate`) and their translation to cascade's own.

- Requests: `OllamaChatRequest` and `OllamaGenerateRequest`, validated by `parse_chat` and
  `parse_generate` (a problem is an `InvalidRequestError` naming the field), then translated by
  `to_chat_request` into the `ChatRequest` the turn engine runs:
  - messages keep their order and index, so a check on `messages[i]` names the client's
    message `i`; `images` (base64 strings, as Ollama takes them) become `image_url` parts
    holding `data:` URIs, for the same image intake as every other door;
  - assistant `tool_calls` carry arguments as objects and often no id: they get a JSON-text
    argument string and, when missing, an id derived from their position; a `tool` message
    answers the call its `tool_call_id` names, else the first open call named `tool_name`,
    else the first open call (Home Assistant sends tool results with neither);
  - `think` is cascade's thinking: a bool turns it on or off, `low`/`medium`/`high` act as the
    chat door's `reasoning_effort`, `max` asks for the operator's maximum budget;
  - `format` (`"json"` or a JSON schema) is `response_format`;
  - `options`: `num_predict` → `max_tokens` (answer tokens; a negative value leaves the
    operator's default), `temperature`, `top_p`, `top_k`, `min_p`, `repeat_penalty`,
    `presence_penalty`, `frequency_penalty`, `stop`, `seed` → the sampling fields. `num_ctx`
    must be a positive whole number and is otherwise advisory: the runtime's context length
    is fixed when it is launched. Other options are accepted and have no effect;
  - `keep_alive` must be a number or a Go duration ("5m", "-1s"); the runtime keeps its model
    loaded regardless.
- Results: `OllamaWriter` writes the NDJSON lines of a streamed answer and the body of an
  unstreamed one, with Ollama's counters (`prompt_eval_count`, `eval_count`) and durations in
  nanoseconds (`Timings`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from app.agent.models import RunResult
from app.agent.protocol import (
    ChatRequest,
    check_messages,
    check_tool_offer,
    check_tool_results,
)
from app.errors import InvalidRequestError
from app.jsonbody import JsonBodyError, parse_json
from app.runtime.models import ToolCall

# A budget above any operator's maximum: `think: "max"` gets the maximum (the grant caps it).
MAX_THINKING = 1 << 30
# A Go duration ("5m", "1h30m", "-1s"), as `keep_alive` takes it besides plain seconds.
_UNIT = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h)"
_DURATION = re.compile(rf"-?{_UNIT}(?:{_UNIT})*")
_ROLES = ("system", "user", "assistant", "tool")


def _whole(value: Any) -> Any:
    """JSON numbers that are whole (8192 or 8192.0, as Home Assistant's number fields send)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


Whole = Annotated[int, BeforeValidator(_whole)]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class OllamaOptions(BaseModel):
    """The Modelfile options cascade maps; others are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    num_ctx: Whole | None = None
    num_predict: Whole | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Whole | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] | str | None = None
    seed: Whole | None = None


class OllamaFunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Annotated[Literal["system", "user", "assistant", "tool"], BeforeValidator(_lower)]
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


Think = bool | Literal["low", "medium", "high", "max"]
Format = Literal["", "json"] | dict[str, Any]


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    stream: bool = True  # Ollama streams unless told not to
    think: Think | None = None
    format: Format | None = None
    options: OllamaOptions | None = None
    keep_alive: float | str | None = None


class OllamaChatRequest(_Common):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(_Common):
    prompt: str = ""
    system: str | None = None
    images: list[str] | None = None
    # Not supported (no raw prompts, templates or fill-in-the-middle): refused, not ignored.
    suffix: str | None = None
    template: str | None = None
    raw: bool | None = None
    context: list[int] | None = None


_R = TypeVar("_R", bound=_Common)


def _bad(message: str, param: str | None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


_UNION_TAGS = frozenset({"bool", "str", "int", "float"})


def _field_path(loc: Sequence[int | str]) -> str:
    """A validation error's location as a field path, without the type names pydantic adds
    for the members of a union (`think.bool`, `format.dict[str,any]`)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_TAGS and "[" not in part and "(" not in part:
            path += f".{part}" if path else part
    return path


def _validated(model: type[_R], data: Any) -> _R:
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _field_path(first.get("loc", ()))
        raise _bad(f"{first.get('msg', 'invalid value')} at {loc}", loc or None) from None
    _check_common(req)
    return req


def _check_common(req: _Common) -> None:
    if isinstance(req.keep_alive, str) and not (
        _DURATION.fullmatch(req.keep_alive) or re.fullmatch(r"-?\d+", req.keep_alive)
    ):
        raise _bad(
            'keep_alive must be a number of seconds or a duration such as "5m"', "keep_alive"
        )
    options = req.options
    if options is not None and options.num_ctx is not None and options.num_ctx < 1:
        raise _bad("options.num_ctx must be a positive whole number", "options.num_ctx")
    if options is not None and options.num_predict == 0:
        raise _bad(
            "options.num_predict must be positive, or -1 for no limit", "options.num_predict"
        )


def parse_chat(data: Any) -> OllamaChatRequest:
    """An `/api/chat` body, validated; any problem is an `InvalidRequestError`."""
    return _validated(OllamaChatRequest, data)


def parse_generate(data: Any) -> OllamaGenerateRequest:
    """An `/api/generate` body, validated; fields cascade cannot honour are refused."""
    req = _validated(OllamaGenerateRequest, data)
    for name in ("suffix", "template", "context"):
        if getattr(req, name):
            raise _bad(f"{name} is not supported by cascade; use /api/chat", name)
    if req.raw:
        raise _bad("raw prompts are not supported: cascade applies the model's template", "raw")
    return req


# ----------------------------------------------------------------------------- translation


def image_uri(data: str) -> str:
    """An Ollama image (base64 of the file) as a `data:` URI. The type is left to the intake,
    which recognises the format from the bytes; a client that sends a `data:` URI keeps it."""
    if data.startswith("data:"):
        return data
    return "data:application/octet-stream;base64," + data


def _arguments(arguments: dict[str, Any] | str, at: str) -> str:
    if isinstance(arguments, str):
        # Leniency for clients that send OpenAI's JSON text: it must hold an object.
        try:
            parsed = parse_json(arguments) if arguments.strip() else {}
        except JsonBodyError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _bad("function.arguments must be an object", at)
        arguments = parsed
    return orjson.dumps(arguments).decode()


@dataclass
class _OpenCalls:
    """The calls of the last assistant message that no tool message has answered yet."""

    calls: list[tuple[str, str]] = field(default_factory=list)  # (id, name)

    def answer(self, call_id: str | None, name: str | None) -> str | None:
        index = next(
            (i for i, (cid, _) in enumerate(self.calls) if call_id and cid == call_id),
            None,
        )
        if index is None and name:
            index = next((i for i, (_, cname) in enumerate(self.calls) if cname == name), None)
        if index is None and not call_id and self.calls:
            index = 0
        if index is None:
            return None
        return self.calls.pop(index)[0]


def chat_messages(messages: Sequence[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama messages → cascade's (OpenAI-form) messages, one for one, in order."""
    out: list[dict[str, Any]] = []
    open_calls = _OpenCalls()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        text = message.content or ""
        item: dict[str, Any] = {"role": message.role, "content": text}
        if message.images:
            if message.role != "user":
                raise _bad("only user messages carry images", f"{where}.images")
            item["content"] = [
                *([{"type": "text", "text": text}] if text else []),
                *(
                    {"type": "image_url", "image_url": {"url": image_uri(image)}}
                    for image in message.images
                ),
            ]
        if message.role == "assistant":
            if message.thinking:
                item["reasoning_content"] = message.thinking
            calls: list[dict[str, Any]] = []
            open_calls = _OpenCalls()
            for j, call in enumerate(message.tool_calls or ()):
                made = call.id or f"call_{i}_{j}"
                arguments = _arguments(
                    call.function.arguments, f"{where}.tool_calls[{j}].function.arguments"
                )
                calls.append(
                    {
                        "id": made,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": arguments},
                    }
                )
                open_calls.calls.append((made, call.function.name))
            if calls:
                item["tool_calls"] = calls
        elif message.tool_calls:
            raise _bad("only assistant messages carry tool_calls", f"{where}.tool_calls")
        if message.role == "tool":
            answered = open_calls.answer(message.tool_call_id, message.tool_name)
            if answered is None:
                raise _bad(
                    f"{where} is a tool result, but no earlier assistant message made a tool "
                    "call it can answer",
                    where,
                )
            item["tool_call_id"] = answered
            if message.tool_name:
                item["name"] = message.tool_name
        out.append(item)
    return out


def _think(think: Think | None) -> dict[str, Any]:
    if think is None:
        return {}
    if isinstance(think, bool):
        return {"thinking": think}
    if think == "max":
        return {"thinking": True, "thinking_budget": MAX_THINKING}
    return {"reasoning_effort": think}


def _response_format(fmt: Format | None) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    assert isinstance(fmt, dict)
    try:
        Draft202012Validator.check_schema(fmt)
    except SchemaError:
        raise _bad('format must be "json" or a valid JSON Schema', "format") from None
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}


# ChatRequest fields → the Ollama field a client sent them in (for error messages).
_OPTION_NAMES = {
    "max_tokens": "options.num_predict",
    "temperature": "options.temperature",
    "top_p": "options.top_p",
    "top_k": "options.top_k",
    "min_p": "options.min_p",
    "repetition_penalty": "options.repeat_penalty",
    "presence_penalty": "options.presence_penalty",
    "frequency_penalty": "options.frequency_penalty",
    "stop": "options.stop",
    "seed": "options.seed",
    "reasoning_effort": "think",
}


def _sampling(options: OllamaOptions | None) -> dict[str, Any]:
    if options is None:
        return {}
    predict = options.num_predict
    return {
        "max_tokens": predict if predict is not None and predict > 0 else None,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": options.min_p,
        "repetition_penalty": options.repeat_penalty,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "stop": options.stop,
        "seed": options.seed,
    }


def to_chat_request(
    req: OllamaChatRequest | OllamaGenerateRequest, *, server_tools: list[str]
) -> ChatRequest:
    """The `ChatRequest` of an Ollama request (see the module docstring), offering the client's
    tools and exactly `server_tools` of cascade's (the door decides which)."""
    if isinstance(req, OllamaChatRequest):
        messages = chat_messages(req.messages)
        tools = req.tools
    else:
        prompt = OllamaMessage(role="user", content=req.prompt, images=req.images)
        system = [OllamaMessage(role="system", content=req.system)] if req.system else []
        messages = chat_messages([*system, prompt])
        tools = None
    data: dict[str, Any] = {
        "model": req.model or None,
        "messages": messages,
        "tools": tools or None,
        "stream": req.stream,
        "response_format": _response_format(req.format),
        "server_tools": server_tools,
        **_think(req.think),
        **_sampling(req.options),
    }
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        name = loc.split(".", 1)[0]
        param = _OPTION_NAMES.get(name, loc)
        raise _bad(f"{first.get('msg', 'invalid value')} at {param}", param or None) from None
    check_messages(chat.messages)
    try:
        check_tool_offer(chat)
    except InvalidRequestError as exc:
        if exc.param in _OPTION_NAMES:
            param = _OPTION_NAMES[exc.param]
            raise _bad(exc.message.replace(exc.param, param, 1), param) from None
        raise
    check_tool_results([], chat.messages)
    return chat


# ----------------------------------------------------------------------------- results


def timestamp() -> str:
    """Now, as Ollama writes `created_at` (RFC 3339, UTC)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Timings:
    """When a request started, when its run's first event came, when it ended (monotonic ns)."""

    started: int = field(default_factory=time.monotonic_ns)
    first: int | None = None
    ended: int | None = None

    def event(self) -> None:
        if self.first is None:
            self.first = time.monotonic_ns()

    def end(self) -> None:
        self.ended = time.monotonic_ns()


def done_reason(result: RunResult) -> str:
    """Ollama's `done_reason`: `length` when the answer was cut, else `stop` (tool calls
    included, as Ollama reports them)."""
    return "length" if result.finish_reason == "length" else "stop"


def ollama_tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    """Client tool calls in Ollama's form: arguments as an object, the call's id kept."""
    out = []
    for index, call in enumerate(calls):
        try:
            arguments = parse_json(call.function.arguments or "{}")
        except JsonBodyError:
            arguments = None
        out.append(
            {
                "id": call.id,
                "function": {
                    "index": index,
                    "name": call.function.name,
                    # The loop hands on only calls whose arguments are an object.
                    "arguments": arguments if isinstance(arguments, dict) else {},
                },
            }
        )
    return out


Kind = Literal["chat", "generate"]


class OllamaWriter:
    """The lines of one streamed answer (NDJSON) and the body of an unstreamed one, for
    `/api/chat` (`message`) or `/api/generate` (`response`, `thinking`)."""

    def __init__(self, *, model: str, kind: Kind) -> None:
        self.model = model
        self.kind = kind

    def _head(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": timestamp()}

    def _part(
        self, *, content: str = "", thinking: str | None = None, calls: list[dict[str, Any]]
    ) -> dict[str, Any]:
        if self.kind == "generate":
            part: dict[str, Any] = {"response": content}
            if thinking:
                part["thinking"] = thinking
            return part
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return {"message": message}

    @staticmethod
    def line(body: dict[str, Any]) -> bytes:
        return orjson.dumps(body) + b"\n"

    def content(self, text: str) -> bytes:
        return self.line({**self._head(), **self._part(content=text, calls=[]), "done": False})

    def thinking(self, text: str) -> bytes:
        return self.line({**self._head(), **self._part(thinking=text, calls=[]), "done": False})

    def tool_calls(self, calls: Sequence[ToolCall]) -> bytes:
        part = self._part(calls=ollama_tool_calls(calls))
        return self.line({**self._head(), **part, "done": False})

    def _done(self, result: RunResult, timings: Timings) -> dict[str, Any]:
        ended = timings.ended or time.monotonic_ns()
        first = timings.first or ended
        return {
            "done": True,
            "done_reason": done_reason(result),
            "total_duration": ended - timings.started,
            "load_duration": 0,  # the runtime keeps its model loaded
            "prompt_eval_count": result.usage.prompt_tokens,
            "prompt_eval_duration": first - timings.started,
            "eval_count": result.usage.completion_tokens,
            "eval_duration": ended - first,
        }

    def final(self, result: RunResult, timings: Timings) -> bytes:
        """The last line of a stream: no text, `done: true`, the counters."""
        return self.line({**self._head(), **self._part(calls=[]), **self._done(result, timings)})

    def body(self, result: RunResult, timings: Timings) -> dict[str, Any]:
        """The whole answer, unstreamed."""
        part = self._part(
            content=result.content,
            thinking=result.reasoning,
            calls=ollama_tool_calls(result.client_tool_calls),
        )
        return {**self._head(), **part, **self._done(result, timings)}

    def loaded(self, *, unload: bool) -> dict[str, Any]:
        """The answer to a request with nothing to say (Ollama's way to load or unload)."""
        return {
            **self._head(),
            **self._part(calls=[]),
            "done": True,
            "done_reason": "unload" if unload else "load",
        }

    @staticmethod
    def error(message: str) -> bytes:
        """A mid-stream error, as Ollama sends it once the response has started."""
        return orjson.dumps({"error": message}) + b"\n"


def is_unload(keep_alive: float | str | None) -> bool:
    """keep_alive 0 asks Ollama to unload the model."""
    if isinstance(keep_alive, str):
        return bool(re.fullmatch(r"-?0+(?:\.0*)?(?:ns|us|µs|ms|s|m|h)?", keep_alive))
    return keep_alive == 0
