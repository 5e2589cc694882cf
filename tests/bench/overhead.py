"""What cascade adds on top of the runtime: latency and CPU, measured side by side in one run.

Set-up: the SGLang simulator (zero latency) and cascade's API each in their own process, a real
redis-server. For every measurement the same calls are made (a) directly to the simulator and (b)
through cascade with a session (Redis read + write per turn). Reported:

- added latency p50/p99 (through − direct, per call) for non-streamed session turns at
  concurrency 1 and 32, and for streamed turns of ~500 chunks at concurrency 1;
- cascade's own CPU time per non-streamed turn and per relayed chunk, from its process's CPU
  counters (/proc/<pid>/stat, user + system);
- the turn overhead at a 200-message history relative to a 2-message history.

Absolute times on a shared 2-core machine are noise; ratios and the CPU counters are the figures.
The JSON summary is the last line of output. Run: `python -m tests.bench.overhead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.redis_server import RedisServer, free_port
from tests.sglang_sim.testing import spawn_simulator

TICKS = os.sysconf("SC_CLK_TCK")
STREAM_WORDS = 500


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def run_concurrently(
    make_call: Callable[[int], Callable[[], Awaitable[Any]]], total: int, concurrency: int
) -> list[float]:
    sem = asyncio.Semaphore(concurrency)
    out: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            out.append(await timed(make_call(i)))

    await asyncio.gather(*(one(i) for i in range(total)))
    return out


def start_cascade(sim_url: str, redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
    env |= {
        "CASCADE_RUNTIME_URL": sim_url,
        "CASCADE_REDIS_URL": redis_url,
        "CASCADE_PORT": str(port),
        "CASCADE_LOG_LEVEL": "warning",
        "CASCADE_LOG_FORMAT": "json",
        "CASCADE_MODEL": "qwen3.6-27b-cascade",
    }
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"], env=env, stdout=handle, stderr=handle
        )


async def wait_up(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("cascade did not start")


async def bench(sim_url: str, cascade_url: str, pid: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=sim_url, timeout=60, limits=limits) as direct,
        httpx.AsyncClient(base_url=cascade_url, timeout=60, limits=limits) as through,
    ):
        await direct.post(
            "/sim/rules",
            json=[
                {"match": "stream please", "output": "word " * STREAM_WORDS},
                {"match": None, "output": "A short answer."},
            ],
        )

        async def new_session(history: int) -> tuple[str, list[dict[str, Any]]]:
            messages: list[dict[str, Any]] = []
            for i in range(history - 1):
                role = "user" if i % 2 == 0 else "assistant"
                messages.append({"role": role, "content": f"message {i} " + "lorem ipsum " * 8})
            messages.append({"role": "user", "content": "hello"})
            r = await through.post(
                "/v1/chat/completions", json={"model": "m", "messages": messages, "store": True}
            )
            r.raise_for_status()
            return r.json()["session_id"], messages

        def direct_body(history: list[dict[str, Any]], text: str, stream: bool) -> dict[str, Any]:
            return {
                "model": "qwen3.6-27b-cascade",
                "messages": [*history, {"role": "user", "content": text}],
                "stream": stream,
                "max_tokens": 4096,
            }

        async def direct_call(body: dict[str, Any]) -> None:
            if body["stream"]:
                async with direct.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
            else:
                (await direct.post("/v1/chat/completions", json=body)).raise_for_status()

        async def through_call(session_id: str, text: str, stream: bool) -> int:
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": text}],
                "session_id": session_id,
                "stream": stream,
            }
            if stream:
                chunks = 0
                async with through.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and '"content"' in line:
                            chunks += 1
                return chunks
            r = await through.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return 0

        async def sessions_of(size: int, count: int) -> list[str]:
            # One fresh session per measured turn, so every turn sees the same history size.
            return [(await new_session(size))[0] for _ in range(count)]

        async def measure_turns(concurrency: int, total: int) -> dict[str, float]:
            warm = await sessions_of(2, concurrency * 2)
            sessions = await sessions_of(2, total)
            _, history = await new_session(2)
            history = [*history, {"role": "assistant", "content": "A short answer."}]

            def warm_call(i: int) -> Callable[[], Awaitable[Any]]:
                return lambda: through_call(warm[i], f"w{i}", False)

            def via_call(i: int) -> Callable[[], Awaitable[Any]]:
                return lambda: through_call(sessions[i], f"q{i}", False)

            def base_call(i: int) -> Callable[[], Awaitable[Any]]:
                return lambda: direct_call(direct_body(history, f"q{i}", False))

            await run_concurrently(warm_call, concurrency * 2, concurrency)
            cpu0 = cpu_seconds(pid)
            via = await run_concurrently(via_call, total, concurrency)
            cpu1 = cpu_seconds(pid)
            base = await run_concurrently(base_call, total, concurrency)
            added = [v - b for v, b in zip(sorted(via), sorted(base), strict=True)]
            return {
                "added_ms_p50": round(percentile(added, 0.5) * 1e3, 3),
                "added_ms_p99": round(percentile(added, 0.99) * 1e3, 3),
                "direct_ms_p50": round(statistics.median(base) * 1e3, 3),
                "through_ms_p50": round(statistics.median(via) * 1e3, 3),
                "cpu_ms_per_turn": round((cpu1 - cpu0) / total * 1e3, 3),
            }

        results: dict[str, Any] = {
            "turn_c1": await measure_turns(1, 200),
            "turn_c32": await measure_turns(32, 320),
        }

        # --- history length: 200 messages vs 2 messages, concurrency 1
        per_history: dict[int, float] = {}
        for size in (2, 200):
            sessions = await sessions_of(size, 60)
            for session_id in sessions[:5]:
                await through_call(session_id, "warm", False)
            cpu0 = cpu_seconds(pid)
            for i, session_id in enumerate(sessions[5:]):
                await through_call(session_id, f"h{i}", False)
            per_history[size] = (cpu_seconds(pid) - cpu0) / len(sessions[5:])
        results["history"] = {
            "cpu_ms_per_turn_2": round(per_history[2] * 1e3, 3),
            "cpu_ms_per_turn_200": round(per_history[200] * 1e3, 3),
            "ratio_200_vs_2": round(per_history[200] / per_history[2], 3),
        }

        # --- streamed turns of ~500 chunks, concurrency 1
        n = 20
        stream_sessions = await sessions_of(2, n + 1)
        _, history = await new_session(2)
        await through_call(stream_sessions[-1], "stream please", True)
        cpu0 = cpu_seconds(pid)
        via_s, chunk_counts = [], []
        for session_id in stream_sessions[:n]:
            start = time.perf_counter()
            chunk_counts.append(await through_call(session_id, "stream please", True))
            via_s.append(time.perf_counter() - start)
        cpu_stream = cpu_seconds(pid) - cpu0
        base_s = [
            await timed(lambda: direct_call(direct_body(history, "stream please", True)))
            for _ in range(n)
        ]
        chunks = sum(chunk_counts)
        turn_cpu = results["turn_c1"]["cpu_ms_per_turn"] / 1e3
        added_s = [v - b for v, b in zip(sorted(via_s), sorted(base_s), strict=True)]
        results["stream"] = {
            "chunks_per_turn": round(chunks / n, 1),
            "added_ms_p50": round(percentile(added_s, 0.5) * 1e3, 3),
            "added_ms_p99": round(percentile(added_s, 0.99) * 1e3, 3),
            "cpu_ms_per_turn": round(cpu_stream / n * 1e3, 3),
            "cpu_us_per_chunk": round(max(0.0, cpu_stream - n * turn_cpu) / chunks * 1e6, 2),
        }
        return results


@contextlib.contextmanager
def running_cascade() -> Iterator[tuple[str, str, int]]:
    """Redis, the simulator and a cascade process, up: (simulator url, cascade url, its pid)."""
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        try:
            with spawn_simulator(["--max-running", "64"]) as sim:
                port = free_port()
                proc = start_cascade(sim.url, redis.url, port, Path(tmp) / "cascade.log")
                try:
                    url = f"http://127.0.0.1:{port}"
                    asyncio.run(wait_up(url))
                    yield sim.url, url, proc.pid
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        finally:
            redis.stop()


def main() -> None:
    with running_cascade() as (sim_url, url, pid):
        results = asyncio.run(bench(sim_url, url, pid))
    results["targets"] = {
        "cpu_ms_per_turn_max": 1.5,
        "cpu_us_per_chunk_max": 25,
        "history_ratio_max": 2.0,
    }
    for name, value in results.items():
        if name != "targets":
            print(f"{name}: {value}")
    print(json.dumps({"benchmark": "overhead", **results}))


if __name__ == "__main__":
    main()
