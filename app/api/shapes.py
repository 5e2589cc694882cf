"""OpenAI chat-completion response bodies and stream chunks.

Stream chunks are written with pre-serialised byte prefixes: a content delta costs one
`orjson.dumps` of its text and a few byte concatenations, which is what keeps cascade's CPU per
relayed chunk small. Extension fields (`session_id`, `cascade`) are ignored by standard clients.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

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


class ChunkWriter:
    """Serialises the chunks of one streamed response."""

    __slots__ = ("_head", "_plain_head")

    def __init__(self, *, cid: str, model: str) -> None:
        created = int(time.time())
        common = orjson.dumps(
            {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        )[:-1]
        self._plain_head = b"data: " + common
        self._head = self._plain_head + b',"choices":[{"index":0,"delta":{'

    def _delta(self, inner: bytes, finish: bytes = b"null", extra: bytes = b"") -> bytes:
        return self._head + inner + b'},"finish_reason":' + finish + b"}]" + extra + b"}\n\n"

    def role(self, session_id: str | None) -> bytes:
        extra = b',"session_id":' + orjson.dumps(session_id) if session_id else b""
        return self._delta(b'"role":"assistant","content":""', extra=extra)

    def content(self, text: str) -> bytes:
        return self._delta(b'"content":' + orjson.dumps(text))

    def reasoning(self, text: str) -> bytes:
        return self._delta(b'"reasoning_content":' + orjson.dumps(text))

    def tool_call(self, index: int, call_id: str | None, name: str | None, args: str) -> bytes:
        call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
        if call_id is not None:
            call["id"] = call_id
            call["type"] = "function"
        if name is not None:
            call["function"]["name"] = name
        return self._delta(b'"tool_calls":' + orjson.dumps([call]))

    def progress(self, info: dict[str, Any]) -> bytes:
        return self._delta(b"", extra=b',"cascade":' + orjson.dumps({"tool_progress": info}))

    def finish(self, reason: str, ext: dict[str, Any], session_id: str | None) -> bytes:
        extra = b',"cascade":' + orjson.dumps(ext)
        if session_id:
            extra += b',"session_id":' + orjson.dumps(session_id)
        return self._delta(b"", finish=orjson.dumps(reason), extra=extra)

    def usage(self, usage: Usage, thinking: ThinkingReport) -> bytes:
        body = orjson.dumps(usage_body(usage, thinking))
        return self._plain_head + b',"choices":[],"usage":' + body + b"}\n\n"

    def error(self, body: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(body) + b"\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"
