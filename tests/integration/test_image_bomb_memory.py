"""Decompression bombs against a real cascade process: refused fast, without the memory.

cascade's API runs in a subprocess (`python -m app.cli serve`) so that its memory can be read
from `/proc/<pid>/status`. Tiny files that declare 8192x8192 pixels (a lossless WebP of a few
dozen bytes, a palette PNG of a few KB) are sent 20 at a time: as `vision` uploads and as
`data:` URIs in chat requests. Each must be a 4xx within a second, and the peak resident memory
of the process during the burst (VmHWM, reset just before it through `clear_refs`) may exceed
its resident memory before the burst (VmRSS) by less than 300 MB. The figures are printed.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.integration.test_up import wait_for
from tests.media_server import png_bytes
from tests.redis_server import RedisServer, free_port
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

SIDE = 8192
CONCURRENT = 20
MAX_SECONDS = 1.0
MAX_PEAK_DELTA = 300 * 1024 * 1024
KEY = "bomb-test-key"


def webp_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (10, 20, 30)).save(
        buffer, format="WEBP", lossless=True, method=0, quality=0
    )
    return buffer.getvalue()


def palette_png_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (SIDE, SIDE)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Api:
    pid: int
    url: str
    http: httpx.Client  # one client with a connection per concurrent request, built up front

    def status(self, field: str) -> int:
        """A `/proc/<pid>/status` memory figure (VmRSS, VmHWM) in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{field} not in /proc/{self.pid}/status")

    def reset_peak(self) -> None:
        """Make VmHWM start again from the current RSS (Linux: `5` to clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        assert self.status("VmHWM") <= self.status("VmRSS") + 4 * 1024 * 1024


def serve(
    sim: SimHandle,
    redis: RedisServer,
    tmp_path: Path,
    *,
    key: str = KEY,
    connections: int = CONCURRENT,
    env: dict[str, str] | None = None,
    block_av: bool = False,
) -> Iterator[Api]:
    """A cascade process (`cascade serve`) on a free port, up, with a client holding `key`;
    `block_av` runs it as on a server without PyAV (every `import av` fails)."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    environ |= {
        "CASCADE_STATE_DIR": str(tmp_path / "state"),
        "CASCADE_PORT": str(port),
        "CASCADE_REDIS_URL": redis.url,
        "CASCADE_RUNTIME_URL": sim.url,
        "CASCADE_RUNTIME_MAX_RETRIES": "0",
        "CASCADE_API_KEYS": key,
        "CASCADE_LOG_FORMAT": "json",
        "CASCADE_LOG_LEVEL": "warning",
        **(env or {}),
    }
    if block_av:
        # `sys.modules["av"] = None` makes every `import av` fail.
        code = "import sys; sys.modules['av'] = None; "
        code += "from app.cli.main import main; sys.exit(main(['serve']))"
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "app.cli", "serve"]
    with (tmp_path / "api.log").open("w") as log:
        proc = subprocess.Popen(command, env=environ, stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url + "/healthz")
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        with httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            limits=limits,
        ) as http:
            yield Api(proc.pid, url, http)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def api(sim: SimHandle, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    yield from serve(sim, redis_server, tmp_path)


def upload(api: Api, data: bytes, name: str) -> httpx.Response:
    return api.http.post("/v1/files", files=[("purpose", (None, "vision")), ("file", (name, data))])


def chat(api: Api, data: bytes, media_type: str) -> httpx.Response:
    uri = f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": uri}},
    ]
    return api.http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": content}]},
    )


def burst(api: Api, calls: list[Callable[[], httpx.Response]]) -> tuple[list[int], list[float]]:
    """Run `calls` at once; their statuses (0: no answer) and how long each took, in seconds."""

    def timed(call: Callable[[], httpx.Response]) -> tuple[int, float]:
        start = time.monotonic()
        try:
            status = call().status_code
        except httpx.HTTPError:
            status = 0  # no answer within the client's timeout
        return status, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        results = list(pool.map(timed, calls))
    return [r[0] for r in results], [r[1] for r in results]


def test_concurrent_image_bombs_are_refused_fast_and_within_memory(
    api: Api, sim: SimHandle
) -> None:
    webp, png = webp_bomb(), palette_png_bomb()
    print(f"\nbombs: {SIDE}x{SIDE} lossless WebP {len(webp)} bytes, palette PNG {len(png)} bytes")
    # Warm up: one real image through each path, so Pillow's codecs and the app are loaded.
    sim.sim.add_rule(Rule(output="A small picture."))
    small = png_bytes(64, 48)
    assert upload(api, small, "small.png").status_code == 200
    warm = chat(api, small, "image/png")
    assert warm.status_code == 200, warm.text

    rss_before = api.status("VmRSS")
    api.reset_peak()
    uploads: list[Callable[[], httpx.Response]] = [
        (lambda i=i: upload(api, webp if i % 2 else png, f"bomb{i}.img")) for i in range(CONCURRENT)
    ]
    chats: list[Callable[[], httpx.Response]] = [
        (lambda i=i: chat(api, webp if i % 2 else png, "image/webp" if i % 2 else "image/png"))
        for i in range(CONCURRENT)
    ]
    upload_statuses, upload_seconds = burst(api, uploads)
    chat_statuses, chat_seconds = burst(api, chats)
    peak = api.status("VmHWM")
    delta = peak - rss_before
    print(
        f"RSS before {rss_before / 2**20:.1f} MB, peak during the bursts {peak / 2**20:.1f} MB, "
        f"delta {delta / 2**20:.1f} MB (limit {MAX_PEAK_DELTA / 2**20:.0f} MB)"
    )
    print(
        f"{CONCURRENT} concurrent uploads: statuses {sorted(set(upload_statuses))}, slowest "
        f"{max(upload_seconds):.3f} s; {CONCURRENT} concurrent chats: statuses "
        f"{sorted(set(chat_statuses))}, slowest {max(chat_seconds):.3f} s"
    )
    assert all(400 <= s < 500 for s in upload_statuses + chat_statuses)
    assert max(upload_seconds + chat_seconds) < MAX_SECONDS
    assert delta < MAX_PEAK_DELTA
    # Nothing was stored by the refused uploads: only the warm-up image is listed.
    listed = api.http.get("/v1/files").json()["data"]
    assert [f["filename"] for f in listed] == ["small.png"]
    assert len(sim.sim.requests) == 1  # only the warm-up reached the model
