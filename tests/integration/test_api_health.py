"""Health, readiness and model listing of the API, with a real Redis and no runtime."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import load_settings
from tests.redis_server import RedisServer


def test_healthz_is_ok_and_readyz_names_the_missing_runtime(redis_server: RedisServer) -> None:
    settings = load_settings(redis_url=redis_server.url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["redis"]["ok"] is True
        assert body["runtime"]["reachable"] is False
        assert "SGLang runtime" in body["runtime"]["detail"]
        assert "cascade runtime" in body["runtime"]["detail"]
        assert ready.headers["x-request-id"].startswith("req_")


def test_readyz_reports_redis_down(own_redis_server: RedisServer) -> None:
    settings = load_settings(redis_url=own_redis_server.url)
    with TestClient(create_app(settings)) as client:
        own_redis_server.kill()
        body = client.get("/readyz").json()
        assert body["redis"] == {"ok": False, "detail": "not reachable"}


def test_models_fails_fast_with_503_when_the_runtime_is_down() -> None:
    settings = load_settings(runtime_max_retries=1, runtime_retry_backoff=0.01)
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/models")
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "runtime_unavailable"
        assert error["type"] == "server_error"
        assert "CASCADE_RUNTIME_URL" in error["message"]
        assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer wrong", 401), ("Basic abc", 401), ("Bearer k1", 503)],
)
def test_api_keys_are_required_when_configured(header: str | None, status: int) -> None:
    settings = load_settings(api_keys="k1,k2", runtime_max_retries=0)
    headers = {"authorization": header} if header else {}
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.json()["error"]["type"] == "authentication_error"
        # health endpoints stay open
        assert client.get("/healthz").status_code == 200


def test_unknown_route_is_an_openai_shaped_404() -> None:
    with TestClient(create_app(load_settings())) as client:
        response = client.get("/v1/nothing-here")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_request_id_is_echoed() -> None:
    with TestClient(create_app(load_settings())) as client:
        response = client.get("/healthz", headers={"x-request-id": "abc-123"})
        assert response.headers["x-request-id"] == "abc-123"
