"""The agent loop's inputs, step results, events and outcome.

A run takes the stored history plus new input, and produces the messages to append (assistant
turns with reasoning kept apart, server tool calls and their results) and an outcome:

- `final`: the model answered;
- `client_tools`: the model called tools the client declared; they are returned to the client
  in OpenAI form and the run resumes when the client sends `role: "tool"` results;
- `max_steps`: the step cap was reached before an answer;
- `confirmation_required`: a `write` tool needs the user's OK before it runs;
- `interrupted`: the client went away mid-run (the runtime request was aborted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import CascadeError
from app.runtime.models import ThinkingReport, ToolCall, Usage

Outcome = Literal["final", "client_tools", "max_steps", "confirmation_required", "interrupted"]


class MaxStepsExceeded(CascadeError):
    """The run used all its steps on tool calls without an answer (stored as outcome)."""

    status = 200
    code = "max_steps"


@dataclass
class RunConfig:
    """Everything a run needs besides the conversation. Built by the API from the request."""

    thinking: bool = False
    thinking_budget: int | None = None  # granted for the whole run (all steps)
    preserve_thinking: bool = False
    max_steps: int = 8
    server_tools: list[str] = field(default_factory=list)  # enabled built-in/MCP tools
    client_tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool defs
    tool_choice: str | dict[str, Any] | None = None
    max_answer_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    confirm_pause_ids: set[str] = field(default_factory=set)  # `confirm_tool_calls`
    routing_key: str | None = None
    priority: int | None = None


# ----------------------------------------------------------------------------- step results


@dataclass
class Final:
    content: str
    reasoning: str | None


@dataclass
class RunTools:
    calls: list[ToolCall]


@dataclass
class ClientTools:
    calls: list[ToolCall]


@dataclass
class Interrupted:
    reason: str


Step = Final | RunTools | ClientTools | Interrupted


# ----------------------------------------------------------------------------- stream events


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ContentDelta:
    text: str


@dataclass(slots=True)
class ClientToolCallDelta:
    """A piece of a client tool call, in OpenAI streaming form (index within this response)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(slots=True)
class ToolProgress:
    """A server-side tool step: `started` then `finished` (or `failed`)."""

    step: int
    call_id: str
    name: str
    status: Literal["started", "finished", "failed"]


@dataclass
class RunResult:
    outcome: Outcome
    content: str
    reasoning: str | None
    new_messages: list[dict[str, Any]]  # to append to the session, in order
    client_tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    thinking: ThinkingReport
    steps: int
    pending_confirmation: dict[str, Any] | None = None


@dataclass(slots=True)
class RunDone:
    result: RunResult


AgentEvent = ReasoningDelta | ContentDelta | ClientToolCallDelta | ToolProgress | RunDone
