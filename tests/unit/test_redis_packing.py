"""The Redis client's C command packer sends exactly the bytes redis-py's own packer would."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from app.redis_client import _HiredisPacking, redis_client

ARGS = [
    ("SET", "key", "value"),
    ("CLIENT SETNAME", "cascade"),
    (b"SCRIPT LOAD", "return 1"),
    ("EVALSHA", "0" * 40, 2, "k:{sess_1}:info", b"k2", 1.5, -7, "é ü", b"\x00\xff"),
    ("RPUSH", "list", memoryview(b"mv"), bytearray(b"ba"), 10**18),
]


@pytest.mark.parametrize("args", ARGS)
def test_packed_bytes_match_redis_py(args: tuple[object, ...]) -> None:
    plain = Connection()
    fast = _HiredisPacking.pack_command(plain, *args)  # type: ignore[arg-type]
    assert fast == [b"".join(plain.pack_command(*args))]


def test_unencodable_argument_is_a_data_error() -> None:
    with pytest.raises(DataError):
        _HiredisPacking.pack_command(Connection(), "SET", "k", None)  # type: ignore[arg-type]


def test_every_connection_of_the_client_packs_in_c() -> None:
    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/none.sock"):
        cls = redis_client(url).connection_pool.connection_class
        assert issubclass(cls, _HiredisPacking), url
