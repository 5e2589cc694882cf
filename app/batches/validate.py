"""Validation of one input line of a batch.

A line is `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body": {...}}`
whose body is a chat-completion request as `POST /v1/chat/completions` takes it (cascade's
extensions such as `thinking_budget` and `server_tools` included). A batch item runs without
a session and without streaming: `session_id` is refused, `stream` is ignored.

A line is parsed with a bound on nesting (`app.jsonbody`): a deeper one is an `invalid_json`
error of its line, never a failure later on (`orjson.dumps` refuses more than 254 levels).
Each problem is reported for its line (`LineError` with the line number and, when it could be
read, the custom_id); the rest of the file goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from app.agent.protocol import parse_chat_request
from app.agent.turn import run_config
from app.batches.jsonl import Line
from app.batches.models import LineError
from app.config import Settings
from app.errors import CascadeError
from app.jsonbody import MAX_JSON_DEPTH, JsonBodyError, parse_json
from app.sessions.models import SessionOptions
from tools.registry import ToolPolicy, ToolRegistry

MAX_CUSTOM_ID = 512
# A line holds the request body one level down: the body may nest as deep as a chat body.
LINE_MAX_DEPTH = MAX_JSON_DEPTH + 1


@dataclass(frozen=True, slots=True)
class ValidItem:
    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InvalidLine:
    line: int
    custom_id: str | None
    error: LineError


def custom_id_digest(custom_id: str) -> int:
    """A 64-bit digest standing for a custom_id in the duplicate check (8 bytes per line)."""
    return int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=8).digest(), "big")


def _bad(line: Line, code: str, message: str, param: str | None, cid: str | None) -> InvalidLine:
    return InvalidLine(
        line.number,
        cid,
        LineError(
            code=code, message=f"line {line.number}: {message}", param=param, line=line.number
        ),
    )


def load_line(line: Line) -> dict[str, Any]:
    """The line as a JSON object; `JsonBodyError` (a message safe to show) if it is not one.

    Nesting is bounded so that the body may nest exactly as deep as a chat request body may.
    """
    value = parse_json(line.data, max_depth=LINE_MAX_DEPTH)
    if not isinstance(value, dict):
        raise JsonBodyError("not a JSON object")
    return value


def usable_custom_id(data: dict[str, Any]) -> str | None:
    cid = data.get("custom_id")
    return cid if isinstance(cid, str) and 0 < len(cid) <= MAX_CUSTOM_ID else None


def parse_line(line: Line) -> tuple[dict[str, Any] | None, str | None]:
    """The line as a JSON object and its custom_id if it has a usable one (for assembly)."""
    if line.too_long:
        return None, None
    try:
        data = load_line(line)
    except JsonBodyError:
        return None, None
    return data, usable_custom_id(data)


def check_line(
    line: Line,
    *,
    endpoint: str,
    settings: Settings,
    registry: ToolRegistry | None,
    policy: ToolPolicy,
    seen: set[int] | None,
) -> ValidItem | InvalidLine:
    """Validate one line; `seen` collects custom_id digests to refuse duplicates.

    `policy` is the operator's tool policy, the one chat requests run under: a body that chat
    would refuse (a disabled server tool, say) is refused here with chat's message.
    """
    if line.too_long:
        return _bad(line, "line_too_long", "the line is too long", None, None)
    try:
        data = load_line(line)
    except JsonBodyError as exc:
        return _bad(line, "invalid_json", str(exc), None, None)
    cid = usable_custom_id(data)
    raw_cid = data.get("custom_id")
    if cid is None:
        if isinstance(raw_cid, str) and raw_cid:
            message = f"custom_id is longer than {MAX_CUSTOM_ID} characters"
        else:
            message = "custom_id must be a non-empty string"
        return _bad(line, "invalid_custom_id", message, "custom_id", None)
    method = data.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        return _bad(line, "invalid_method", "method must be POST", "method", cid)
    url = data.get("url", endpoint)
    if url != endpoint:
        return _bad(
            line,
            "mismatched_endpoint",
            f"url must be {endpoint} (the batch's endpoint)",
            "url",
            cid,
        )
    body = data.get("body")
    if not isinstance(body, dict):
        return _bad(line, "invalid_body", "body must be a JSON object", "body", cid)
    if body.get("session_id") is not None:
        return _bad(
            line, "invalid_body", "session_id is not supported in batches", "body.session_id", cid
        )
    try:
        req = parse_chat_request(body)
        run_config(req, settings, SessionOptions(), registry, policy)
    except CascadeError as exc:
        param = f"body.{exc.param}" if exc.param else "body"
        return _bad(line, "invalid_body", exc.message, param, cid)
    if seen is not None:
        digest = custom_id_digest(cid)
        if digest in seen:
            return _bad(
                line, "duplicate_custom_id", f"custom_id {cid!r} appears twice", "custom_id", cid
            )
        seen.add(digest)
    return ValidItem(line.number, cid, body)
