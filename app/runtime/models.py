"""Typed requests to and results from the runtime.

`RuntimeRequest` is what the agent asks for; `app.runtime.body.build_chat_body` turns it into the
JSON SGLang 0.5.23 accepts. `Completion` and `Chunk` are what comes back, with reasoning kept apart
from content. `Chunk` is a slotted dataclass rather than a pydantic model because one is made per
relayed stream event (hundreds per answer) and validation happens once, in the SSE decoder.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FinishReason = Literal["stop", "length", "tool_calls", "abort", "content_filter"]


class Sampling(BaseModel):
    """The sampling fields a request may set; each unset one takes the operator's default.

    The one list of them: the chat request accepts exactly these (it extends this model), the
    run carries them as this object, and the runtime body is written from it.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: list[str] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: object) -> object:
        """OpenAI accepts a single stop string as well as a list."""
        return [value] if isinstance(value, str) else value

    def sampling(self) -> Sampling:
        """Just the sampling fields (of a model that extends this one)."""
        return Sampling(**{name: getattr(self, name) for name in Sampling.model_fields})


class RuntimeRequest(BaseModel):
    """One generation the agent wants from the model.

    `thinking_budget` is the reasoning-token budget already granted (capped) by the caller; the
    runtime client enforces it with the budget guard. `max_answer_tokens` bounds the answer
    (content and tool calls) *beyond* the reasoning, so a budget can never starve the answer.
    """

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    thinking: bool = False
    thinking_budget: int | None = Field(default=None, ge=1)
    preserve_thinking: bool = False
    max_answer_tokens: int | None = Field(default=None, ge=1)
    sampling: Sampling = Field(default_factory=Sampling)
    continue_final_message: bool = False
    priority: int | None = None
    routing_key: str | None = Field(
        default=None, description="Sent as x-smg-routing-key so a router keeps a session's cache."
    )


class ToolCallFunction(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """A tool call in OpenAI form (`arguments` is JSON text)."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Usage(BaseModel):
    """Token counts; every detail is optional upstream, so absent ones read as 0."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    def plus(self, other: Usage) -> Usage:
        """Usage of two calls of one run: prompts and completions add up."""
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
        )


class ThinkingReport(BaseModel):
    """What happened to the thinking budget of one call (or one run)."""

    enabled: bool
    budget: int | None = None
    used: int = 0
    closed_by_guard: bool = False


class Completion(BaseModel):
    """A finished generation."""

    rid: str
    model: str
    content: str = ""
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage = Field(default_factory=Usage)
    thinking: ThinkingReport = Field(default_factory=lambda: ThinkingReport(enabled=False))


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: `id`/`name` on its first piece, argument text after."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Chunk:
    """One streamed event from the runtime, reduced to what cascade relays.

    `completion_tokens` is the running count when the runtime reports it per chunk
    (`continuous_usage_stats`), else None. `usage` and `thinking` come on the last chunk only.
    """

    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: FinishReason | None = None
    completion_tokens: int | None = None
    usage: Usage | None = None
    thinking: ThinkingReport | None = None
    rid: str = ""


class RuntimeHealth(BaseModel):
    """What `Runtime.health()` found; never raises for an unreachable runtime."""

    reachable: bool
    healthy: bool
    model: str | None = None
    model_path: str | None = None
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None
    has_image_understanding: bool | None = None
    detail: str = ""


ChunkStream = AsyncGenerator[Chunk, None]
