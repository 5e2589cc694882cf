"""Shared fixtures: a real redis-server, the SGLang simulator, and isolation from the host.

No test may reach a real model: the environment's CASCADE_* variables are cleared, so a runtime
URL always comes from a fixture (a simulator on loopback) or points at a closed port.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, free_port


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CASCADE_"):
            monkeypatch.delenv(name)
    # A closed loopback port: a test that forgets to start a simulator fails fast, never calls out.
    monkeypatch.setenv("CASCADE_RUNTIME_URL", f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the `integration` marker, and every test under
    tests/contract the `contract` one, so `-m "not integration"` selects what it says."""
    for item in items:
        parts = Path(str(item.path)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "contract" in parts:
            item.add_marker(pytest.mark.contract)
