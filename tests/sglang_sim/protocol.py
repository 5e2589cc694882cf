"""The wire format of SGLang 0.5.23's `/v1/chat/completions`, as the simulator speaks it.

`ChatRequest` validates a request body the way SGLang's pydantic `ChatCompletionRequest`
does for the fields cascade uses (unknown fields are ignored, as there). The `*_dict`
builders produce response objects with SGLang's key order and null/omitted fields:

- non-streaming: `ChatCompletionResponse.model_dump_json()` (serving_chat.py
  `_build_chat_response`);
- streaming: two shapes, as in serving_chat.py. Role, reasoning, plain content (no tool
  parsing) and finish chunks come from sse_utils.py `build_sse_content` (msgspec,
  `omit_defaults`: the delta always carries `reasoning_content`, carries `role`/`content`
  only when set, and the chunk has no `usage` key unless usage is attached). Content and
  tool-call chunks while the tool parser is active, and the usage chunk, are pydantic
  `ChatCompletionStreamResponse` dumps (every delta field present, `usage: null`).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field, field_validator, model_validator

__all__ = [
    "MAX_STOP_COUNT",
    "AbortRequest",
    "ChatRequest",
    "ChunkHead",
    "error_dict",
    "light_chunk_dict",
    "model_chunk_dict",
    "response_dict",
    "tool_call_dict",
    "usage_chunk_dict",
    "usage_dict",
]

# sampling/sampling_params.py
MAX_STOP_COUNT = 32

_TOOL_ROLES = ("root", "system", "developer")
_GENERIC_ROLES = ("system", "assistant", "tool", "function", "developer", "latest_reminder", "root")


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _ThinkingPart(BaseModel):
    type: Literal["thinking", "reasoning"]
    thinking: str | None = None
    text: str | None = None


class _ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = "auto"


class _ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: _ImageURL


class _VideoURL(BaseModel):
    # SGLang 0.5.23's ChatCompletionMessageContentVideoURL.
    url: str
    max_dynamic_patch: int | None = None
    min_dynamic_patch: int | None = None
    fps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_frames: int | None = Field(default=None, gt=0)
    max_tokens_per_frame: int | None = Field(default=None, gt=0)
    max_image_tokens: int | None = Field(default=None, gt=0)
    max_long_side_pixel: int | None = None


class _VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: _VideoURL


_ContentPart = _TextPart | _ThinkingPart | _ImagePart | _VideoPart


class _FunctionResponse(BaseModel):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class _ToolCall(BaseModel):
    id: str | None = None
    index: int | None = None
    type: Literal["function"] = "function"
    function: _FunctionResponse


class _Function(BaseModel):
    description: str | None = None
    name: str
    parameters: object | None = None
    strict: bool | None = None


class _Tool(BaseModel):
    type: str = "function"
    function: _Function


class _GenericMessage(BaseModel):
    role: str
    content: str | list[_ContentPart] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tools: list[_Tool] | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("'role' must be a string")
        if value.lower() not in _GENERIC_ROLES:
            allowed = ", ".join(repr(role) for role in _GENERIC_ROLES)
            raise ValueError(f"'role' must be one of {allowed} (case-insensitive).")
        return value.lower()


class _UserMessage(BaseModel):
    role: Literal["user"]
    content: str | list[_ContentPart]


class _ToolChoiceFunction(BaseModel):
    name: str | None = None


class _ToolChoice(BaseModel):
    function: _ToolChoiceFunction
    type: Literal["function"] = "function"


class _StreamOptions(BaseModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class ChatRequest(BaseModel):
    """The fields of SGLang's `ChatCompletionRequest` that the simulator reads or validates."""

    messages: list[_GenericMessage | _UserMessage]
    model: str = "default"
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logprobs: bool = False
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | Literal["auto", "required", "none"] = "auto"
    parallel_tool_calls: bool = True
    reasoning_effort: str | float | None = None
    separate_reasoning: bool = True
    stream_reasoning: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    custom_params: dict[str, Any] | None = None
    continue_final_message: bool = False
    rid: list[str] | str | None = None
    priority: int | None = None
    session_id: str | None = None
    cache_salt: list[str] | str | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_tool_choice(cls, values: Any) -> Any:
        # SGLang: tool_choice defaults to "none" without tools and to "auto" with them.
        if isinstance(values, dict) and values.get("tool_choice") is None:
            messages = values.get("messages")
            message_tools = isinstance(messages, list) and any(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and m["role"].lower() in _TOOL_ROLES
                and m.get("tools")
                for m in messages
            )
            values = dict(values)
            values["tool_choice"] = (
                "none" if values.get("tools") is None and not message_tools else "auto"
            )
        return values

    @model_validator(mode="before")
    @classmethod
    def _reasoning_switches(cls, values: Any) -> Any:
        # SGLang's normalize_reasoning_inputs: `reasoning_effort` (or a `reasoning` object)
        # sets enable_thinking/thinking in chat_template_kwargs unless the client set them.
        if not isinstance(values, dict):
            return values
        thinking: bool | None = None
        reasoning = values.get("reasoning")
        if isinstance(reasoning, dict):
            effort = reasoning.get("effort", reasoning.get("reasoning_effort"))
            if effort is not None:
                values = {**values, "reasoning_effort": effort}
            enabled = reasoning.get("enabled", reasoning.get("enable", False))
            if isinstance(enabled, str):
                enabled = enabled.strip().lower() in {"1", "true", "yes", "y", "on"}
            if enabled:
                thinking = True
        effort = values.get("reasoning_effort")
        if effort is not None:
            thinking = effort != "none"
        if thinking is not None:
            kwargs = values.get("chat_template_kwargs")
            kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
            kwargs.setdefault("thinking", thinking)
            kwargs.setdefault("enable_thinking", thinking)
            values = {**values, "chat_template_kwargs": kwargs}
        return values

    @field_validator("reasoning_effort", mode="before")
    @classmethod
    def _effort_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("reasoning_effort must not be a boolean")
        return value

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def effective_tools(self) -> list[_Tool]:
        """serving_chat.py `_effective_tools`: request tools, then system/developer/root ones."""
        tools = list(self.tools or [])
        for message in self.messages:
            if isinstance(message, _GenericMessage) and message.role in _TOOL_ROLES:
                tools.extend(message.tools or [])
        return tools

    @property
    def has_message_tools(self) -> bool:
        return any(
            isinstance(m, _GenericMessage) and m.role in _TOOL_ROLES and m.tools
            for m in self.messages
        )


def error_dict(message: str, err_type: str, code: int) -> dict[str, Any]:
    """protocol.py `ErrorResponse` as SGLang dumps it."""
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": code}


def usage_dict(
    *,
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
    cached_tokens: int | None,
    image_tokens: int = 0,
) -> dict[str, Any]:
    """usage_processor.py `calculate_token_usage` dumped as `UsageInfo`.

    `cached_tokens` None means the cache report is off (no `prompt_tokens_details` unless
    images were counted). `completion_tokens_details` is set only when there were reasoning
    tokens.
    """
    details: dict[str, Any] | None = None
    if cached_tokens is not None:
        details = {"cached_tokens": cached_tokens}
    if image_tokens:
        details = details or {"cached_tokens": 0}
        details["image_tokens"] = image_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": details,
        "reasoning_tokens": reasoning_tokens,
        "completion_tokens_details": (
            {"reasoning_tokens": reasoning_tokens} if reasoning_tokens else None
        ),
    }


def tool_call_dict(
    *, call_id: str | None, index: int, name: str | None, arguments: str
) -> dict[str, Any]:
    """protocol.py `ToolCall` dump."""
    return {
        "id": call_id,
        "index": index,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def response_dict(
    *,
    rid: str,
    created: int,
    model: str,
    content: str,
    reasoning_content: str | None,
    tool_calls: list[dict[str, Any]] | None,
    finish_reason: str | None,
    matched_stop: int | str | None,
    usage: dict[str, Any],
    weight_version: str,
) -> dict[str, Any]:
    """A non-streaming `ChatCompletionResponse` (n = 1)."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "reasoning_content": reasoning_content,
    }
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason,
                "matched_stop": matched_stop,
            }
        ],
        "usage": usage,
        "metadata": {"weight_version": weight_version},
    }


class ChunkHead(NamedTuple):
    """The fields every chunk of one stream repeats."""

    rid: str
    created: int
    model: str


def _head(head: ChunkHead) -> dict[str, Any]:
    return {
        "id": head.rid,
        "object": "chat.completion.chunk",
        "created": head.created,
        "model": head.model,
    }


def light_chunk_dict(
    head: ChunkHead,
    *,
    role: str | None = None,
    content: str | None = None,
    reasoning_content: str | None = None,
    finish_reason: str | None = None,
    matched_stop: int | str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """sse_utils.py `build_sse_content`: msgspec structs with `omit_defaults`."""
    delta: dict[str, Any] = {"reasoning_content": reasoning_content}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk: dict[str, Any] = {
        **_head(head),
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
                "matched_stop": matched_stop,
            }
        ],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def model_chunk_dict(
    head: ChunkHead,
    *,
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pydantic `ChatCompletionStreamResponse` dump (content or tool-call delta)."""
    delta: dict[str, Any] = {"role": None, "content": content, "reasoning_content": None}
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {
        **_head(head),
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": None,
                "matched_stop": None,
            }
        ],
        "usage": usage,
    }


def usage_chunk_dict(head: ChunkHead, usage: dict[str, Any]) -> dict[str, Any]:
    """The final usage chunk (`choices: []`)."""
    return {**_head(head), "choices": [], "usage": usage}


class AbortRequest(BaseModel):
    """io_struct.py `AbortReq` as `/abort_request` reads it."""

    rid: str = ""
    abort_all: bool = False
