"""The hot doors, dispatched ahead of FastAPI's router: chat completions, Responses, and
Ollama's chat and generate.

Every chat turn used to pass FastAPI's exception middleware, its exit stack, a match against
every route and its endpoint wrapper before the door's own code ran; those layers cost more
CPU per turn than the door's parsing and authentication together. The hot doors need none of
them: they take only the `Request`, parse their own bodies and call their dependencies
directly. `HotRoutes` is the innermost ASGI middleware (inside the request id, the access log,
the error ring and the request guard, so each request is still named, logged, recorded and
guarded exactly once) and calls those endpoints itself for their method and exact path;
everything else goes on to FastAPI as before.

Contract: the answers are the ones FastAPI gives for the same routes. Errors a door raises
become responses through `app.api.errors.exception_response`, the mapping FastAPI's handlers
use; `scope["route"]` names the door's path (paths without parameters: the path is the
template), where the access log and the error ring read a route's template. The endpoints stay
registered with FastAPI as well (its schema lists them, a test holds the two to one another).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import exception_response

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """What `scope["route"]` holds for a hot door: its path, read as the route's template."""

    path: str


class HotRoutes:
    """See the module docstring. `doors` maps (method, path) to the endpoint to call."""

    def __init__(self, app: ASGIApp, *, doors: Mapping[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.doors = {door: (HotRoute(door[1]), endpoint) for door, endpoint in doors.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            hit = self.doors.get((scope["method"], scope["path"]))
            if hit is not None:
                scope["route"], endpoint = hit
                try:
                    response = await endpoint(Request(scope, receive))
                except Exception as exc:
                    response = exception_response(exc, scope)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
