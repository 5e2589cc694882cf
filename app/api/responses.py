"""A JSON response rendered with orjson (fast, and byte-stable for identical data), and
OpenAI's cursor-paginated list bodies."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from app.errors import InvalidRequestError


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def list_page(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """An OpenAI cursor-paginated list body (`first_id`/`last_id` for the next `after`)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def page_after(
    items: list[dict[str, Any]], *, after: str | None, limit: int, missing: str
) -> dict[str, Any]:
    """The `list_page` of the first `limit` of `items` after the one whose id is `after` (from
    the first when None); an `after` not among them is a 400 (`no {missing}`, where `missing`
    reads like "item 'x' in this conversation")."""
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequestError(f"no {missing}", param="after")
        items = items[ids.index(after) + 1 :]
    return list_page(items[:limit], has_more=len(items) > limit)
