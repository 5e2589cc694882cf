"""The simulator's listening socket lets asyncio set TCP_NODELAY on accepted connections (else
every reused connection stalls ~40 ms on Nagle's algorithm meeting delayed ACKs)."""

from __future__ import annotations

import asyncio
import socket

from tests.sglang_sim.testing import bind_socket


async def test_accepted_connections_have_nodelay() -> None:
    sock = bind_socket()
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = writer.get_extra_info("socket")
        seen.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read()
        writer.close()
    assert seen and seen[0] != 0
