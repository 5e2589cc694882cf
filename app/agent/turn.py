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
- images in the new messages are checked, processed and stored under one per-turn budget
  (`ImageBudget`), and replaced by `image_ref` parts;
- the operator's system prompt is added to a conversation that starts without one.

`assemble_turn` does no model call and writes nothing but images (content-addressed, so a retry
repeats nothing visible); the run it returns is driven by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis

from app.agent.loop import AgentRun
from app.agent.models import RunConfig
from app.agent.prompt import image_refs
from app.agent.protocol import ChatRequest, check_tool_results, normalise_messages
from app.agent.structured import answer_format
from app.config import Settings
from app.errors import InvalidRequestError
from app.media.intake import IMAGE_PART_TYPES, ImageBudget, ImageIntake
from app.runtime.body import check_temperature, grant_budget
from app.runtime.guard import Runtime
from app.sessions.models import SessionOptions
from tools.registry import Need, ToolPolicy, ToolRegistry


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
) -> AssembledTurn:
    """Assemble the run for one turn (see the module docstring).

    `history` and `options` are a session's (empty for a stateless request); `ingest` replaces
    the intake's own image ingestion (batch workers share fetches between items).
    """
    settings = services.settings
    config, policy = run_config(
        req, settings, options or SessionOptions(), services.registry, services.policy
    )
    config.priority = priority
    new = normalise_messages(req.messages)
    if req.session_id is not None:
        check_tool_results(list(history), new)
    images = await _ingest_images(services, new, owner=owner, ingest=ingest)
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
    )
    return AssembledTurn(run=run, images=images)


async def _ingest_images(
    services: TurnServices,
    messages: list[dict[str, Any]],
    *,
    owner: str,
    ingest: PartsIngest | None,
) -> list[dict[str, Any]]:
    with_images = [
        m
        for m in messages
        if isinstance(m.get("content"), list)
        and any(p.get("type") in IMAGE_PART_TYPES for p in m["content"])
    ]
    if not with_images:
        return []
    media = services.media
    if media is None:
        raise InvalidRequestError("images are not enabled on this server")
    budget = ImageBudget.from_settings(media.settings)
    images: list[dict[str, Any]] = []
    for message in with_images:
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
    the operator's policy says `server_tools_with_client_tools`.
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
    if wanted is None:
        wanted = available if not req.tools or base_policy.server_tools_with_client_tools else []
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
        server_tools_with_client_tools=base_policy.server_tools_with_client_tools,
    )
    return config, policy
