"""The structured-answer checks: formats parsed, answers judged, failures named."""

from __future__ import annotations

from typing import Any

import pytest

from app.agent.models import Final
from app.agent.structured import answer_format, failure
from app.errors import InvalidRequestError

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"n": {"type": "integer"}},
    "required": ["n"],
}
FMT = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def test_text_and_no_format_ask_for_nothing() -> None:
    assert answer_format(None) is None
    assert answer_format({"type": "text"}) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}},
    ],
)
def test_malformed_formats_are_400s(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        answer_format(bad)
    assert raised.value.param == "response_format"


@pytest.mark.parametrize(
    ("final", "fragment"),
    [
        (Final('{"n": 1}', None, "stop"), None),
        (Final('\n\n{"n": 1}', "r", "stop"), None),
        (Final("", '{"n": 1}', "stop"), "inside the reasoning"),
        (Final("", "thinking on and on", "length"), "budget ran out"),
        (Final('{"n": ', None, "length"), "cut off"),
        (Final("{n: 1}", None, "stop"), "not valid JSON"),
        (Final('{"n": "one"}', None, "stop"), "does not match the schema at n"),
    ],
)
def test_failures_are_named(final: Final, fragment: str | None) -> None:
    fmt = answer_format(FMT)
    assert fmt is not None
    problem = failure(final, fmt)
    assert (problem is None) if fragment is None else (fragment in (problem or ""))


def test_json_object_needs_an_object() -> None:
    fmt = answer_format({"type": "json_object"})
    assert fmt is not None
    assert failure(Final("[1]", None, "stop"), fmt) == "the answer is JSON but not an object"
    assert failure(Final('{"a": [1]}', None, "stop"), fmt) is None
