"""OpenAI chat-completion response bodies (shared by the API and the batch workers)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from app.agent.models import RunResult
from app.runtime.models import ThinkingReport, ToolCall, Usage


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


def completion_body(
    result: RunResult, *, cid: str, model: str, session_id: str | None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.content,
        "reasoning_content": result.reasoning,
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
