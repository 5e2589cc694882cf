"""The status data (`/status.json`), who may see it, and the recent-errors ring, over HTTP
with a real Redis, the simulator and a batch worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.error_ring import RING_CAPACITY, ErrorEvent, ErrorRing
from app.api.status_auth import COOKIE_NAME
from app.batches.config import load_batch_settings
from app.config import load_settings
from tests.integration.conftest import cascade_settings
from tests.integration.test_batch_support import running_worker
from tests.redis_server import RedisServer
from tests.sglang_sim.testing import SimHandle

KEY = "status-test-key"


@pytest.fixture
def keyed(sim: SimHandle, redis_server: RedisServer, tmp_path: Path) -> Iterator[TestClient]:
    settings = cascade_settings(sim, redis_server, api_keys=KEY, state_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        yield client


async def test_status_json_reports_runtime_redis_and_workers(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = cascade_settings(sim, redis_server, state_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        async with running_worker(settings, load_batch_settings(), name="status-worker"):
            response = client.get("/status.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "version",
        "generated_at",
        "poll_seconds",
        "runtime",
        "redis",
        "workers",
        "batches",
        "recent_errors",
    }
    runtime = body["runtime"]
    assert runtime["reachable"] is True and runtime["healthy"] is True
    assert runtime["version"] == "0.5.23"
    assert runtime["model"] == "qwen3.6-27b-cascade"
    assert runtime["url"] == sim.url.rstrip("/")
    metrics = runtime["metrics"]
    assert metrics["running_requests"] == 0 and metrics["queued_requests"] == 0
    assert metrics["spec_accept_length"] == 2.5
    assert metrics["token_usage"] == 0.0
    assert body["redis"]["ok"] is True and body["redis"]["used_memory_bytes"] > 0
    assert body["redis"]["used_memory_human"]
    (worker,) = [w for w in body["workers"] if w["name"] == "status-worker"]
    assert worker["alive"] is True and worker["pending"] == 0
    assert body["batches"] == []
    assert body["poll_seconds"] == 2.0


def test_status_reports_a_runtime_that_is_away(redis_server: RedisServer) -> None:
    settings = load_settings(
        runtime_url="http://127.0.0.1:9", redis_url=redis_server.url, runtime_max_retries=0
    )
    with TestClient(create_app(settings)) as client:
        body = client.get("/status.json").json()
        page = client.get("/")
    assert body["runtime"]["reachable"] is False and body["runtime"]["metrics"] is None
    assert body["redis"]["ok"] is True
    assert page.status_code == 200
    assert "not reachable" in page.text


def test_without_keys_the_page_is_open(sim: SimHandle, redis_server: RedisServer) -> None:
    with TestClient(create_app(cascade_settings(sim, redis_server))) as client:
        page = client.get("/")
    assert page.status_code == 200
    assert 'id="runtime-state"' in page.text and 'id="login"' not in page.text
    assert "qwen3.6-27b-cascade" in page.text


def test_with_keys_a_bearer_key_or_the_login_cookie_is_needed(keyed: TestClient) -> None:
    client = keyed
    assert client.get("/status.json").status_code == 401
    wrong = client.get("/status.json", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert client.get("/status.json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    login_page = client.get("/")
    assert login_page.status_code == 401
    assert 'id="login"' in login_page.text and "qwen3.6-27b-cascade" not in login_page.text

    assert client.post("/status/login", json={"key": "nope"}).status_code == 401
    assert COOKIE_NAME not in client.cookies
    # the page posts from its own origin; that one Origin is accepted here
    login = client.post("/status/login", json={"key": KEY}, headers={"Origin": "http://testserver"})
    assert login.status_code == 204
    cookie_header = login.headers["set-cookie"].lower()
    assert "httponly" in cookie_header and "samesite=strict" in cookie_header
    assert KEY not in login.headers["set-cookie"]
    assert client.get("/status.json").status_code == 200
    assert client.get("/").status_code == 200
    # the cookie opens the status page only, not the API
    assert client.get("/v1/models").status_code == 401

    assert client.post("/status/logout", headers={"Origin": "http://testserver"}).status_code == 204
    assert client.get("/status.json").status_code == 401


def test_forged_cookies_and_foreign_origins_are_refused(keyed: TestClient) -> None:
    client = keyed
    assert client.post("/status/login", json={"key": KEY}).status_code == 204
    good = client.cookies[COOKIE_NAME]
    owner, expires, signature = good.split(".")
    client.cookies.clear()
    forged = [
        f"{owner}.{int(expires) + 3600}.{signature}",  # a later expiry
        f"key_000000000000.{expires}.{signature}",  # another owner
        f"{owner}.{expires}.{'0' * 64}",
        "garbage",
    ]
    for value in forged:
        client.cookies.set(COOKIE_NAME, value)
        assert client.get("/status.json").status_code == 401, value
        client.cookies.clear()
    foreign = client.post(
        "/status/login", json={"key": KEY}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    assert "set-cookie" not in foreign.headers


def test_a_cookie_stops_working_when_its_key_is_removed(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    secret = "s" * 32
    first = cascade_settings(sim, redis_server, api_keys=f"{KEY},other", secret_key=secret)
    with TestClient(create_app(first)) as client:
        assert client.post("/status/login", json={"key": KEY}).status_code == 204
        cookie = client.cookies[COOKIE_NAME]
    same = cascade_settings(sim, redis_server, api_keys=f"{KEY},other", secret_key=secret)
    with TestClient(create_app(same)) as client:
        client.cookies.set(COOKIE_NAME, cookie)
        # the secret key signs cookies, so they survive a restart
        assert client.get("/status.json").status_code == 200
    removed = cascade_settings(sim, redis_server, api_keys="other", secret_key=secret)
    with TestClient(create_app(removed)) as client:
        client.cookies.set(COOKIE_NAME, cookie)
        assert client.get("/status.json").status_code == 401


def test_a_report_of_an_unknown_or_foreign_batch_is_a_404(keyed: TestClient) -> None:
    bearer = {"Authorization": f"Bearer {KEY}"}
    missing = keyed.get("/status/batches/batch_000000000000000000000000/report", headers=bearer)
    assert missing.status_code == 404
    assert keyed.get("/status/batches/batch_x/report").status_code == 401


def test_recent_errors_hold_route_templates_codes_and_request_ids(keyed: TestClient) -> None:
    client = keyed
    bearer = {"Authorization": f"Bearer {KEY}"}
    client.get("/v1/batches/batch_0123?secret=1", headers=bearer)  # 404 of an unknown batch
    client.get("/v1/models")  # 401
    client.post("/v1/chat/completions", content=b"x", headers={"content-type": "text/plain"})
    client.get("/no/such/path?token=abc")
    client.post("/v1/chat/completions", json={"messages": []}, headers=bearer)  # a hot door's 400
    errors = client.get("/status.json", headers=bearer).json()["recent_errors"]
    seen = [(e["method"], e["route"], e["status"], e["code"]) for e in errors]
    assert seen[0][:3] == ("POST", "/v1/chat/completions", 400)
    assert seen[1:5] == [
        ("GET", "(no route)", 404, "not_found"),
        ("POST", "(no route)", 415, "unsupported_media_type"),
        ("GET", "/v1/models", 401, "missing_api_key"),
        ("GET", "/v1/batches/{batch_id}", 404, "batch_not_found"),
    ]
    assert all(e["request_id"].startswith("req_") for e in errors)
    text = str(errors)
    assert "secret" not in text and "token" not in text and "batch_0123" not in text


def test_the_ring_keeps_only_the_latest_events() -> None:
    ring = ErrorRing()
    for status in range(RING_CAPACITY + 10):
        event = ErrorEvent(at=0, method="GET", route="/", status=status, code=None, request_id=None)
        ring.add(event)
    latest = ring.latest()
    assert len(latest) == RING_CAPACITY
    assert latest[0].status == RING_CAPACITY + 9 and latest[-1].status == 10
