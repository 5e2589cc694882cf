"""Running the simulator for tests: in a background thread, or as a separate process.

- `running_simulator(config)` serves a fresh `Simulator` with uvicorn on a free loopback port
  in a daemon thread and yields a `SimHandle` (`url`, `sim`). On exit the simulator wakes its
  pending requests and the server shuts down; the thread is joined.
- `spawn_simulator(args)` runs `python -m tests.sglang_sim` as a subprocess (port chosen by
  the child unless `--port` is given), waits until it answers HTTP, and yields a
  `SubprocessHandle`; on exit it is terminated (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import uvicorn

from tests.sglang_sim.chat import quiet_cut_connection_logs
from tests.sglang_sim.script import Rule, SimConfig
from tests.sglang_sim.server import Simulator

__all__ = [
    "LISTENING_PREFIX",
    "SimHandle",
    "SubprocessHandle",
    "bind_socket",
    "make_server",
    "running_simulator",
    "spawn_simulator",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# The first line `python -m tests.sglang_sim` prints on stdout, followed by its base URL.
LISTENING_PREFIX = "sglang-sim listening on "


@dataclass(frozen=True)
class SimHandle:
    """A simulator served in this process: `url` like `http://127.0.0.1:PORT`."""

    url: str
    port: int
    sim: Simulator


@dataclass(frozen=True)
class SubprocessHandle:
    """A simulator running as a child process; its stderr goes to `log_path`."""

    url: str
    port: int
    process: subprocess.Popen[str]
    log_path: Path


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket bound to `host:port` (0 = any free port).

    Created with protocol IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
    only when the listening socket says TCP, and without it every reused connection stalls
    ~40 ms on Nagle's algorithm meeting delayed ACKs.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _SimServer(uvicorn.Server):
    """uvicorn, but the simulator lets go of hanging requests before the shutdown waits."""

    def __init__(self, config: uvicorn.Config, sim: Simulator) -> None:
        super().__init__(config)
        self._sim = sim

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._sim.close()
        super().handle_exit(sig, frame)


def make_server(sim: Simulator, *, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for `sim.app` (HTTP/1.1 via h11, no websockets, no lifespan)."""
    quiet_cut_connection_logs()
    config = uvicorn.Config(
        sim.app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    return _SimServer(config, sim)


@contextmanager
def running_simulator(
    config: SimConfig | None = None, *, rules: Sequence[Rule] = ()
) -> Iterator[SimHandle]:
    """Serve a new `Simulator(config, rules)` on a free loopback port for the `with` block."""
    sim = Simulator(config, rules)
    server = make_server(sim)
    sock = bind_socket()
    port = sock.getsockname()[1]
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="sglang-sim", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the simulator's server thread died while starting")
            if time.monotonic() > deadline:
                raise TimeoutError("the simulator did not start within 15 s")
            time.sleep(0.01)
        yield SimHandle(url=f"http://127.0.0.1:{port}", port=port, sim=sim)
    finally:
        sim.close()
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the simulator's server thread did not stop")


def _read_announced_url(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("the simulator subprocess did not announce its address")
    line = process.stdout.readline().strip()
    if not line.startswith(LISTENING_PREFIX):
        raise RuntimeError(f"unexpected first line from the simulator subprocess: {line!r}")
    return line[len(LISTENING_PREFIX) :]


def _startup_failure(message: str, log_path: Path) -> RuntimeError:
    tail = log_path.read_text(errors="replace")[-2000:]
    return RuntimeError(f"{message}; its stderr ended with:\n{tail}")


@contextmanager
def spawn_simulator(
    args: Sequence[str] = (), *, timeout: float = 30.0, keep_log: bool = False
) -> Iterator[SubprocessHandle]:
    """Run `python -m tests.sglang_sim *args` and wait until it answers HTTP.

    The child's stderr goes to `log_path`, deleted on exit unless `keep_log`.
    """
    command = [sys.executable, "-m", "tests.sglang_sim", *args]
    if "--port" not in args:
        command += ["--port", "0"]
    fd, name = tempfile.mkstemp(prefix="sglang-sim-", suffix=".log")
    log_path = Path(name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with os.fdopen(fd, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
    try:
        try:
            url = _read_announced_url(process, timeout)
        except (TimeoutError, RuntimeError) as exc:
            raise _startup_failure(str(exc), log_path) from exc
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                if process.poll() is not None:
                    raise _startup_failure("the simulator subprocess exited", log_path)
                try:
                    client.get(f"{url}/model_info")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        port = int(url.rsplit(":", 1)[1])
        yield SubprocessHandle(url=url, port=port, process=process, log_path=log_path)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        if not keep_log:
            log_path.unlink(missing_ok=True)
