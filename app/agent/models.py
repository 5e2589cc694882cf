"""The agent loop's inputs, step results, events and outcome.

A run takes the stored history plus new input, and produces the messages to append (assistant
turns with reasoning kept apart, server tool calls and their results) and how it ended.

Each model call of the loop is decided into one `Step`:

- `Final`: the model answered (no tool call);
- `RunTools`: the model called tools; the server-side ones run now, then either the loop goes
  on, or the run ends because a client tool was called or a write call waits for the user;
- `Repair`: the model's tool call could not be used; it is told why and tries once more.

A run ends (`RunResult.end`) in one of:

- `Final`: the model answered;
- `ClientTools`: the model called tools the client declared; they are returned to the client in
  OpenAI form and the run resumes when the client sends `role: "tool"` results;
- `Paused`: a `write` tool needs the user's OK before it runs (`confirm_tool_calls`, or, in a
  stateless chat, a plain "yes" to the question in `Paused.prompt`);
- `MaxSteps`: the step cap was reached before an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.runtime.models import Sampling, ThinkingReport, ToolCall, Usage

Outcome = Literal["final", "client_tools", "max_steps", "confirmation_required"]


@dataclass
class RunConfig:
    """Everything a run needs besides the conversation. Built by the turn engine."""

    thinking: bool = False
    thinking_budget: int | None = None  # granted for the whole run (all steps)
    preserve_thinking: bool = False
    max_steps: int = 8
    server_tools: list[str] = field(default_factory=list)  # enabled built-in/MCP tools
    client_tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI tool defs
    tool_choice: str | dict[str, Any] | None = None
    max_answer_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    confirm_pause_ids: set[str] = field(default_factory=set)  # `confirm_tool_calls`
    routing_key: str | None = None
    priority: int | None = None


# ----------------------------------------------------------------------------- step results


@dataclass
class Final:
    content: str
    reasoning: str | None
    finish_reason: str  # stop | length


@dataclass
class RunTools:
    server: list[ToolCall]
    client: list[ToolCall]
    content: str
    reasoning: str | None


@dataclass
class Repair:
    problems: list[str]


Step = Final | RunTools | Repair


@dataclass
class ClientTools:
    calls: list[ToolCall]
    content: str
    reasoning: str | None


@dataclass
class Paused:
    pending: dict[str, Any]  # pause_id, the first call's call_id/tool/arguments, all calls
    # The question put to the user as the answer (a stateless chat approves in plain text);
    # None: the client confirms with `confirm_tool_calls`.
    prompt: str | None = None


@dataclass
class MaxSteps:
    steps: int
    content: str


RunEnd = Final | ClientTools | Paused | MaxSteps


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
    """A server-side tool step: `started` then `finished` (or `failed`).

    `arguments` is the call's JSON text; `output` the result the model is told, once there is
    one (None while started, and for a call that waits for confirmation)."""

    step: int
    call_id: str
    name: str
    status: Literal["started", "finished", "failed"]
    arguments: str = ""
    output: str | None = None


@dataclass
class RunResult:
    end: RunEnd
    new_messages: list[dict[str, Any]]  # to append to the session, in order
    usage: Usage
    thinking: ThinkingReport
    steps: int
    tool_steps: list[ToolProgress] = field(default_factory=list)  # this run's, as they ended

    @property
    def outcome(self) -> Outcome:
        match self.end:
            case Final():
                return "final"
            case ClientTools():
                return "client_tools"
            case Paused():
                return "confirmation_required"
            case MaxSteps():
                return "max_steps"

    @property
    def content(self) -> str:
        match self.end:
            case Final(content=text) | ClientTools(content=text) | MaxSteps(content=text):
                return text
            case Paused(prompt=prompt):
                return prompt or ""

    @property
    def reasoning(self) -> str | None:
        match self.end:
            case Final(reasoning=text) | ClientTools(reasoning=text):
                return text
            case _:
                return None

    @property
    def finish_reason(self) -> str:
        """Always matches the message: `tool_calls` only when it carries tool calls (or, for a
        pause the client confirms by id, the call it waits for is in `cascade`)."""
        match self.end:
            case Final(finish_reason=reason):
                return reason
            case Paused(prompt=str()):
                return "stop"
            case ClientTools() | Paused():
                return "tool_calls"
            case MaxSteps():
                return "length"

    @property
    def client_tool_calls(self) -> list[ToolCall]:
        return self.end.calls if isinstance(self.end, ClientTools) else []

    @property
    def pending_confirmation(self) -> dict[str, Any] | None:
        return self.end.pending if isinstance(self.end, Paused) else None


@dataclass(slots=True)
class RunDone:
    result: RunResult


AgentEvent = ReasoningDelta | ContentDelta | ClientToolCallDelta | ToolProgress | RunDone
