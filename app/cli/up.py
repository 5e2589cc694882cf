"""`cascade up`: one command for a homelab box.

Starts a local `redis-server` when `CASCADE_REDIS_URL` is unset (data under
`$CASCADE_STATE_DIR/redis`, AOF on with `appendfsync everysec`, loopback only, a free port), then
the API (`cascade serve`) and N workers as child processes with `CASCADE_REDIS_URL` pointing at it.
A child that exits unexpectedly is restarted (at most 5 times a minute). SIGTERM/SIGINT stop the
API and workers first (each drains on SIGTERM), then Redis, which rewrites nothing it has not
already appended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from app.config import Settings

log = structlog.get_logger(__name__)

GRACE_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_command(data_dir: Path, port: int) -> list[str]:
    """redis-server argv: AOF (everysec), no RDB snapshots, loopback only."""
    binary = shutil.which("redis-server") or "redis-server"
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
    ]


async def wait_for_redis(url: str, wait_seconds: float = 15.0) -> None:
    client = aioredis.Redis.from_url(url)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                await client.ping()
                return
            except RedisError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.argv, env=self.env)
        log.info("child_started", child=self.name, pid=self.proc.pid)

    async def stop(self, grace: float) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            log.warning("child_killed", child=self.name)
            self.proc.kill()
            await self.proc.wait()


async def run_up(settings: Settings, *, workers: int = 1) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    env = dict(os.environ)
    redis_child: Child | None = None
    if settings.redis_url is None:
        if shutil.which("redis-server") is None:
            log.error("redis_missing", detail="install redis-server or set CASCADE_REDIS_URL")
            return 2
        data_dir = (settings.state_dir / "redis").resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        redis_child = Child("redis", redis_command(data_dir, port), env)
        await redis_child.start()
        url = f"redis://127.0.0.1:{port}/0"
        try:
            await wait_for_redis(url)
        except RedisError:
            log.error("redis_did_not_start", log_file=str(data_dir / "redis.log"))
            await redis_child.stop(5)
            return 1
        env["CASCADE_REDIS_URL"] = url
        log.info("redis_started", url=url, data_dir=str(data_dir), appendfsync="everysec")

    exe = [sys.executable, "-m", "app.cli"]
    children = [Child("api", [*exe, "serve"], env)]
    children += [
        Child(f"worker-{i}", [*exe, "worker", "--name", f"{socket.gethostname()}-w{i}"], env)
        for i in range(workers)
    ]
    for child in children:
        await child.start()
    log.info("cascade_up", api=f"http://{settings.host}:{settings.port}", workers=workers)

    code = 0
    try:
        while not stop.is_set():
            for child in children:
                if child.proc is not None and child.proc.returncode is not None:
                    now = time.monotonic()
                    child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                    if len(child.restarts) > 5:
                        log.error("child_crash_loop", child=child.name)
                        code = 1
                        stop.set()
                        break
                    log.warning("child_exited", child=child.name, status=child.proc.returncode)
                    await child.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await asyncio.gather(*(child.stop(GRACE_SECONDS) for child in children))
        if redis_child is not None:
            await redis_child.stop(GRACE_SECONDS)
        log.info("cascade_down")
    return code
