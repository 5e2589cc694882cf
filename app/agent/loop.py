"""The agent loop: history + new input → runtime → tool calls? → tools → runtime … → answer.

One `AgentRun` is one client request. Each model call is decided into a typed step (`Final`,
`RunTools`, `Repair`; see `app.agent.models`) that `events()` matches on; the run ends in a
typed `RunEnd` (`Final`, `ClientTools`, `Paused`, `MaxSteps`) carried by `RunDone`. Contracts:

- one thinking budget covers the whole run: each step gets what earlier steps left;
- server tools run concurrently, each under its own timeout and output cap (the registry's);
  a tool failure is the tool's output for the model, never a crash of the run;
- client tools (declared in the request) end the run with `finish_reason: "tool_calls"`; server
  calls of the same step run first and their results are part of the run's messages;
- a forcing `tool_choice` ("required" or a named tool) applies to the model's first reply, as
  in OpenAI's API: once tool results follow it (run here, sent by the client, or a confirmed
  pause resumed), every later step is sent with "auto". SGLang enforces a forced choice with a
  grammar on each call that carries it, so re-sending it would force a call on every step;
- a tool call left in the reasoning or content as text is repaired when it parses cleanly into a
  known tool; otherwise the model is told what was wrong and gets one more try;
- a JSON `response_format` is handled by `app.agent.structured`: never sent on a step that
  offers tool calls, the answer checked (and retried once) before its text is streamed;
- `new_messages` (and `partial_messages()` after an interruption) are whole messages only:
  an interrupted step contributes its text so far as one assistant message, marked interrupted;
- `on_end`, when given, sees the result of a run that ended (not one cut short) before the
  caller does, and may replace it; a pause it gives a `prompt` streams that prompt as content.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Sequence,
)
from contextlib import aclosing, contextmanager
from typing import Any, Literal

import structlog

from app import metrics, tracing
from app.agent.models import (
    AgentEvent,
    ClientToolCallDelta,
    ClientTools,
    ContentDelta,
    Final,
    MaxSteps,
    Paused,
    ReasoningDelta,
    Repair,
    RunConfig,
    RunDone,
    RunEnd,
    RunResult,
    RunTools,
    Step,
    ToolProgress,
)
from app.agent.prompt import image_refs, runtime_messages
from app.agent.repair import extract_calls, has_call_markup
from app.agent.structured import StructuredAnswer
from app.errors import CascadeError, InvalidRequestError
from app.media.intake import ImageIntake
from app.runtime.aggregate import CompletionBuilder
from app.runtime.body import new_rid
from app.runtime.guard import Runtime
from app.runtime.models import (
    Completion,
    RuntimeRequest,
    ThinkingReport,
    ToolCall,
    Usage,
)
from tools.registry import ConfirmationRequired, ToolContext, ToolPolicy, ToolRegistry, ToolResult

log = structlog.get_logger(__name__)

REPAIR_HINT = (
    "[cascade] Your last tool call could not be used: {problems}. Write the call again, outside "
    "the reasoning, in the exact <tool_call><function=NAME><parameter=KEY>VALUE</parameter>"
    "</function></tool_call> format."
)


class AgentRun:
    """One run of the loop for one request. Not reusable."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        registry: ToolRegistry | None,
        media: ImageIntake | None,
        history: Sequence[dict[str, Any]],
        new_messages: Sequence[dict[str, Any]],
        config: RunConfig,
        policy: ToolPolicy | None,
        owner: str,
        session_id: str | None,
        redis: Any = None,
        stream: bool = True,
        approved_pause: str | None = None,
        on_end: Callable[[RunResult], Awaitable[RunResult]] | None = None,
    ) -> None:
        """`approved_pause`: the id of the pause that ends `new_messages`, approved through the
        turn engine's ledger (cascade's own record, never client text): its calls run first."""
        self.runtime = runtime
        self.registry = registry
        self.media = media
        self.history = list(history)
        self.config = config
        self.policy = policy
        self.owner = owner
        self.session_id = session_id
        self.redis = redis
        self.stream = stream
        self.approved_pause = approved_pause
        self.on_end = on_end
        self.produced: list[dict[str, Any]] = list(new_messages)
        self.current_rid: str | None = None
        self._streamed_client_calls = 0
        self.pending: dict[str, Any] | None = None
        self._step_reasoning: list[str] = []
        self._step_content: list[str] = []
        self.usage = Usage()
        self.thinking_used = 0
        self.guard_closed = False
        self.steps = 0
        self.tool_steps: list[ToolProgress] = []
        self.client_names = [t["function"]["name"] for t in config.client_tools]
        server = set(config.server_tools)
        if registry is not None:
            # The client's tool wins a name (the turn engine leaves such server tools out).
            server &= set(registry.names()) - set(self.client_names)
        else:
            server = set()
        self.server_names = server
        server_defs = registry.schemas(sorted(server)) if registry is not None and server else []
        self.tool_defs: list[dict[str, Any]] = [*server_defs, *config.client_tools]
        self.tool_params = {
            t["function"]["name"]: t["function"].get("parameters") or {} for t in self.tool_defs
        }
        self._check_tool_choice()
        # A JSON answer format: checked, retried once and withheld from tool steps (structured.py).
        self.answer = StructuredAnswer.for_request(config.sampling.response_format)
        self.confirmed: set[str] = set()
        self.resumed = self._confirmed_pause()
        # Tool results after the last reply: the model already answered the forced choice.
        conversation = [*self.history, *self.produced]
        self.tools_answered = bool(self.resumed) or bool(
            conversation and conversation[-1].get("role") == "tool"
        )

    # ------------------------------------------------------------------ helpers

    def partial_messages(self) -> list[dict[str, Any]]:
        """Messages to store after an interruption: whole ones, plus the cut step marked."""
        out = list(self.produced)
        if self._step_content or self._step_reasoning:
            out.append(
                {
                    "role": "assistant",
                    "content": "".join(self._step_content),
                    "reasoning_content": "".join(self._step_reasoning) or None,
                    "meta": {"interrupted": True},
                }
            )
        elif out and out[-1].get("role") != "assistant":
            out.append({"role": "assistant", "content": "", "meta": {"interrupted": True}})
        return out

    def _budget_left(self) -> int | None:
        if self.config.thinking_budget is None:
            return None
        return self.config.thinking_budget - self.thinking_used

    def _request(self, messages: list[dict[str, Any]]) -> RuntimeRequest:
        left = self._budget_left()
        thinking = self.config.thinking and (left is None or left > 0)
        # Built from checked parts (the request was validated at the door, the tool schemas
        # at registration): constructing it without validating again saves a copy of the
        # whole history and every tool schema per step.
        req = RuntimeRequest.model_construct(
            messages=messages,
            tools=self.tool_defs or None,
            tool_choice=self._tool_choice() if self.tool_defs else None,
            thinking=thinking,
            thinking_budget=left if thinking else None,
            preserve_thinking=self.config.preserve_thinking,
            max_answer_tokens=self.config.max_answer_tokens,
            routing_key=self.config.routing_key,
            priority=self.config.priority,
            sampling=self.config.sampling,
        )
        return self.answer.shape(req) if self.answer is not None else req

    def _tool_choice(self) -> str | dict[str, Any] | None:
        """The request's tool_choice, except that a forcing one ends with the first reply."""
        choice = self.config.tool_choice
        forcing = choice == "required" or isinstance(choice, dict)
        return "auto" if forcing and self.tools_answered else choice

    async def _call_model(self, req: RuntimeRequest) -> AsyncIterator[AgentEvent | Completion]:
        """One model call; streams text events (and client tool-call deltas), then the result."""
        rid = new_rid()
        self.current_rid = rid
        self._step_reasoning = []
        self._step_content = []
        self._streamed_client_calls = 0
        if not self.stream:
            with _runtime_call(rid, stream=False):
                completion = await self.runtime.complete(req, rid=rid)
            yield completion
            return
        builder = CompletionBuilder()
        # The step's text so far is the builder's (what partial_messages() stores when cut).
        self._step_reasoning = builder.reasoning
        self._step_content = builder.content
        relay_content = self.answer is None  # a structured answer is sent once it is checked
        client_index: dict[int, int] = {}
        with _runtime_call(rid, stream=True):
            async with aclosing(self.runtime.stream(req, rid=rid)) as chunks:
                async for chunk in chunks:
                    builder.add(chunk)
                    if chunk.reasoning_content:
                        yield ReasoningDelta(chunk.reasoning_content)
                    if chunk.content and relay_content:
                        yield ContentDelta(chunk.content)
                    for delta in chunk.tool_calls or ():
                        # Client calls stream on as they arrive, renumbered among client calls;
                        # server calls are the loop's business and stay in.
                        if delta.index in client_index:
                            if delta.arguments:
                                yield ClientToolCallDelta(
                                    client_index[delta.index], None, None, delta.arguments
                                )
                            continue
                        call_id, name, args = builder.call(delta.index)
                        if name in self.client_names:
                            client_index[delta.index] = len(client_index)
                            yield ClientToolCallDelta(client_index[delta.index], call_id, name, "")
                            if args:
                                yield ClientToolCallDelta(
                                    client_index[delta.index], None, None, args
                                )
        self._streamed_client_calls = len(client_index)
        yield builder.build(rid=rid, model="")

    async def _run_tool(self, call: ToolCall, images: list[dict[str, Any]]) -> ToolResult:
        name = call.function.name
        if self.registry is None or name not in self.server_names:
            known = ", ".join(sorted(self.tool_params)) or "none"
            return ToolResult(
                text=f"error: there is no tool named {name!r} (available: {known})",
                is_error=True,
                refused=True,
            )
        ctx = ToolContext(
            owner=self.owner,
            session_id=self.session_id,
            redis=self.redis,
            media=self.media,
            conversation_images=images,
            confirmed_call_ids=set(self.confirmed),
            call_id=call.id,
        )
        policy = self.policy or ToolPolicy(enabled=None, allow_write=False, confirm_write=False)
        with tracing.span("tool_call", tool=name, call_id=call.id):
            return await self.registry.execute(name, call.function.arguments, ctx, policy)

    # ------------------------------------------------------------------ the loop

    async def _execute(self, calls: list[ToolCall]) -> AsyncIterator[AgentEvent]:
        """Run server-side calls concurrently; append their results in call order."""
        images = image_refs([*self.history, *self.produced])
        for call in calls:
            yield ToolProgress(
                self.steps, call.id, call.function.name, "started", call.function.arguments
            )
        results = await asyncio.gather(
            *(self._run_tool(c, images) for c in calls), return_exceptions=True
        )
        extra_user_parts: list[dict[str, Any]] = []
        paused: list[ToolCall] = []
        for call, result in zip(calls, results, strict=True):
            self._count_tool(call, result)
            if isinstance(result, ConfirmationRequired):
                # No result yet: the call stays unanswered in the history until the session's
                # owner confirms the pause (`confirm_tool_calls: [pause_id]`) and the run resumes.
                paused.append(call)
                yield self._ended(call, "failed", None)
                continue
            if isinstance(result, BaseException):
                log.error("tool_crashed", tool=call.function.name, exc_type=type(result).__name__)
                text = "error: the tool failed unexpectedly"
                status: Literal["finished", "failed"] = "failed"
            else:
                text = result.text or ("(no output)" if not result.images else "")
                status = "failed" if result.is_error else "finished"
                if result.images:
                    extra_user_parts.extend(result.images)
                    text = (text + "\n" if text else "") + (
                        f"({len(result.images)} image(s) follow in the next message)"
                    )
            self.produced.append({"role": "tool", "tool_call_id": call.id, "content": text})
            self.tools_answered = True
            yield self._ended(call, status, text)
        if paused:
            self._pause(paused)
        if extra_user_parts:
            # Images go to the model in a user turn: tool turns carry text only in every template.
            self.produced.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "[tool output images]"},
                        *extra_user_parts,
                    ],
                    "meta": {"tool_images": True},
                }
            )

    def _count_tool(self, call: ToolCall, result: ToolResult | BaseException) -> None:
        name = call.function.name
        if isinstance(result, ConfirmationRequired):
            outcome = "paused"
        elif isinstance(result, BaseException) or result.is_error:
            outcome = "refused" if isinstance(result, ToolResult) and result.refused else "error"
        else:
            outcome = "ok"
        label = metrics.tool_label(name, name in self.server_names)
        metrics.TOOL_CALLS.labels(label, outcome).inc()

    def _ended(
        self, call: ToolCall, status: Literal["finished", "failed"], output: str | None
    ) -> ToolProgress:
        """The end of a server call's step, kept for the run's result."""
        ended = ToolProgress(
            self.steps, call.id, call.function.name, status, call.function.arguments, output
        )
        self.tool_steps.append(ended)
        return ended

    def _check_tool_choice(self) -> None:
        choice = self.config.tool_choice
        if choice is None or choice in ("auto", "none"):
            return
        if not self.tool_defs:
            raise InvalidRequestError(
                "tool_choice asks for a tool call, but no tool is offered (no client tools and "
                "no server tools in this request)",
                param="tool_choice",
            )
        if isinstance(choice, dict):
            name = choice["function"]["name"]
            if name not in self.tool_params:
                offered = ", ".join(sorted(self.tool_params))
                raise InvalidRequestError(
                    f"tool_choice names {name!r}, which is not offered (offered: {offered})",
                    param="tool_choice",
                )

    def _pause(self, calls: list[ToolCall]) -> None:
        """Mark the step's assistant message with a pause id that only cascade issues.

        The mark lives in `meta`, which cascade strips from every client message, so a pause can
        only come from a run cascade made and stored, never from history a client sent.
        """
        pause_id = "pause_" + secrets.token_hex(12)
        for message in reversed(self.produced):
            if message.get("role") == "assistant":
                message.setdefault("meta", {})["pause"] = {
                    "id": pause_id,
                    "call_ids": [c.id for c in calls],
                }
                break
        first = calls[0]
        self.pending = {
            "pause_id": pause_id,
            "call_id": first.id,
            "tool": first.function.name,
            "arguments": first.function.arguments,
            "calls": [
                {"call_id": c.id, "tool": c.function.name, "arguments": c.function.arguments}
                for c in calls
            ],
        }

    def _confirmed_pause(self) -> list[ToolCall]:
        """The paused calls to run now: those of the stored history's open pause, if this
        request confirms its id (anything else that `confirm_tool_calls` names is refused), or
        those of the `approved_pause` the turn engine took from its ledger.

        Only cascade's own records count (a session, loaded for its owner; a ledger entry, read
        for its owner); calls in messages the client sent are history to show the model, never
        instructions to run.
        """
        wanted = self.config.confirm_pause_ids
        if wanted:
            pause = open_pause(self.history) if not self.produced else None
            if pause is None or pause[0] not in wanted or len(wanted) > 1:
                raise InvalidRequestError(
                    "confirm_tool_calls must name the pause_id of the session's paused tool "
                    "call (send it with session_id and no new messages)",
                    param="confirm_tool_calls",
                )
        elif self.approved_pause is not None:
            pause = open_pause(self.produced)
            if pause is None or pause[0] != self.approved_pause:
                return []
        else:
            return []
        message, call_ids = pause[1], set(pause[2])
        self.confirmed = call_ids
        return [
            ToolCall.model_validate(c)
            for c in message.get("tool_calls") or []
            if c.get("id") in call_ids
            and (c.get("function") or {}).get("name") in self.server_names
        ]

    def _decide(self, completion: Completion) -> Step:
        """Turn one model call into a step, and append its assistant message."""
        calls = [c for c in completion.tool_calls if c.function.name]
        content = completion.content
        reasoning = completion.reasoning_content
        problems: list[str] = []
        if len(calls) < len(completion.tool_calls):
            problems.append("a tool call without a function name")
        for field_name in ("content", "reasoning"):
            text = content if field_name == "content" else reasoning
            if not has_call_markup(text):
                continue
            found = extract_calls(text or "", self.tool_params)
            calls.extend(found.calls)
            problems.extend(found.problems)
            if field_name == "content":
                content = found.remaining_text
            if found.calls:
                log.info("tool_call_repaired", where=field_name, count=len(found.calls))
        if not calls and not problems and swallowed(completion, bool(self.tool_defs)):
            problems.append("the runtime could not read it (no answer text and no valid tool call)")
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "reasoning_content": reasoning,
        }
        if calls:
            assistant["tool_calls"] = [c.model_dump() for c in calls]
        if completion.finish_reason == "length":
            assistant["meta"] = {"truncated": True}
        self.produced.append(assistant)
        if problems and not calls:
            return Repair(problems)
        if not calls:
            # No call in the message: the finish reason says so, whatever the runtime said.
            finish = "length" if completion.finish_reason == "length" else "stop"
            return Final(content, reasoning, finish)
        return RunTools(
            server=[c for c in calls if c.function.name not in self.client_names],
            client=[c for c in calls if c.function.name in self.client_names],
            content=content,
            reasoning=reasoning,
        )

    async def events(self) -> AsyncGenerator[AgentEvent, None]:
        """Drive the run: stream events, then `RunDone` with how it ended (see `RunEnd`)."""
        repair_tried = False
        end: RunEnd | None = None
        if self.resumed:
            async for event in self._execute(self.resumed):
                yield event
            if self.pending is not None:
                end = Paused(self.pending)
        while end is None and self.steps < self.config.max_steps:
            self.steps += 1
            with tracing.span("agent_step", step=self.steps):
                messages = await runtime_messages(
                    [*self.history, *self.produced],
                    self.media,
                    keep_reasoning=self.config.preserve_thinking,
                )
                completion: Completion | None = None
                async for item in self._call_model(self._request(messages)):
                    if isinstance(item, Completion):
                        completion = item
                    else:
                        yield item
                assert completion is not None
                self.current_rid = None
                self._step_content, self._step_reasoning = [], []
                self.usage = self.usage.plus(completion.usage)
                self.thinking_used += completion.thinking.used
                self.guard_closed = self.guard_closed or completion.thinking.closed_by_guard

                match self._decide(completion):
                    case Repair(problems) if not repair_tried:
                        repair_tried = True
                        log.info("tool_call_unusable", problems=problems)
                        hint = REPAIR_HINT.format(problems="; ".join(problems))
                        self.produced.append({"role": "user", "content": hint})
                    case Repair():
                        # The retry was unusable too: the run ends with what the model said.
                        last = self.produced[-1]
                        end = Final(last["content"], last["reasoning_content"], "stop")
                    case Final() as final if self.answer is not None:
                        accepted = self.answer.judge(final, self.produced)
                        if accepted is not None:
                            end = accepted
                            if self.stream and accepted.content:
                                yield ContentDelta(accepted.content)
                    case Final() as final:
                        end = final
                    case RunTools(
                        server=server, client=client, content=content, reasoning=reasoning
                    ):
                        if self.stream and client:
                            # Calls repaired from text were not streamed as deltas: send them whole.
                            already = self._streamed_client_calls
                            for offset, call in enumerate(client[already:]):
                                yield ClientToolCallDelta(
                                    already + offset,
                                    call.id,
                                    call.function.name,
                                    call.function.arguments,
                                )
                        if server:
                            async for event in self._execute(server):
                                yield event
                        if self.pending is not None:
                            end = Paused(self.pending)
                        elif client:
                            end = ClientTools(client, content, reasoning)
        if end is None:
            log.warning("agent_max_steps", steps=self.steps)
            text = (
                f"[cascade] Stopped after {self.steps} tool steps without a final answer "
                "(max_steps reached)."
            )
            self.produced.append(
                {"role": "assistant", "content": text, "meta": {"outcome": "max_steps"}}
            )
            if self.stream:
                yield ContentDelta(text)
            end = MaxSteps(self.steps, text)
        result = RunResult(
            end=end,
            new_messages=list(self.produced),
            usage=self.usage,
            thinking=ThinkingReport(
                enabled=self.config.thinking,
                budget=self.config.thinking_budget,
                used=self.thinking_used,
                closed_by_guard=self.guard_closed,
            ),
            steps=self.steps,
            tool_steps=list(self.tool_steps),
        )
        usage = self.usage
        metrics.run_finished(
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
            usage.reasoning_tokens,
        )
        if self.on_end is not None:
            result = await self.on_end(result)
            if self.stream and isinstance(result.end, Paused) and result.end.prompt:
                yield ContentDelta(result.end.prompt)
        yield RunDone(result)

    async def run(self) -> RunResult:
        """Drive the run to the end and return its result (no deltas)."""
        async with aclosing(self.events()) as events:
            async for event in events:
                if isinstance(event, RunDone):
                    return event.result
        raise AssertionError("run ended without a result")


@contextmanager
def _runtime_call(rid: str, *, stream: bool) -> Iterator[None]:
    """One model call: its span, and its failure counted by the error's code."""
    with tracing.span("runtime_call", rid=rid, stream=stream):
        try:
            yield
        except CascadeError as exc:
            metrics.RUNTIME_ERRORS.labels(exc.code).inc()
            raise


def swallowed(completion: Completion, tools_offered: bool) -> bool:
    """The model produced answer tokens but nothing came out: the runtime's tool parser ate a
    malformed call (SGLang drops a `<tool_call>` block it cannot parse). Never silently."""
    if not tools_offered or completion.finish_reason != "stop" or completion.content.strip():
        return False
    usage = completion.usage
    return usage.completion_tokens > usage.reasoning_tokens + 1


def open_pause(
    history: Sequence[dict[str, Any]],
) -> tuple[str, dict[str, Any], list[str]] | None:
    """The stored history's open pause: (pause id, its assistant message, paused call ids),
    when the history ends with a paused step whose calls have no results yet."""
    for index in range(len(history) - 1, -1, -1):
        message = history[index]
        if message.get("role") == "tool":
            continue
        pause = (
            (message.get("meta") or {}).get("pause") if message.get("role") == "assistant" else None
        )
        if not pause:
            return None
        answered = {m.get("tool_call_id") for m in history[index + 1 :]}
        open_ids = [c for c in pause.get("call_ids", []) if c not in answered]
        return (pause["id"], message, open_ids) if open_ids else None
    return None
