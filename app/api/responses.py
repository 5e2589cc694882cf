"""A JSON response rendered with orjson (fast, and byte-stable for identical data)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


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
