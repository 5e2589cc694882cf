"""Fixtures for end-to-end tests: the simulator, cascade's API on loopback, the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import OpenAI

from app.api.app import create_app
from app.config import Settings, load_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.testing import SimHandle, running_simulator


@dataclass
class Cascade:
    url: str
    app: Any
    settings: Settings

    def client(self, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key="test-key", max_retries=0, **kwargs)


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    with running_simulator() as handle:
        yield handle


def cascade_settings(sim: SimHandle, redis: RedisServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "runtime_url": sim.url,
        "redis_url": redis.url,
        "runtime_max_retries": 1,
        "runtime_retry_backoff": 0.01,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def cascade(sim: SimHandle, redis_server: RedisServer) -> Iterator[Cascade]:
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


@pytest.fixture
def generous(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cascade]:
    """cascade with server tools offered beside a client's own tools."""
    monkeypatch.setenv("CASCADE_SERVER_TOOLS_WITH_CLIENT_TOOLS", "true")
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


@pytest.fixture
def client(cascade: Cascade) -> Iterator[OpenAI]:
    with cascade.client() as openai_client:
        yield openai_client
