"""Turning a `RuntimeRequest` into the JSON body SGLang 0.5.23's `/v1/chat/completions` accepts.

Pure functions, no I/O: the contract suite validates every body built here against SGLang's own
`ChatCompletionRequest` model.
"""

from __future__ import annotations

import secrets
from itertools import count
from typing import Any

from app.config import Settings
from app.errors import InvalidRequestError
from app.runtime.models import RuntimeRequest

_rid_counter = count(1)
_rid_prefix = secrets.token_hex(6)


def new_rid(kind: str = "c") -> str:
    """A request id unique in this process and never a prefix of another.

    SGLang aborts every request whose rid *starts with* the rid given to `/abort_request`, so each
    rid ends with a fixed-width counter followed by a terminator that no rid contains elsewhere.
    """
    return f"cascade-{_rid_prefix}-{kind}-{next(_rid_counter):012d}."


def check_temperature(temperature: float | None, settings: Settings) -> None:
    """Reject greedy decoding unless the operator allowed it (the model loops when greedy)."""
    if temperature is not None and temperature == 0 and not settings.allow_greedy:
        raise InvalidRequestError(
            "temperature 0 is not allowed: this model falls into repetition loops when decoded "
            "greedily; use the default 0.7 (the operator can allow it with "
            "CASCADE_ALLOW_GREEDY=true)",
            param="temperature",
            code="greedy_decoding_disabled",
        )


def grant_budget(requested: int | None, settings: Settings) -> int:
    """The thinking budget a call gets: the request's, else the default, capped by the maximum."""
    budget = requested if requested is not None else settings.thinking_budget_default
    if budget < 1:
        raise InvalidRequestError("thinking_budget must be at least 1", param="thinking_budget")
    return min(budget, settings.thinking_budget_max)


def answer_allowance(req: RuntimeRequest, settings: Settings) -> int:
    """Tokens the answer (content and tool calls) may use beyond the reasoning: the caller's
    `max_tokens`, else the configured default. The thinking budget comes on top, so reasoning
    never starves it."""
    return req.max_answer_tokens or settings.answer_tokens_default


def runtime_max_tokens(req: RuntimeRequest, settings: Settings) -> int:
    """`max_tokens` for the runtime, which counts reasoning *plus* answer.

    With a budget N, strict thinking gives N + 1 reasoning tokens at most (the forced
    `</think>` included), so N + 1 + the allowance lets the answer have exactly its allowance
    when the runtime holds the budget. Reasoning that ends earlier would leave the answer more
    room: the budget guard cuts such an answer at its allowance (`app.runtime.guard`).
    """
    answer = answer_allowance(req, settings)
    if req.thinking and req.thinking_budget is not None:
        return req.thinking_budget + 1 + answer
    return answer


def build_chat_body(
    req: RuntimeRequest,
    settings: Settings,
    *,
    model: str,
    rid: str,
    stream: bool,
) -> dict[str, Any]:
    """The request body for SGLang. Sampling defaults come from the model card via settings."""
    sampling = req.sampling
    check_temperature(sampling.temperature, settings)
    body: dict[str, Any] = {
        "model": model,
        "messages": req.messages,
        "rid": rid,
        "stream": stream,
        # max_completion_tokens: SGLang 0.5.23 deprecates max_tokens (a warning per request).
        "max_completion_tokens": runtime_max_tokens(req, settings),
        # The model card's sampling unless the request set its own; the other sampling
        # fields are sent only when set.
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k,
        "repetition_penalty": settings.repetition_penalty,
        **sampling.model_dump(exclude_none=True),
        "separate_reasoning": True,
        # Always preserve: past turns then render as generated, think blocks included, which
        # keeps the previous prompt + output a prefix of this one (app/agent/prompt.py).
        "chat_template_kwargs": {"enable_thinking": req.thinking, "preserve_thinking": True},
    }
    if stream:
        # Per-chunk usage lets the budget guard count reasoning tokens exactly.
        body["stream_reasoning"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if req.thinking and req.thinking_budget is not None:
        body["custom_params"] = {"thinking_budget": req.thinking_budget}
    if req.tools:
        body["tools"] = req.tools
        body["tool_choice"] = req.tool_choice if req.tool_choice is not None else "auto"
    elif req.tool_choice is not None and req.tool_choice != "none":
        raise InvalidRequestError("tool_choice was given without tools", param="tool_choice")
    if req.continue_final_message:
        body["continue_final_message"] = True
    if req.priority is not None:
        body["priority"] = req.priority
    return body
