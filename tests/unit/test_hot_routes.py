"""`HotRoutes`: the hot doors are called ahead of FastAPI's router, with FastAPI's answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.responses import JSONResponse, Response

from app.api.errors import install_error_handlers
from app.api.hot_routes import HotRoutes
from app.errors import InvalidRequestError

SEEN: dict[str, Any] = {}


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/hot")
    async def hot(request: Request) -> Response:
        SEEN["hot"] = request.scope.get("endpoint")  # the router sets it; HotRoutes does not
        SEEN["route"] = request.scope["route"].path
        body = await request.body()
        if body == b"bad":
            raise InvalidRequestError("bad body", param="x")
        if body == b"redis":
            raise RedisConnectionError("redis://:secret@host down")
        if body == b"crash":
            raise RuntimeError("secret detail")
        return JSONResponse({"got": body.decode()})

    @app.post("/cold")
    async def cold(request: Request) -> Response:
        SEEN["cold"] = request.scope.get("endpoint")
        return JSONResponse({})

    app.add_middleware(HotRoutes, doors={("POST", "/hot"): hot})
    return app


async def _post(app: FastAPI, path: str, body: bytes = b"x") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(path, content=body)


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


async def test_a_hot_route_is_called_without_the_router_and_answers_as_fastapi_would() -> None:
    app = _app()
    r = await _post(app, "/hot", b"hello")
    assert r.status_code == 200 and r.json() == {"got": "hello"}
    assert SEEN["hot"] is None  # not through the router
    assert SEEN["route"] == "/hot"  # the template the access log and the error ring read
    # A path outside the hot set goes through the router as before.
    assert (await _post(app, "/cold")).status_code == 200
    assert SEEN["cold"] is not None


async def test_a_wrong_method_on_a_hot_path_is_fastapis_405() -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/hot")
    assert r.status_code == 405
    assert "hot" not in SEEN


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"bad", 400, None),
        (b"redis", 503, "storage_unavailable"),
        (b"crash", 500, None),
    ],
)
async def test_errors_of_a_hot_door_are_mapped_as_fastapis_handlers_map_them(
    body: bytes, status: int, code: str | None
) -> None:
    r = await _post(_app(), "/hot", body)
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    if code is not None:
        assert error["code"] == code
    if body == b"bad":
        assert error["param"] == "x" and error["message"] == "bad body"
    assert "secret" not in r.text


def test_cascades_hot_doors_are_the_endpoints_their_routers_register_there() -> None:
    from fastapi.routing import APIRoute

    from app.api.app import HOT_DOORS, create_app
    from app.api.chat import router as chat_router
    from app.api.ollama_api import router as ollama_router
    from app.api.responses_api import router as responses_router
    from app.config import Settings

    app = create_app(Settings(redis_url=None))
    assert app.user_middleware[-1].cls is HotRoutes  # innermost: inside guard and access log
    assert set(HOT_DOORS) == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
    }
    registered = {
        (method, route.path): route.endpoint
        for route in [*chat_router.routes, *responses_router.routes, *ollama_router.routes]
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    for door, endpoint in HOT_DOORS.items():
        assert registered[door] is endpoint, door
