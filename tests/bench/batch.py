"""Batch throughput and footprint: how close cascade's workers keep a runtime to full.

Set-up, each in its own process: the SGLang simulator with C running slots and a fixed latency
L per item (time to first token; the answer is a few tokens at zero time per token), a real
redis-server, cascade's API (`cascade serve`, which runs the batch coordinator) and
`cascade worker`s. Measured:

- a batch of N items through 1 worker and through 3 workers: wall time from `POST /v1/batches`
  to `completed` (validation, queueing, files included) against the ideal N·L/C, as an
  efficiency ratio ideal/wall (target ≥ 0.95); also the item phase alone (first request in to
  last answer out, from the simulator's records);
- cascade's CPU per item: API + workers, from /proc/<pid>/stat (user + system);
- a 100,000-line input at zero latency: peak RSS (VmHWM) of the worker and of the API, and RSS
  samples during the run (target: flat, worker ≤ 150 MB).

Absolute times on a shared 2-core machine are noise (the simulator and cascade share the
cores); the ratios and per-item CPU are the figures. The JSON summary is the last line of
output. Run: `python -m tests.bench.batch [--items N] [--slots C] [--latency L] [--big N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.redis_server import RedisServer, free_port
from tests.sglang_sim.testing import spawn_simulator

TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MB from /proc/<pid>/status."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


class Stack:
    """API + workers as subprocesses over one simulator and one Redis."""

    def __init__(self, sim_url: str, redis_url: str, workdir: Path, **batch_env: Any) -> None:
        self.sim_url = sim_url
        self.redis_url = redis_url
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CASCADE_")}
        self.env |= {
            "CASCADE_RUNTIME_URL": sim_url,
            "CASCADE_REDIS_URL": redis_url,
            "CASCADE_PORT": str(self.port),
            "CASCADE_STATE_DIR": str(workdir / "state"),
            "CASCADE_LOG_LEVEL": "warning",
            "CASCADE_LOG_FORMAT": "json",
            "CASCADE_MODEL": "qwen3.6-27b-cascade",
            "CASCADE_BATCH_POLL_INTERVAL": "0.05",
            "CASCADE_BATCH_BLOCK_MS": "100",
        }
        self.env |= {f"CASCADE_{k.upper()}": str(v) for k, v in batch_env.items()}
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        handle = (self.workdir / log).open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            cwd=REPO,
            stdout=handle,
            stderr=handle,
        )
        handle.close()
        return proc

    async def start(self, workers: int) -> None:
        self.api = self._spawn(["serve"], "api.log")
        self.workers = [
            self._spawn(["worker", "--name", f"bench-{i}-{time.monotonic_ns()}"], f"w{i}.log")
            for i in range(workers)
        ]
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    if (await client.get(self.url + "/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("cascade did not start")
        await asyncio.sleep(1.5)  # workers import and join the group

    def pids(self) -> dict[str, list[int]]:
        assert self.api is not None
        return {"api": [self.api.pid], "workers": [w.pid for w in self.workers]}

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def write_input(path: Path, count: int) -> None:
    with path.open("w") as fh:
        for i in range(count):
            line = {
                "custom_id": f"item-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "qwen3.6-27b-cascade",
                    "messages": [{"role": "user", "content": f"Question number {i}?"}],
                    "max_tokens": 32,
                    "server_tools": [],
                },
            }
            fh.write(json.dumps(line) + "\n")


async def run_batch(
    stack: Stack,
    input_path: Path,
    *,
    sample_rss: bool = False,
    limit_s: float = 3600.0,
) -> dict[str, Any]:
    pids = stack.pids()
    everyone = [*pids["api"], *pids["workers"]]
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as client:
        with input_path.open("rb") as fh:
            upload = await client.post(
                "/v1/files", files={"file": ("input.jsonl", fh)}, data={"purpose": "batch"}
            )
        upload.raise_for_status()
        cpu0 = {pid: cpu_seconds(pid) for pid in everyone}
        started = time.perf_counter()
        created = await client.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        created.raise_for_status()
        batch_id = created.json()["id"]
        samples: list[dict[str, float]] = []
        next_sample = 0.0
        while True:
            batch = (await client.get(f"/v1/batches/{batch_id}")).json()
            now = time.perf_counter() - started
            if sample_rss and now >= next_sample:
                counts = batch["request_counts"]
                samples.append(
                    {
                        "t": round(now, 1),
                        "done": counts["completed"] + counts["failed"],
                        "worker_rss_mb": round(memory_mb(pids["workers"][0])[0], 1),
                        "api_rss_mb": round(memory_mb(pids["api"][0])[0], 1),
                    }
                )
                next_sample = now + 5.0
            if batch["status"] in ("completed", "failed", "cancelled", "expired"):
                break
            if now > limit_s:
                raise RuntimeError(f"batch did not finish: {batch['request_counts']}")
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - started
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in everyone}
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["failed"]:
        raise RuntimeError(f"batch ended {batch['status']} with {counts}")
    items = counts["total"]
    api_cpu = sum(cpu[p] for p in pids["api"])
    worker_cpu = sum(cpu[p] for p in pids["workers"])
    result: dict[str, Any] = {
        "items": items,
        "wall_s": round(wall, 3),
        "items_per_s": round(items / wall, 1),
        "cpu_ms_per_item": {
            "api": round(api_cpu / items * 1e3, 3),
            "workers": round(worker_cpu / items * 1e3, 3),
            "total": round((api_cpu + worker_cpu) / items * 1e3, 3),
        },
    }
    if sample_rss:
        result["rss_samples"] = samples
        result["worker_peak_rss_mb"] = round(max(memory_mb(p)[1] for p in pids["workers"]), 1)
        result["api_peak_rss_mb"] = round(memory_mb(pids["api"][0])[1], 1)
    return result


async def item_phase(sim_url: str) -> float:
    """First request received to last answer sent, from the simulator's records (seconds)."""
    async with httpx.AsyncClient(timeout=120) as client:
        records = (await client.get(sim_url + "/sim/requests")).json()["requests"]
        await client.post(sim_url + "/sim/reset")
    first = min(r["received_at"] for r in records)
    last = max(r["finished_at"] for r in records if r.get("finished_at") is not None)
    return float(last - first)


async def configure_sim(sim_url: str, slots: int, latency: float) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(sim_url + "/sim/reset")
        await client.post(
            sim_url + "/sim/config", json={"max_running": slots, "ttft": latency, "tpot": 0.0}
        )
        await client.post(sim_url + "/sim/rules", json=[{"match": None, "output": "Yes."}])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    ideal = args.items * args.latency / args.slots
    summary: dict[str, Any] = {
        "benchmark": "batch",
        "slots": args.slots,
        "latency_s": args.latency,
        "items": args.items,
        "ideal_s": round(ideal, 3),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="cascade-bench-batch-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        try:
            with spawn_simulator(["--max-running", str(args.slots)]) as sim:
                input_path = work / "input.jsonl"
                write_input(input_path, args.items)
                for workers in (1, 3):
                    await configure_sim(sim.url, args.slots, args.latency)
                    # In flight per worker: derived by the worker from the runtime's slots.
                    inflight = math.ceil(args.slots * 1.25)
                    stack = Stack(sim.url, redis.url, work / f"run{workers}")
                    (work / f"run{workers}").mkdir()
                    await stack.start(workers)
                    try:
                        result = await run_batch(stack, input_path)
                    finally:
                        stack.stop()
                    phase = await item_phase(sim.url)
                    result["inflight_per_worker"] = inflight
                    result["efficiency"] = round(ideal / result["wall_s"], 3)
                    result["item_phase_s"] = round(phase, 3)
                    result["item_phase_efficiency"] = round(ideal / phase, 3)
                    summary["runs"][f"{workers}_worker{'s' if workers > 1 else ''}"] = result
                    print(f"{workers} worker(s): {json.dumps(result)}", flush=True)
                if args.big:
                    await configure_sim(sim.url, args.big_slots, 0.0)
                    big_input = work / "big.jsonl"
                    write_input(big_input, args.big)
                    (work / "big").mkdir()
                    stack = Stack(sim.url, redis.url, work / "big")
                    await stack.start(1)
                    try:
                        big = await run_batch(stack, big_input, sample_rss=True)
                    finally:
                        stack.stop()
                    await item_phase(sim.url)
                    big["input_mb"] = round(big_input.stat().st_size / 2**20, 1)
                    summary["big"] = big
                    print(f"big input: {json.dumps(big)}", flush=True)
        finally:
            redis.stop()
    runs = summary["runs"]
    summary["targets"] = {
        "efficiency_ge_0_95": all(r["efficiency"] >= 0.95 for r in runs.values()),
        "worker_peak_rss_le_150mb": (
            summary["big"]["worker_peak_rss_mb"] <= 150 if "big" in summary else None
        ),
    }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.batch")
    parser.add_argument("--items", type=int, default=960, help="items per run (N)")
    parser.add_argument("--slots", type=int, default=32, help="runtime running slots (C)")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds per item (L)")
    parser.add_argument("--big", type=int, default=100_000, help="lines of the RSS run (0: skip)")
    parser.add_argument("--big-slots", type=int, default=16, help="slots for the RSS run")
    args = parser.parse_args()
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
