"""Incremental decoding of SGLang's server-sent events into `Chunk`s.

SGLang writes one `data: <json>\\n\\n` event per chunk and ends with `data: [DONE]`. Bytes arrive
in arbitrary pieces, so the decoder buffers until a blank line. It never blocks and never holds
more than one partial event.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.runtime.models import Chunk, FinishReason, ToolCallDelta, Usage

_FINISH_REASONS: frozenset[str] = frozenset(
    {"stop", "length", "tool_calls", "abort", "content_filter"}
)


class StreamProtocolError(Exception):
    """The runtime sent something that is not an SGLang chat-completion stream."""


class StreamErrorEvent(Exception):
    """The runtime sent an error event mid-stream (its text is for logs, not clients)."""

    def __init__(self, upstream_message: str, upstream_code: int | None) -> None:
        super().__init__(upstream_message)
        self.upstream_message = upstream_message
        self.upstream_code = upstream_code


DONE = object()


class SSEDecoder:
    """Feed bytes, get each complete event's data (`decode_payload` makes it a dict or `DONE`)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def payloads(self, data: bytes) -> list[bytes]:
        """The data of each event that `data` completes, still to be decoded
        (`decode_payload`) in order, so that what precedes a malformed event can be handed on
        first; events without data (comments, keep-alives) are left out."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = buf.split(b"\n\n")
        self._buf = events.pop()  # what follows the last blank line: a partial event, or b""
        out = []
        for event in events:
            # SGLang's events are one `data: ` line each: taken without splitting lines.
            if event.startswith(b"data: ") and b"\n" not in event:
                if len(event) > 6:
                    out.append(event[6:])
            else:
                payload = _event_data(event)
                if payload:
                    out.append(payload)
        return out

    @property
    def pending(self) -> bool:
        """True when a partial event is buffered (a stream cut mid-event)."""
        return bool(self._buf.strip())


def _event_data(event: bytes) -> bytes:
    payload = b""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            piece = line[5:]
            if piece.startswith(b" "):
                piece = piece[1:]
            payload = piece if not payload else payload + b"\n" + piece
        # Comments (":") and other fields (event:, id:, retry:) carry nothing for us.
    return payload


def decode_payload(payload: bytes) -> dict[str, Any] | object:
    """One event's data → its JSON object, or `DONE`; raises `StreamProtocolError` for
    anything else."""
    if payload == b"[DONE]":
        return DONE
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise StreamProtocolError("malformed stream event") from exc
    if not isinstance(obj, dict):
        raise StreamProtocolError("stream event is not an object")
    return obj


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    reasoning = raw.get("reasoning_tokens")
    if reasoning is None:
        reasoning = completion_details.get("reasoning_tokens")
    return Usage(
        prompt_tokens=raw.get("prompt_tokens") or 0,
        completion_tokens=raw.get("completion_tokens") or 0,
        total_tokens=raw.get("total_tokens") or 0,
        reasoning_tokens=reasoning or 0,
        cached_tokens=(details.get("cached_tokens") if isinstance(details, dict) else 0) or 0,
    )


def parse_usage(raw: Any) -> Usage:
    """Usage from a response body; missing fields (they vary by SGLang version) read as 0."""
    return _usage(raw) or Usage()


def chunk_from_event(obj: dict[str, Any]) -> Chunk | None:
    """One SGLang stream event → a `Chunk`, or None when it carries nothing.

    Raises `StreamErrorEvent` for an error event.
    """
    choices = obj.get("choices")
    if not choices:
        if "error" in obj and "choices" not in obj:
            err = obj["error"]
            if isinstance(err, dict):
                code = err.get("code")
                raise StreamErrorEvent(
                    str(err.get("message", "")), code if isinstance(code, int) else None
                )
            raise StreamErrorEvent(str(err), None)
        usage = _usage(obj.get("usage"))
        return Chunk(usage=usage) if usage is not None else None
    choice = choices[0]
    delta = choice.get("delta") or {}
    reasoning = delta.get("reasoning_content") or None
    content = delta.get("content") or None
    raw_calls = delta.get("tool_calls")
    finish = choice.get("finish_reason")
    if reasoning is None and content is None and not raw_calls and finish is None:
        return None  # e.g. the opening role chunk: nothing to relay
    usage_raw = obj.get("usage")
    return Chunk(
        reasoning_content=reasoning,
        content=content,
        tool_calls=_tool_call_deltas(raw_calls) if raw_calls else None,
        finish_reason=None if finish is None else as_finish_reason(finish),
        # continuous_usage_stats: running counts on every chunk.
        completion_tokens=usage_raw.get("completion_tokens")
        if isinstance(usage_raw, dict)
        else None,
    )


def _tool_call_deltas(raw_calls: Any) -> list[ToolCallDelta]:
    calls = []
    for i, call in enumerate(raw_calls):
        fn = call.get("function") or {}
        idx = call.get("index")
        calls.append(
            ToolCallDelta(
                index=idx if isinstance(idx, int) else i,
                id=call.get("id"),
                name=fn.get("name"),
                arguments=fn.get("arguments") or "",
            )
        )
    return calls


def as_finish_reason(value: Any) -> FinishReason:
    return value if value in _FINISH_REASONS else "stop"
