"""Test helpers for the media tests: a scripted local HTTP(S) server, a fake resolver, and
test images made with Pillow.

`MediaServer` listens on 127.0.0.1 in a background thread. Routes are scripted per path
(status, headers, body, chunking, delay between chunks); every request is recorded with its
headers, so tests can count fetches and see which headers crossed a redirect.
"""

from __future__ import annotations

import io
import ssl
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from PIL import Image


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "image/png"
    headers: dict[str, str] = field(default_factory=dict)
    chunk_size: int = 0  # 0: one write with Content-Length; else chunks, no Content-Length
    chunk_delay: float = 0.0
    declared_length: int | None = None  # send this Content-Length instead of the real one


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: MediaServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (size caps, slow bodies, refused redirects) reset connections.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            owner.hits[path] += 1
            owner.requests.append(Recorded(path, {k.lower(): v for k, v in self.headers.items()}))
            route = owner.routes.get(path)
        if route is None:
            route = Route(status=404, body=b"not found", content_type="text/plain")
        try:
            self.send_response(route.status)
            if route.content_type:
                self.send_header("Content-Type", route.content_type)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if route.chunk_size:
                if route.declared_length is not None:
                    self.send_header("Content-Length", str(route.declared_length))
                self.send_header("Connection", "close")
                self.end_headers()
                for start in range(0, len(route.body), route.chunk_size):
                    self.wfile.write(route.body[start : start + route.chunk_size])
                    self.wfile.flush()
                    if route.chunk_delay:
                        time.sleep(route.chunk_delay)
                self.close_connection = True
            else:
                length = route.declared_length
                self.send_header(
                    "Content-Length", str(len(route.body) if length is None else length)
                )
                self.end_headers()
                self.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True


class MediaServer:
    """A scripted HTTP server on 127.0.0.1 (HTTPS when given an SSL context)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def add(self, path: str, route: Route | None = None, **kwargs: object) -> None:
        self.routes[path] = route or Route(**kwargs)  # type: ignore[arg-type]

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = Route(status=status, content_type=None, headers={"Location": location})

    def start(self) -> MediaServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class StaticResolver:
    """A resolver (`host -> addresses`) from a table; counts lookups per host."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: Counter[str] = Counter()

    async def __call__(self, host: str) -> list[str]:
        self.calls[host] += 1
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return list(self.table[host])


# --- test images ---


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A non-uniform image (so resizing and orientation are visible in pixels)."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1), 128)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image.convert(mode) if mode != "RGB" else image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    return encode(Image.new("RGB", (width, height), color), "PNG")


def jpeg_bytes(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (30, 30, 200)
) -> bytes:
    return encode(Image.new("RGB", (width, height), color), "JPEG", quality=95)


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims another size (CRC fixed): a decompression bomb's header."""
    assert png[12:16] == b"IHDR"
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return png[:8] + png[8:12] + ihdr + crc + png[33:]


# --- the SSRF cases shared by the fetch and intake suites ---
# Each: (case id, URL, what `evil.test`/`localhost` resolve to, fragment the 400 must contain).
# None of them may ever open a connection: the URL or the address is refused first.
_RESOLVED = [
    ("127.0.0.1", "a loopback address (127.0.0.1)"),
    ("127.0.0.53", "a loopback address (127.0.0.53)"),
    ("10.0.0.5", "a private address (10.0.0.5)"),
    ("172.20.1.1", "a private address (172.20.1.1)"),
    ("192.168.0.1", "a private address (192.168.0.1)"),
    ("169.254.0.7", "a link-local address (169.254.0.7)"),
    ("100.64.12.1", "a CGNAT address (100.64.12.1)"),
    ("224.0.0.251", "a multicast address (224.0.0.251)"),
    ("240.1.2.3", "a reserved address (240.1.2.3)"),
    ("255.255.255.255", "a broadcast address (255.255.255.255)"),
    ("0.0.0.0", "an unspecified address (0.0.0.0)"),
    ("192.0.2.10", "a documentation address (192.0.2.10)"),
    ("198.18.5.5", "a benchmarking address (198.18.5.5)"),
    ("169.254.169.254", "a cloud metadata address (169.254.169.254)"),
    ("100.100.100.200", "a cloud metadata address (100.100.100.200)"),
    ("168.63.129.16", "a cloud metadata address (168.63.129.16)"),
    ("fd00:ec2::254", "a cloud metadata address (fd00:ec2::254)"),
    ("::1", "a loopback address (::1)"),
    ("::", "an unspecified address (::)"),
    ("fe80::1234", "a link-local address (fe80::1234)"),
    ("fec0::1", "a site-local address (fec0::1)"),
    ("fd12:3456:789a::1", "a unique-local address (fd12:3456:789a::1)"),
    ("ff05::2", "a multicast address (ff05::2)"),
    ("2001:db8::5", "a documentation address (2001:db8::5)"),
    ("::ffff:127.0.0.1", "a loopback address (127.0.0.1, embedded in IPv4-mapped"),
    ("::ffff:192.168.1.1", "a private address (192.168.1.1, embedded in IPv4-mapped"),
    ("::ffff:169.254.169.254", "a cloud metadata address (169.254.169.254, embedded in"),
    ("64:ff9b::a00:5", "a private address (10.0.0.5, embedded in NAT64"),
    ("64:ff9b::7f00:1", "a loopback address (127.0.0.1, embedded in NAT64"),
    ("64:ff9b:1::a00:5", "a local-use NAT64 address (64:ff9b:1::a00:5)"),
    ("2002:a00:5::1", "a private address (10.0.0.5, embedded in 6to4"),
    ("2002:a9fe:a9fe::1", "a cloud metadata address (169.254.169.254, embedded in 6to4"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a loopback address (127.0.0.1, embedded in Teredo"),
    ("::127.0.0.1", "a loopback address (127.0.0.1, embedded in IPv4-compatible"),
]
SSRF_CASES: list[tuple[str, str, dict[str, list[str]], str]] = [
    (
        f"resolves-{address}",
        "http://evil.test/cat.png",
        {"evil.test": [address]},
        f"resolves to {text}",
    )
    for address, text in _RESOLVED
] + [
    (
        "one-public-one-private",
        "https://evil.test/cat.png",
        {"evil.test": ["93.184.216.34", "10.0.0.5"]},
        "resolves to a private address (10.0.0.5)",
    ),
    (
        "one-public-one-loopback-v6",
        "https://evil.test/cat.png",
        {"evil.test": ["2606:4700::1", "::1"]},
        "resolves to a loopback address (::1)",
    ),
    ("localhost", "http://localhost:8080/cat.png", {"localhost": ["127.0.0.1", "::1"]}, "loopback"),
    (
        "literal-loopback",
        "http://127.0.0.1/cat.png",
        {},
        "points to a loopback address (127.0.0.1)",
    ),
    ("literal-v6-loopback", "http://[::1]:9000/cat.png", {}, "points to a loopback address (::1)"),
    ("literal-mapped", "http://[::ffff:10.1.2.3]/x", {}, "a private address (10.1.2.3, embedded"),
    (
        "literal-metadata",
        "http://169.254.169.254/latest/meta-data/",
        {},
        "a cloud metadata address",
    ),
    ("literal-zero", "http://0.0.0.0:8000/x", {}, "points to an unspecified address (0.0.0.0)"),
    ("literal-link-local-zone", "http://[fe80::1%25eth0]/x", {}, "a link-local address (fe80::1)"),
    ("decimal-host", "http://2130706433/x.png", {}, "ambiguous numeric host"),
    ("hex-host", "http://0x7f000001/x.png", {}, "ambiguous numeric host"),
    ("short-host", "http://127.1/x.png", {}, "ambiguous numeric host"),
    ("file-scheme", "file:///etc/passwd", {}, "must use http or https, not file:"),
    ("ftp-scheme", "ftp://evil.test/cat.png", {}, "must use http or https, not ftp:"),
    ("gopher-scheme", "gopher://evil.test:70/_x", {}, "must use http or https, not gopher:"),
    ("credentials", "http://admin:pw@evil.test/x", {"evil.test": ["93.184.216.34"]}, "credentials"),
    ("unresolvable", "http://nowhere.test/x.png", {}, "could not be resolved (nowhere.test)"),
]


def server_scenario(server: MediaServer, name: str) -> tuple[str, str]:
    """Set up `name` on the server; returns (URL to fetch, fragment the error must contain).

    Expects `origin.test` allow-listed by name and resolving to 127.0.0.1, `evil.test`
    resolving to 10.0.0.5, a 100_000-byte cap and a 1 s time limit."""
    base = f"http://origin.test:{server.port}"
    if name == "redirect-to-loopback":
        server.redirect("/r", f"http://127.0.0.1:{server.port}/secret")
        return f"{base}/r", "redirect target points to a loopback address (127.0.0.1)"
    if name == "redirect-to-metadata":
        server.redirect("/r", "http://169.254.169.254/latest/meta-data/iam/", status=301)
        return f"{base}/r", "redirect target points to a cloud metadata address (169.254.169.254)"
    if name == "redirect-to-private-name":
        server.redirect("/r", "http://evil.test/cat.png", status=307)
        return f"{base}/r", "redirect target resolves to a private address (10.0.0.5)"
    if name == "redirect-to-mapped-v6":
        server.redirect("/r", "http://[::ffff:7f00:1]/", status=308)
        return f"{base}/r", "a loopback address (127.0.0.1, embedded in IPv4-mapped"
    if name == "redirect-to-file":
        server.redirect("/r", "file:///etc/passwd")
        return f"{base}/r", "redirect target must use http or https, not file:"
    if name == "redirect-loop":
        server.redirect("/r", "/r")
        return f"{base}/r", "redirected more than 5 times"
    if name == "oversized-declared":
        server.add("/big", body=b"\0" * 300_000)
        return f"{base}/big", "image larger than 97.7 KB"
    if name == "oversized-streamed":
        server.add("/big", body=b"\0" * 300_000, chunk_size=16_384)
        return f"{base}/big", "image larger than 97.7 KB"
    if name == "slow-body":
        server.add("/slow", body=png_bytes(40, 30)[:60], chunk_size=1, chunk_delay=0.1)
        return f"{base}/slow", "took longer than 1 s"
    if name == "html-instead-of-image":
        server.add("/page", body=b"<html>hi</html>", content_type="text/html; charset=utf-8")
        return f"{base}/page", "returned text/html, expected image/*"
    if name == "not-found":
        return f"{base}/missing.png", "answered HTTP 404"
    raise AssertionError(name)


SCENARIOS = [
    "redirect-to-loopback",
    "redirect-to-metadata",
    "redirect-to-private-name",
    "redirect-to-mapped-v6",
    "redirect-to-file",
    "redirect-loop",
    "oversized-declared",
    "oversized-streamed",
    "slow-body",
    "html-instead-of-image",
    "not-found",
]
