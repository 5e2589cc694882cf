"""Bounded JSON parsing: deep documents are refused at the boundary, normal ones pass."""

from __future__ import annotations

import orjson
import pytest

from app.jsonbody import MAX_JSON_DEPTH, JsonBodyError, json_depth_exceeds, parse_json


def nested(depth: int, *, kind: str = "list") -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_document_at_the_limit_parses(kind: str) -> None:
    value = parse_json(nested(MAX_JSON_DEPTH, kind=kind))
    assert not json_depth_exceeds(value)
    orjson.dumps(value)  # and can be written again


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 1000])
def test_a_document_past_the_limit_is_refused(kind: str, depth: int) -> None:
    with pytest.raises(JsonBodyError, match="deeper than 64"):
        parse_json(nested(depth, kind=kind))


def test_depth_inside_a_wide_document_is_found() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 10_000}] * 50}
    body["response_format"] = orjson.loads(nested(200, kind="dict"))
    with pytest.raises(JsonBodyError):
        parse_json(orjson.dumps(body))


def test_invalid_json_is_a_json_body_error() -> None:
    with pytest.raises(JsonBodyError, match="not valid JSON"):
        parse_json(b'{"a": ')


def test_scalars_and_strings_with_brackets_are_not_depth() -> None:
    assert parse_json(b'"[[[[[[[[[["') == "[[[[[[[[[["
    assert parse_json(b"5") == 5


def test_brackets_inside_strings_never_hide_a_deep_document() -> None:
    # The quick count of openers sees these too; the walk still decides.
    shallow = orjson.dumps({"text": "{[" * 500, "list": [[1]]})
    assert parse_json(shallow)["list"] == [[1]]
    deep = orjson.dumps({"text": "{[" * 500, "deep": orjson.loads(nested(MAX_JSON_DEPTH + 1))})
    with pytest.raises(JsonBodyError):
        parse_json(deep)
    with pytest.raises(JsonBodyError):
        parse_json(deep.decode())  # text is counted the same way
