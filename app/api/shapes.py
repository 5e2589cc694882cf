"""OpenAI chat-completion response bodies and stream chunks.

Stream chunks are written with pre-serialised byte prefixes: a content delta costs one
`orjson.dumps` of its text and a few byte concatenations, which is what keeps cascade's CPU per
relayed chunk small. Extension fields (`session_id`, `cascade`) are ignored by standard clients.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.agent.responses import usage_body
from app.runtime.models import ThinkingReport, Usage


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
