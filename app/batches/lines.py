"""Lines of the output and error files (OpenAI's batch output format).

Output line (the item got an answer):
  {"id": "batch_req_…", "custom_id": "…",
   "response": {"status_code": 200, "request_id": "…", "body": <chat.completion>}, "error": null}
Error line, an item that failed when it ran (its tries ran out, or the request was refused):
  {"id": …, "custom_id": …, "response": {"status_code": 4xx/5xx, "request_id": …,
   "body": {"error": {"message", "type", "param", "code"}}}, "error": null}
Error line, an item that never ran (invalid line, cancelled, expired):
  {"id": …, "custom_id": … or null, "response": null,
   "error": {"code": …, "message": …, "line": N}}

A stored result (`ResultRecord`) is one of the first two, plus which file it belongs to.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from app.batches.models import LineError
from app.errors import CascadeError

FileKind = Literal["output", "error"]


def request_line_id() -> str:
    return "batch_req_" + secrets.token_hex(12)


def output_line(custom_id: str, body: dict[str, Any], *, request_id: str) -> dict[str, Any]:
    return {
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }


def failed_line(custom_id: str, error: CascadeError, *, request_id: str) -> dict[str, Any]:
    return {
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": {
            "status_code": error.status,
            "request_id": request_id,
            "body": error.to_body(),
        },
        "error": None,
    }


def never_ran_line(custom_id: str | None, code: str, message: str, line: int) -> dict[str, Any]:
    return {
        "id": request_line_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message, "line": line},
    }


def invalid_line(custom_id: str | None, error: LineError) -> dict[str, Any]:
    return never_ran_line(custom_id, error.code, error.message, error.line or 0)


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """What a worker stores for an item: the file it belongs to and its line."""

    kind: FileKind
    line: dict[str, Any]

    def dumps(self) -> bytes:
        return orjson.dumps({"kind": self.kind, "line": self.line})

    @classmethod
    def loads(cls, raw: bytes | str) -> ResultRecord:
        data = orjson.loads(raw)
        kind: FileKind = "output" if data.get("kind") == "output" else "error"
        return cls(kind, data["line"])


def line_error_text(line: dict[str, Any]) -> str | None:
    """The error message of an output/error line, or None when it is an answer."""
    error = line.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or "error")
    response = line.get("response") or {}
    if response.get("status_code", 200) != 200:
        body = response.get("body") or {}
        inner = body.get("error") if isinstance(body, dict) else None
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("code") or "error")
        return f"HTTP {response.get('status_code')}"
    return None
