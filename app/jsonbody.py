"""JSON from outside cascade, parsed with a bound on nesting depth.

`orjson.loads` accepts 1,024 levels but `orjson.dumps` refuses more than 254, so a deep value
that was accepted would fail later, far from the boundary (a 500 in a handler, a dead batch
task). Every body, batch line and upload that cascade parses goes through `parse_json`, which
refuses too-deep documents up front with an error naming the problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

MAX_JSON_DEPTH = 64


class JsonBodyError(ValueError):
    """The bytes are not JSON, or nest deeper than allowed. The message is safe to show."""


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `value` nests containers more than `limit` levels deep.

    Iterative (no recursion limit), and it visits containers only: strings such as image data
    URIs are leaves, so the cost follows the number of objects and arrays, not the body size.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON; raise `JsonBodyError` when it is invalid or nests deeper than `max_depth`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JsonBodyError("not valid JSON") from None
    if _openers(raw) <= max_depth:
        return value  # fewer containers than levels allowed (most bodies): no walk needed
    if isinstance(value, dict | list) and json_depth_exceeds(value, max_depth):
        raise JsonBodyError(f"JSON nests deeper than {max_depth} levels")
    return value


def _openers(raw: bytes | str) -> int:
    """How many `{` and `[` the text holds: every container starts with one (those inside
    strings only add to the count), so the depth of the document is at most this."""
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[")
    return raw.count(b"{") + raw.count(b"[")


def bounded_depth(value: Any) -> Any:
    """A pydantic after-validator: refuse a value that nests deeper than `MAX_JSON_DEPTH`."""
    if isinstance(value, dict | list) and json_depth_exceeds(value):
        raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
    return value
