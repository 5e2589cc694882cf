"""The turn engine: the one place where an agent run is assembled.

Every door (the chat API, batch workers, and any door to come) translates its wire format into
a `ChatRequest` and calls `assemble_turn`; none builds an `AgentRun` itself. Here, and only here:

- the run config is resolved from the request, the session's options and the operator's
  defaults, under the operator's tool policy (a request may narrow it, never widen it);
- the server tools offered are the fewest that serve the turn: a request that declares its own
  `tools` gets server tools only when `server_tools` names them (or the operator says
  otherwise), and a tool is offered only when what it needs is there (`tools.registry.Need`:
  an image in the conversation for `image_zoom`, Redis for the memory tools). The offer
  depends on the conversation only, so it stays byte-identical from turn to turn (it grows
  once, when a first image arrives);
- new messages are normalised to the stored form, and a session turn's tool results are
  checked against the calls its stored history made;
- images and videos in the new messages are checked, processed and stored under one per-turn
  budget (`ImageBudget`), and replaced by `image_ref` / `video_ref` parts;
- the operator's system prompt is added to a conversation that starts without one;
- a stateless turn (no session, no stored history but a system message, not `store`) goes
  through the ledger (`app/sessions/ledger.py`, one Redis round trip to read): each plain
  assistant message the client resent (no reasoning, no tool calls of its own) is replaced by
  the steps recorded when cascade produced it, so the model sees its earlier reasoning and tool
  steps and the prompt renders as it did before; the run's own steps are recorded when it
  ends. A write call that pauses is asked about in plain text (`app/agent/approval.py`), and
  the pause kept in the ledger; the next message of that exact conversation, from the same
  owner, approves it (the call runs, once) or declines it (the model is told it was not run).

`assemble_turn` does no model call and writes nothing but images (content-addressed, so a retry
repeats nothing visible) and a taken ledger pause; the run it returns is driven by the caller,
and records the ledger entries itself when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app.agent.approval import approval_prompt, declined_results, is_approval
from app.agent.loop import AgentRun
from app.agent.models import Final, Paused, RunConfig, RunResult
from app.agent.prompt import image_refs
from app.agent.protocol import (
    ChatRequest,
    check_tool_results,
    is_task_prompt,
    normalise_messages,
)
from app.agent.structured import answer_format
from app.config import Settings
from app.errors import InvalidRequestError
from app.media.intake import MEDIA_PART_TYPES, ImageBudget, ImageIntake
from app.runtime.body import check_temperature, grant_budget
from app.runtime.guard import Runtime
from app.sessions.ledger import ClientHistory, Ledger, Pause, Steps
from app.sessions.models import SessionOptions
from tools.registry import Need, ToolPolicy, ToolRegistry

log = structlog.get_logger(__name__)


class PartsIngest(Protocol):
    """Replaces a message's image parts by stored `image_ref` parts, spending `budget`."""

    async def __call__(
        self, parts: list[dict[str, Any]], *, owner: str, budget: ImageBudget
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class TurnServices:
    """What assembling and running a turn needs; one per process, built at start."""

    settings: Settings
    runtime: Runtime
    registry: ToolRegistry | None
    policy: ToolPolicy  # the operator's
    media: ImageIntake | None
    redis: aioredis.Redis | None
    ledger: Ledger | None = None  # None: no Redis, stateless turns are taken as sent


@dataclass
class AssembledTurn:
    run: AgentRun
    images: list[dict[str, Any]] = field(default_factory=list)  # refs of the new images


async def assemble_turn(
    services: TurnServices,
    req: ChatRequest,
    *,
    owner: str,
    stream: bool,
    history: Sequence[dict[str, Any]] = (),
    options: SessionOptions | None = None,
    priority: int | None = None,
    ingest: PartsIngest | None = None,
    ledger: bool = True,
) -> AssembledTurn:
    """Assemble the run for one turn (see the module docstring).

    `history` and `options` are a session's (empty for a stateless request); `ingest` replaces
    the intake's own image ingestion (batch workers share fetches between items); `ledger`
    False keeps a stateless turn out of the ledger (a door whose clients never resend a
    conversation, such as batch items).
    """
    settings = services.settings
    config, policy = run_config(
        req, settings, options or SessionOptions(), services.registry, services.policy
    )
    config.priority = priority
    new = normalise_messages(req.messages)
    if req.session_id is not None:
        check_tool_results(list(history), new)
    # Stateless: nothing stored holds this conversation (instructions alone are not history).
    stateless = (
        req.session_id is None and not req.store and all(m.get("role") == "system" for m in history)
    )
    plan = (
        await _LedgerTurn.open(services.ledger, owner, new)
        if ledger and stateless and services.ledger is not None
        else None
    )
    images = await ingest_media(services.media, new, owner=owner, ingest=ingest)
    if plan is not None:
        new = plan.conversation(new)  # after intake: recorded steps hold stored images only
    if services.registry is not None:
        present: list[Need] = ["redis"] if services.redis is not None else []
        if images or image_refs(history):
            present.append("images")
        config.server_tools = services.registry.usable(config.server_tools, present)
        policy.enabled = set(config.server_tools)
    if not history and settings.system_prompt and new and new[0]["role"] != "system":
        new.insert(0, {"role": "system", "content": settings.system_prompt})
    run = AgentRun(
        runtime=services.runtime,
        registry=services.registry,
        media=services.media,
        history=history,
        new_messages=new,
        config=config,
        policy=policy,
        owner=owner,
        session_id=req.session_id,
        redis=services.redis,
        stream=stream,
        approved_pause=plan.approved if plan is not None else None,
        on_end=plan.finish if plan is not None else None,
    )
    if plan is not None:
        plan.input_len = len(new) - plan.tail_len
    return AssembledTurn(run=run, images=images)


def _plain_answer(message: dict[str, Any]) -> bool:
    """An assistant message as a stateless client resends cascade's answers: text only."""
    return (
        message.get("role") == "assistant"
        and not message.get("reasoning_content")
        and not message.get("tool_calls")
    )


def _without_meta(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k != "meta"} for m in messages]


class _LedgerTurn:
    """One stateless turn's use of the ledger: what it read, and what it records at the end.

    Indices are the client's: `base` is the first client message the run's recorded steps will
    stand for (the answer's own index unless an approved pause is resumed, which stands for its
    question and the yes too); the run's messages from `input_len` on are what it produced
    (`tail_len` of them, a resumed pause's, came from the ledger).
    """

    def __init__(self, ledger: Ledger, owner: str, history: ClientHistory) -> None:
        self.ledger = ledger
        self.owner = owner
        self.history = history
        self.base = len(history)
        self.steps: dict[int, Steps] = {}
        self.pause: Pause | None = None
        self.approved: str | None = None
        self.declined: list[tuple[str, Steps]] = []
        self.tail_len = 0
        self.input_len = 0

    @classmethod
    async def open(
        cls, ledger: Ledger, owner: str, messages: Sequence[dict[str, Any]]
    ) -> _LedgerTurn:
        """Read what the ledger holds for `messages` (the client's, normalised, before intake):
        recorded steps of its plain assistant messages, and a pause its last message answers."""
        turn = cls(ledger, owner, ClientHistory(owner, messages))
        wanted = {
            i: turn.history.digest("steps", i + 1)
            for i, message in enumerate(messages)
            if _plain_answer(message)
        }
        n = len(messages)
        answers_question = n >= 2 and messages[-1]["role"] == "user" and (n - 2) in wanted
        pause_digest = turn.history.digest("pause", n - 1) if answers_question else None
        try:
            read = await ledger.read(owner, list(wanted.values()), pause_digest)
        except RedisError as exc:
            # The ledger only adds to a turn: without it the turn runs as the client sent it.
            log.warning("ledger_read_failed", exc_type=type(exc).__name__)
            return turn
        turn.steps = {i: read.steps[d] for i, d in wanted.items() if d in read.steps}
        if read.pause is not None and read.pause.span <= n - 1:
            turn.pause = read.pause
        return turn

    def _expanded(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with each recorded answer replaced by its steps (the latest first, so a
        span that covers earlier messages wins over their own entries)."""
        blocks: list[list[dict[str, Any]]] = []
        index = len(messages) - 1
        while index >= 0:
            entry = self.steps.get(index)
            if entry is not None and entry.span <= index + 1:
                blocks.append([dict(m) for m in entry.messages])
                index -= entry.span
            else:
                blocks.append([messages[index]])
                index -= 1
        return [message for block in reversed(blocks) for message in block]

    def conversation(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The conversation the run starts from (see the class docstring)."""
        pause = self.pause
        if pause is None:
            return self._expanded(messages)
        n = len(messages)
        start = n - 1 - pause.span  # the first client message the pause stands for
        before = self._expanded(messages[:start])
        if is_approval(messages[-1]):
            self.approved = pause.pause_id
            self.base = start
            self.tail_len = len(pause.messages)
            return [*before, *pause.messages]
        declined = [
            *_without_meta(pause.messages),
            *declined_results([c["call_id"] for c in pause.calls]),
        ]
        # The question now stands for the declined call: recorded so later turns see it too.
        self.declined.append(
            (self.history.digest("steps", n - 1), Steps(span=pause.span, messages=declined))
        )
        return [*before, *declined, messages[-1]]

    async def finish(self, result: RunResult) -> RunResult:
        """Record the run's steps (an answer worth it) or its pause (then the result asks the
        user); a ledger that cannot be written leaves the result as the run made it."""
        produced = result.new_messages[self.input_len :]
        span = len(self.history) - self.base + 1
        steps = list(self.declined)
        pause: tuple[str, Pause] | None = None
        prompt: str | None = None
        match result.end:
            case Final(content=text):
                recorded = _without_meta(produced)
                # A bare answer is what the client resends anyway: nothing to keep.
                if (
                    span > 1
                    or len(recorded) > 1
                    or any(m.get("reasoning_content") for m in recorded)
                ):
                    answered = self.history.then({"role": "assistant", "content": text})
                    steps.append((answered.digest("steps"), Steps(span=span, messages=recorded)))
            case Paused(pending=pending):
                prompt = approval_prompt(pending["calls"])
                asked = self.history.then({"role": "assistant", "content": prompt})
                paused = Pause(
                    pause_id=pending["pause_id"],
                    owner=self.owner,
                    span=span,
                    messages=produced,
                    calls=pending["calls"],
                )
                pause = (asked.digest("pause"), paused)
            case _:
                pass
        try:
            await self.ledger.write(self.owner, steps, pause)
        except RedisError as exc:
            log.warning("ledger_write_failed", exc_type=type(exc).__name__)
            return result
        if prompt is not None and isinstance(result.end, Paused):
            return replace(result, end=replace(result.end, prompt=prompt))
        return result


async def ingest_media(
    media: ImageIntake | None,
    messages: list[dict[str, Any]],
    *,
    owner: str,
    ingest: PartsIngest | None = None,
    param: str | None = None,
) -> list[dict[str, Any]]:
    """Check, process and store the images and videos of `messages` under one budget
    (`ImageBudget`), replacing each message's parts in place by `image_ref` / `video_ref`
    parts; returns the refs (sha256, width, height) of the images.

    `ingest` replaces the intake's own ingestion (see `assemble_turn`). Media on a server
    without an intake is a 400, naming `param` when given.
    """
    with_media = [
        m
        for m in messages
        if isinstance(m.get("content"), list)
        and any(p.get("type") in MEDIA_PART_TYPES for p in m["content"])
    ]
    if not with_media:
        return []
    if media is None:
        raise InvalidRequestError("images are not enabled on this server", param=param)
    budget = ImageBudget.from_settings(media.settings)
    images: list[dict[str, Any]] = []
    for message in with_media:
        if ingest is not None:
            parts = await ingest(message["content"], owner=owner, budget=budget)
        else:
            parts = await media.ingest_message_parts(message["content"], owner=owner, budget=budget)
        message["content"] = parts
        images.extend(
            {k: p[k] for k in ("sha256", "width", "height")}
            for p in parts
            if p.get("type") == "image_ref"
        )
    return images


EFFORT_BUDGETS = {"minimal": 512, "low": 1024, "medium": 4096, "high": 12000}


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
    Server tools nobody named (neither the request's nor the session's `server_tools`) are
    all available ones, except for a request that declares its own `tools`: it gets none unless
    the operator's policy says `server_tools_with_client_tools`; and a chat UI's background task
    call (`is_task_prompt`) gets none unless `task_prompts_without_tools` is off. A client tool
    named like a server tool wins: that server tool is left out of the request's offer, so a
    call to the name goes back to the client (stateless UIs such as Open WebUI bring their own
    `calculator`).
    """
    base_policy = base_policy or ToolPolicy()  # the safe default: no writes
    check_temperature(req.temperature, settings)
    answer_format(req.response_format)  # a malformed format is a 400 before any run
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
    if wanted is None and settings.task_prompts_without_tools and is_task_prompt(req):
        wanted = []  # a UI's title/tags/follow-up call: tool schemas would only cost prompt
    if wanted is None:
        wanted = available if not req.tools or base_policy.server_tools_with_client_tools else []
    unknown = sorted(set(wanted) - set(available))
    if unknown and req.server_tools is not None:
        raise InvalidRequestError(
            f"unknown server tool(s): {', '.join(unknown)}; "
            f"available: {', '.join(available) or 'none'}",
            param="server_tools",
        )
    client_names = {t.function.name for t in req.tools or []}
    config = RunConfig(
        thinking=thinking,
        thinking_budget=budget,
        preserve_thinking=(
            req.preserve_thinking
            if req.preserve_thinking is not None
            else options.preserve_thinking
        ),
        max_steps=settings.agent_max_steps,
        server_tools=[name for name in wanted if name in available and name not in client_names],
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
        server_tools_with_client_tools=base_policy.server_tools_with_client_tools,
    )
    return config, policy
