"""Validation of batch input lines: each problem reported for its line, with a code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.batches.jsonl import Line
from app.batches.validate import InvalidLine, ValidItem, check_line
from app.config import load_settings
from tools.registry import ToolPolicy, ToolRegistry

ENDPOINT = "/v1/chat/completions"


def line(data: Any, number: int = 7) -> Line:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return Line(number, 0, len(raw) + 1, raw)


def request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "custom_id": "req-1",
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    base.update(changes)
    return base


def with_body(**extra: Any) -> dict[str, Any]:
    return request(body={"messages": [{"role": "user", "content": "x"}], **extra})


def check(data: Any, seen: set[int] | None = None) -> ValidItem | InvalidLine:
    return check_line(
        line(data),
        endpoint=ENDPOINT,
        settings=load_settings(),
        registry=ToolRegistry(),
        policy=ToolPolicy(),
        seen=seen if seen is not None else set(),
    )


def test_a_valid_line_with_cascade_extensions() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    {"type": "text", "text": "what is it?"},
                ],
            }
        ],
        "thinking_budget": 256,
        "server_tools": [],
        "stream": True,
    }
    result = check(request(body=body))
    assert isinstance(result, ValidItem)
    assert (result.line, result.custom_id) == (7, "req-1")


@pytest.mark.parametrize(
    ("data", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (request(custom_id=""), "invalid_custom_id", "custom_id"),
        (request(custom_id=5), "invalid_custom_id", "custom_id"),
        (request(custom_id="x" * 513), "invalid_custom_id", "custom_id"),
        (request(method="GET"), "invalid_method", "method"),
        (request(url="/v1/embeddings"), "mismatched_endpoint", "url"),
        (request(body="hi"), "invalid_body", "body"),
        (request(body={"messages": []}), "invalid_body", "body"),
        (
            request(body={"messages": [{"role": "user", "content": "x"}], "temperature": 7}),
            "invalid_body",
            "body.temperature",
        ),
        (
            request(
                body={
                    "messages": [{"role": "user", "content": "x"}],
                    "session_id": "sess_" + "a" * 24,
                }
            ),
            "invalid_body",
            "body.session_id",
        ),
        (
            request(
                body={"messages": [{"role": "user", "content": "x"}], "server_tools": ["nope"]}
            ),
            "invalid_body",
            "body.server_tools",
        ),
    ],
)
def test_problems_are_reported_per_line(data: Any, code: str, param: str | None) -> None:
    result = check(data)
    assert isinstance(result, InvalidLine)
    assert result.error.code == code
    assert result.error.param == param
    assert result.error.line == 7
    assert result.error.message.startswith("line 7: ")


def test_duplicate_custom_ids_are_refused_after_the_first() -> None:
    seen: set[int] = set()
    assert isinstance(check(request(), seen), ValidItem)
    again = check(request(), seen)
    assert isinstance(again, InvalidLine)
    assert again.error.code == "duplicate_custom_id"
    assert again.custom_id == "req-1"


def test_too_long_line() -> None:
    result = check_line(
        Line(3, 0, 10, b"", too_long=True),
        endpoint=ENDPOINT,
        settings=load_settings(),
        registry=None,
        policy=ToolPolicy(),
        seen=set(),
    )
    assert isinstance(result, InvalidLine) and result.error.code == "line_too_long"
