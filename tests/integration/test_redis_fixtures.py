"""The test session's Redis fixtures: one shared server, emptied per test and not stoppable by
a test; a private one for tests that stop Redis."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from tests.redis_server import RedisServer, SharedRedisServer, SharedServerError


@pytest.mark.parametrize("action", ["kill", "pause", "resume", "stop", "start", "restart"])
def test_a_test_cannot_stop_the_shared_server(redis_server: RedisServer, action: str) -> None:
    assert isinstance(redis_server, SharedRedisServer)
    with pytest.raises(SharedServerError, match="own_redis_server"):
        getattr(redis_server, action)()
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.ping()


def test_fresh_empties_every_database_and_the_script_cache(
    shared_redis_server: SharedRedisServer,
) -> None:
    with (
        redis.Redis(port=shared_redis_server.port) as db0,
        redis.Redis(port=shared_redis_server.port, db=3) as db3,
    ):
        db0.set("left", "over")
        db3.set("other", "db")
        sha = db0.script_load("return 1")
        shared_redis_server.fresh()
        assert db0.dbsize() == 0 and db3.dbsize() == 0
        assert db0.script_exists(sha) == [False]


def test_a_shared_server_that_died_is_started_again(
    shared_redis_server: SharedRedisServer,
) -> None:
    assert shared_redis_server.proc is not None
    before = shared_redis_server.recoveries
    os.kill(shared_redis_server.proc.pid, signal.SIGKILL)  # behind the handle's back
    shared_redis_server.proc.wait()
    assert not shared_redis_server.answers()
    shared_redis_server.fresh()
    assert shared_redis_server.answers()
    assert shared_redis_server.recoveries == before + 1


def test_a_test_with_its_own_server_gets_it_as_redis_server_too(
    own_redis_server: RedisServer, redis_server: RedisServer
) -> None:
    assert redis_server is own_redis_server
    assert not isinstance(own_redis_server, SharedRedisServer)
    own_redis_server.restart()  # its own: free to kill
    with redis.Redis.from_url(own_redis_server.url) as client:
        assert client.ping()
