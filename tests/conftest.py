"""Shared fixtures: real redis-servers, the SGLang simulator, and isolation from the host.

Redis: `redis_server` is one server shared by the whole session, emptied before each test (it
cannot be killed, paused or restarted); a test that does any of that takes `own_redis_server`
instead, and then every fixture of that test built on `redis_server` (such as `cascade`) uses the
test's own server too. `redis_cluster` is a three-master Redis Cluster, started once per session
(only when a test asks for it) and emptied before each test.

No test may reach a real model: the environment's CASCADE_* variables are cleared, so a runtime
URL always comes from a fixture (a simulator on loopback) or points at a closed port.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import redis_server as redis_servers
from tests.redis_server import RedisClusterServer, RedisServer, SharedRedisServer, free_port


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CASCADE_"):
            monkeypatch.delenv(name)
    # A closed loopback port: a test that forgets to start a simulator fails fast, never calls out.
    monkeypatch.setenv("CASCADE_RUNTIME_URL", f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="session")
def shared_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRedisServer]:
    server = SharedRedisServer(tmp_path_factory.mktemp("redis"))
    server.launch()
    try:
        yield server
    finally:
        server.shut_down()


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.launch()
        yield cluster
    finally:
        cluster.shut_down()


@pytest.fixture
def redis_cluster(shared_redis_cluster: RedisClusterServer) -> RedisClusterServer:
    """The session's three-master Redis Cluster, emptied before the test."""
    shared_redis_cluster.fresh()
    return shared_redis_cluster


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF on), free to kill, pause and restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The shared server, empty; or, in a test that takes `own_redis_server`, that one.

    A shared server that stopped answering during the test fails the test (and is started again
    for the next one), so a test that broke it cannot pass unnoticed.
    """
    if "own_redis_server" in request.fixturenames:
        own: RedisServer = request.getfixturevalue("own_redis_server")
        yield own
        return
    shared: SharedRedisServer = request.getfixturevalue("shared_redis_server")
    shared.fresh()
    yield shared
    if not shared.answers():
        pytest.fail("the shared redis-server stopped answering during this test")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if redis_servers.starts:
        terminalreporter.write_line(f"redis-servers started: {redis_servers.starts}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the `integration` marker, and every test under
    tests/contract the `contract` one, so `-m "not integration"` selects what it says."""
    for item in items:
        parts = Path(str(item.path)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "contract" in parts:
            item.add_marker(pytest.mark.contract)
