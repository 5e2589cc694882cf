"""Serving an ASGI app (cascade's API) with uvicorn in a background thread, for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.redis_server import free_port


@contextmanager
def serve_in_thread(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Run `app` on a free loopback port for the `with` block; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        http="h11",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cascade-api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the API server thread died while starting")
            if time.monotonic() > deadline:
                raise TimeoutError("the API server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        if thread.is_alive():
            raise RuntimeError("the API server thread did not stop")


@contextmanager
def serve_in_subprocess(
    log_path: Path, env: dict[str, str], *, host: str = "127.0.0.1", cwd: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `cascade serve` (the production server set-up) as a child process, in `cwd` (default:
    this process's); yields its base URL and the process. The child's environment is this
    process's without its `CASCADE_*` variables, with `env` laid over it."""
    port = free_port()
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    child_env |= {"CASCADE_LOG_FORMAT": "json", **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", str(port)],
            env=child_env,
            cwd=cwd,
            stdout=log,
            stderr=log,
        )
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cascade serve exited with {proc.returncode}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("cascade serve did not start")
            time.sleep(0.1)
        yield url, proc
    finally:
        stop_child(proc)


def stop_child(proc: subprocess.Popen[Any], timeout: float = 40) -> None:
    """SIGTERM a child cascade process (it drains), SIGKILL it if it has not ended in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
