"""Slow clients against the production server set-up (`cascade serve` in a child process).

Forty connections trickling request headers and ten trickling a body, one byte at a time, are
all closed by the server within its limits, while ordinary requests keep being answered; past
the connection cap new connections are refused at once. Figures are printed for the record.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.config import HttpSettings
from tests.redis_server import RedisServer
from tests.servers import serve_in_subprocess

HEADER_TIMEOUT = 2.0
BODY_GRACE = 2.0


@pytest.fixture
def served(tmp_path: Path, redis_server: RedisServer) -> Iterator[str]:
    env = {
        "CASCADE_REDIS_URL": redis_server.url,
        "CASCADE_RUNTIME_URL": os.environ["CASCADE_RUNTIME_URL"],
        "CASCADE_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "CASCADE_HTTP_BODY_GRACE": str(BODY_GRACE),
        "CASCADE_HTTP_MAX_CONNECTIONS": "60",
    }
    with serve_in_subprocess(tmp_path / "serve.log", env) as (url, _):
        yield url


async def _trickle(host: str, port: int, head: bytes, trickled: bytes, pace: float) -> float:
    """Send `head` at once, then `trickled` one byte per `pace` seconds; return how long the
    server kept the connection before closing it (or answering and closing)."""
    reader, writer = await asyncio.open_connection(host, port)
    start = time.monotonic()
    writer.write(head)

    async def drip() -> None:
        for byte in trickled:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(pace)

    dripping = asyncio.create_task(drip())
    try:
        async with asyncio.timeout(20):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass
    finally:
        held = time.monotonic() - start
        dripping.cancel()
        writer.close()
    return held


async def _ordinary(url: str, stop: asyncio.Event) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            start = time.monotonic()
            response = await client.get(url + "/healthz")
            assert response.status_code == 200
            latencies.append(time.monotonic() - start)
            await asyncio.sleep(0.1)
    return latencies


def test_slow_headers_and_bodies_are_cut_off_while_others_are_served(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    headers = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 100 + b"\r\n\r\n"
    body_head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n"
    )

    async def scenario() -> tuple[list[float], list[float], list[float]]:
        stop = asyncio.Event()
        ordinary = asyncio.create_task(_ordinary(served, stop))
        slow_headers = [_trickle(host, int(port), b"", headers, pace=0.25) for _ in range(40)]
        slow_bodies = [
            _trickle(host, int(port), body_head, b"{" + b" " * 999, pace=0.25) for _ in range(10)
        ]
        held = await asyncio.gather(*slow_headers, *slow_bodies)
        stop.set()
        return list(held[:40]), list(held[40:]), await ordinary

    held_headers, held_bodies, latencies = asyncio.run(scenario())
    print(
        f"slow clients: header trickle held max {max(held_headers):.2f}s "
        f"(limit {HEADER_TIMEOUT}s), body trickle held max {max(held_bodies):.2f}s "
        f"(grace {BODY_GRACE}s), ordinary requests meanwhile: {len(latencies)}, "
        f"max latency {max(latencies) * 1000:.0f} ms"
    )
    assert max(held_headers) < HEADER_TIMEOUT + 1.5
    # Body: grace + bytes received / 1024 B/s (a few bytes) + scheduling slack.
    assert max(held_bodies) < BODY_GRACE + 1.5
    assert len(latencies) >= 10
    assert max(latencies) < 1.0


def test_connections_past_the_cap_are_refused_at_once(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")

    async def scenario() -> tuple[int, float]:
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(60)]
        start = time.monotonic()
        reader, writer = await asyncio.open_connection(host, int(port))
        reply = await asyncio.wait_for(reader.read(65536), timeout=5)
        refused_in = time.monotonic() - start
        writer.close()
        for _, w in idle:
            w.close()
        status = int(reply.split(b" ", 2)[1]) if reply else 0
        return status, refused_in

    status, refused_in = asyncio.run(scenario())
    assert status == 503
    assert refused_in < 1.0
    # The idle ones are gone (closed by the client here, or by the header deadline): served.
    deadline = time.monotonic() + HEADER_TIMEOUT + 3
    while True:
        try:
            if httpx.get(served + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_default_limits_cut_a_one_byte_per_second_client_well_within_thirty_seconds() -> None:
    http = HttpSettings.load()
    assert http.http_header_timeout <= 10
    # A body trickling at 1 B/s is cut when grace + received/min_rate passes: ~grace + 1%.
    trickled_for = http.http_body_grace / (1 - 1 / http.http_body_min_rate)
    assert trickled_for < 15
