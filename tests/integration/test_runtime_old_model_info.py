"""A runtime whose `/model_info` has no `served_model_name` (SGLang 0.5.15): the model name comes
from `/v1/models`, readiness still passes and a chat turn goes through under that name."""

from __future__ import annotations

from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.api.app import create_app
from app.config import load_settings
from app.runtime import RuntimeRequest, SGLangClient
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import SimConfig
from tests.sglang_sim.testing import running_simulator

OLD = SimConfig(model_name="served-name", model_info_served_model_name=False)


async def test_model_name_falls_back_to_the_served_name_of_v1_models() -> None:
    with running_simulator(OLD) as sim:
        client = SGLangClient(load_settings(runtime_url=sim.url))
        try:
            health = await client.health()
            assert health.reachable and health.healthy
            assert health.model == "served-name"
            assert await client.model_name() == "served-name"
            done = await client.complete(
                RuntimeRequest(messages=[{"role": "user", "content": "hi"}], max_answer_tokens=8)
            )
            assert done.content
            assert sim.sim.requests[-1].body["model"] == "served-name"
        finally:
            await client.aclose()


async def test_model_name_falls_back_to_model_path_when_v1_models_is_unreadable() -> None:
    """A runtime (here a stand-in serving only `/model_info` and `/health`) that names no model:
    SGLang then serves under `model_path`."""

    async def model_info(request: Request) -> JSONResponse:
        return JSONResponse({"model_path": "org/some-model", "reasoning_parser": "qwen3"})

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    app = Starlette(routes=[Route("/model_info", model_info), Route("/health", health)])
    with serve_in_thread(app, lifespan="off") as url:
        client = SGLangClient(load_settings(runtime_url=url))
        try:
            health_report = await client.health()
            assert health_report.reachable and health_report.healthy
            assert health_report.model == "org/some-model"
        finally:
            await client.aclose()


def test_readiness_passes_without_served_model_name(redis_server: RedisServer) -> None:
    with running_simulator(OLD) as sim:
        settings = load_settings(runtime_url=sim.url, redis_url=redis_server.url)
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.json()
            assert ready.json()["runtime"]["model"] == "served-name"
