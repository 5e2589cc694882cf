"""Helpers shared by the batch tests: cascade's API with the batch coordinator on loopback, a
worker in this event loop or as a real `cascade worker` process, and small polling helpers.
(No tests here.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import redis.asyncio as aioredis
from openai import OpenAI

from app.api.app import create_app
from app.batches.config import BatchSettings, load_batch_settings
from app.batches.store import BatchStore
from app.config import Settings, load_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import SimConfig
from tests.sglang_sim.server import Simulator
from tests.sglang_sim.testing import SimHandle, bind_socket, make_server
from workers.consumer import BatchWorker
from workers.main import consume, opened_worker

REPO = Path(__file__).resolve().parents[2]

# Fast settings for tests: short polls, retries and takeover times.
FAST: dict[str, Any] = {
    "batch_poll_interval": 0.05,
    "batch_retry_base": 0.05,
    "batch_retry_max": 0.2,
    "batch_claim_idle": 2.0,
    "batch_block_ms": 100,
    "batch_drain_grace": 5.0,
    "runtime_wait_interval": 0.2,
}


def batch_env(**overrides: Any) -> dict[str, str]:
    """`CASCADE_*` variables for a worker process with `FAST` settings (and overrides)."""
    values = {**FAST, **overrides}
    return {f"CASCADE_{k.upper()}": str(v) for k, v in values.items()}


@dataclass
class BatchApp:
    url: str
    app: Any
    settings: Settings
    config: BatchSettings
    redis_url: str
    clients: list[OpenAI] = dataclasses.field(default_factory=list)

    def client(self, api_key: str = "test-key") -> OpenAI:
        """An openai SDK client (closed when the API stops)."""
        client = OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client


@contextlib.contextmanager
def batch_api(
    sim: SimHandle | str,
    redis: RedisServer,
    state_dir: Path,
    *,
    store_type: type[BatchStore] = BatchStore,
    **config: Any,
) -> Iterator[BatchApp]:
    """cascade's API (with files and batches) on loopback; `sim` or a runtime URL;
    `store_type`: the batch store class of its coordinator."""
    runtime_url = sim if isinstance(sim, str) else sim.url
    settings = load_settings(
        runtime_url=runtime_url,
        redis_url=redis.url,
        runtime_max_retries=1,
        runtime_retry_backoff=0.01,
        state_dir=state_dir,
    )
    batch_config = load_batch_settings(**{**FAST, **config})
    app = create_app(settings, batch_settings=batch_config, batch_store_type=store_type)
    with serve_in_thread(app) as url:
        handle = BatchApp(url, app, settings, batch_config, redis.url)
        try:
            yield handle
        finally:
            for client in handle.clients:
                client.close()


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings,
    config: BatchSettings,
    *,
    name: str = "test-worker",
    store_type: type[BatchStore] = BatchStore,
) -> AsyncIterator[BatchWorker]:
    """A `BatchWorker` consuming in this event loop for the `async with` block (supervised
    as in `cascade worker`)."""
    assert settings.redis_url is not None
    client = aioredis.Redis.from_url(settings.redis_url)
    store = store_type(client, prefix=config.key_prefix)
    try:
        async with opened_worker(client, settings, config, name=name, store=store) as (
            worker,
            _,
        ):
            await client.set(worker.store.keys.worker(name), "alive", ex=60)
            stop = asyncio.Event()
            task = asyncio.create_task(consume(worker, stop))
            try:
                yield worker
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
                await client.delete(worker.store.keys.worker(name))
    finally:
        await client.aclose()


def upload_jsonl(client: OpenAI, lines: list[Any], name: str = "input.jsonl") -> str:
    """Upload JSONL (dicts are dumped, strings kept verbatim); returns the file id."""
    text = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    uploaded = client.files.create(file=(name, io.BytesIO(text.encode())), purpose="batch")
    return uploaded.id


def request_line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": text}], **body},
    }


FINAL = {"completed", "failed", "cancelled", "expired"}


def wait_final(client: OpenAI, batch_id: str, seconds: float = 60.0) -> Any:
    """Poll until the batch is final; returns the batch. 503s (Redis away) are polled over."""
    deadline = time.monotonic() + seconds
    status = "unknown"
    while True:
        try:
            batch = client.batches.retrieve(batch_id)
        except openai.APIStatusError as exc:
            assert exc.status_code == 503, exc
        else:
            if batch.status in FINAL:
                return batch
            status = f"{batch.status}: {batch.request_counts}"
        assert time.monotonic() < deadline, f"batch still {status}"
        time.sleep(0.05)


async def await_final(client: OpenAI, batch_id: str, seconds: float = 60.0) -> Any:
    """`wait_final` off the event loop (for tests that run a worker in the loop)."""
    return await asyncio.to_thread(wait_final, client, batch_id, seconds)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class WorkerProcess:
    """A real `cascade worker` subprocess (killable, restartable under a new name)."""

    def __init__(self, settings: Settings, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.settings = settings
        self.env = env
        self.log_dir = log_dir
        self.name = name
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.generation += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        env |= {
            "CASCADE_RUNTIME_URL": self.settings.runtime_base,
            "CASCADE_REDIS_URL": str(self.settings.redis_url),
            "CASCADE_STATE_DIR": str(self.settings.state_dir),
            "CASCADE_RUNTIME_MAX_RETRIES": "1",
            "CASCADE_RUNTIME_RETRY_BACKOFF": "0.01",
            "CASCADE_LOG_FORMAT": "json",
            **self.env,
        }
        log = (self.log_dir / f"{self.name}-{self.generation}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--name", self.current_name],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        log.close()

    @property
    def current_name(self) -> str:
        return f"{self.name}-g{self.generation}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return "".join(
            (self.log_dir / f"{self.name}-{g}.log").read_text(errors="replace")
            for g in range(1, self.generation + 1)
        )


def api_get(app: BatchApp, path: str) -> httpx.Response:
    return httpx.get(app.url + path, timeout=10)


@contextlib.contextmanager
def simulator_on(port: int, config: SimConfig | None = None) -> Iterator[Simulator]:
    """A simulator on a given loopback port (to bring a runtime back where it was)."""
    sim = Simulator(config)
    server = make_server(sim)
    sock = bind_socket(port=port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 15, "the simulator")
        yield sim
    finally:
        sim.close()
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
