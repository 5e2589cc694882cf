"""`cascade up` (what `make run` starts): Redis + API + worker as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from tests.redis_server import free_port
from tests.servers import stop_child
from tests.sglang_sim.testing import running_simulator


class Up:
    def __init__(self, proc: subprocess.Popen[str], base: str, log_path: Path) -> None:
        self.proc = proc
        self.base = base
        self.log_path = log_path

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def redis_url(self) -> str:
        for event in self.log_events():
            if event.get("event") == "redis_started":
                return str(event["url"])
        raise AssertionError("redis_started not logged")


def wait_for(url: str, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def run_up(tmp_path: Path, runtime_url: str) -> Iterator[Up]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env |= {
        "CASCADE_STATE_DIR": str(tmp_path / "state"),
        "CASCADE_PORT": str(port),
        "CASCADE_LOG_FORMAT": "json",
        "CASCADE_RUNTIME_URL": runtime_url,
        "CASCADE_RUNTIME_MAX_RETRIES": "0",
    }
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up"], env=env, stderr=log, stdout=log, text=True
        )
    up = Up(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for(up.base + "/healthz")
        yield up
    finally:
        stop_child(proc)


@pytest.fixture
def cascade_up(tmp_path: Path) -> Iterator[Up]:
    with run_up(tmp_path, os.environ["CASCADE_RUNTIME_URL"]) as up:
        yield up


def test_up_with_the_runtime_running_is_ready_and_lists_the_model(tmp_path: Path) -> None:
    with running_simulator() as sim, run_up(tmp_path, sim.url) as up:
        deadline = time.monotonic() + 20
        while (ready := httpx.get(up.base + "/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        body = ready.json()
        assert body["runtime"]["reachable"] and body["redis"]["ok"]
        models = httpx.get(up.base + "/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["qwen3.6-27b-cascade"]


def test_up_starts_redis_api_and_worker_and_reports_the_runtime_down(cascade_up: Up) -> None:
    assert httpx.get(cascade_up.base + "/healthz").status_code == 200
    ready = httpx.get(cascade_up.base + "/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["redis"]["ok"] is True
    assert body["runtime"]["reachable"] is False
    assert "runtime" in body["runtime"]["detail"]

    # A model call fails fast (no hang) with a 503 telling the operator what to start.
    started = time.monotonic()
    models = httpx.get(cascade_up.base + "/v1/models", timeout=30)
    assert models.status_code == 503
    assert time.monotonic() - started < 10
    assert "cascade runtime" in models.json()["error"]["message"]

    client = redis.Redis.from_url(cascade_up.redis_url())
    try:
        deadline = time.monotonic() + 20
        while not client.keys("cascade:workers:*"):
            assert time.monotonic() < deadline, "worker never registered"
            time.sleep(0.2)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    finally:
        client.close()


def test_up_stops_cleanly_on_sigterm(cascade_up: Up, tmp_path: Path) -> None:
    cascade_up.proc.send_signal(signal.SIGTERM)
    assert cascade_up.proc.wait(timeout=40) == 0
    events = [e.get("event") for e in cascade_up.log_events()]
    assert "cascade_down" in events
    assert "worker_stopped" in events
    # Redis kept its data under the state directory (AOF).
    assert any((tmp_path / "state" / "redis").rglob("*.aof*"))
