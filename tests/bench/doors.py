"""What the Responses door costs over the chat door for the same turn, side by side in one run.

Set-up as in `tests.bench.overhead`: the SGLang simulator (zero latency) and cascade's API each
in their own process, a real redis-server. The same short question is asked through both doors,
in alternating blocks (chat, responses, chat, ...) so that drift on a shared machine falls on both
alike; cascade's own CPU time (its process's counters) is summed per door. Three pairs:

- `stateless`: `/v1/chat/completions` without a session vs `/v1/responses` with `store: false`;
- `stored`: a chat turn that opens a session (`store: true`) vs a stored response (the default);
- `streamed`: both streamed, stateless.

Reported per pair: CPU ms per turn for each door and their ratio (target ≤ 1.10). The JSON summary
is the last line. Run: `python -m tests.bench.doors [turns per block] [blocks]`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.bench.overhead import cpu_seconds, running_cascade

RATIO_MAX = 1.10

Call = Callable[[httpx.AsyncClient, int], Awaitable[None]]


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    response = await client.post(path, json=body)
    response.raise_for_status()


async def _stream(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    async with client.stream("POST", path, json=body) as response:
        response.raise_for_status()
        async for _ in response.aiter_bytes():
            pass


def _chat(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"hello {i}"}], **extra}


def _responses(i: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": f"hello {i}", **extra}


PAIRS: dict[str, tuple[Call, Call]] = {
    "stateless": (
        lambda c, i: _post(c, "/v1/chat/completions", _chat(i)),
        lambda c, i: _post(c, "/v1/responses", _responses(i, store=False)),
    ),
    "stored": (
        lambda c, i: _post(c, "/v1/chat/completions", _chat(i, store=True)),
        lambda c, i: _post(c, "/v1/responses", _responses(i)),
    ),
    "streamed": (
        lambda c, i: _stream(c, "/v1/chat/completions", _chat(i, stream=True)),
        lambda c, i: _stream(c, "/v1/responses", _responses(i, store=False, stream=True)),
    ),
}


async def measure_pair(
    client: httpx.AsyncClient, pid: int, chat: Call, responses: Call, *, turns: int, blocks: int
) -> dict[str, float]:
    """CPU per turn of each door over `blocks` alternating blocks of `turns` turns each."""
    for i in range(10):  # warm both paths (imports, pools, scripts)
        await chat(client, i)
        await responses(client, i)
    spent = {"chat": 0.0, "responses": 0.0}
    for block in range(blocks):
        order = [("chat", chat), ("responses", responses)]
        if block % 2:
            order.reverse()
        for door, call in order:
            cpu0 = cpu_seconds(pid)
            for i in range(turns):
                await call(client, block * turns + i)
            spent[door] += cpu_seconds(pid) - cpu0
    total = turns * blocks
    chat_ms, responses_ms = spent["chat"] / total * 1e3, spent["responses"] / total * 1e3
    return {
        "chat_cpu_ms_per_turn": round(chat_ms, 3),
        "responses_cpu_ms_per_turn": round(responses_ms, 3),
        "ratio": round(responses_ms / chat_ms, 3) if chat_ms else 0.0,
    }


async def bench(sim_url: str, cascade_url: str, pid: int, *, turns: int, blocks: int) -> Any:
    async with httpx.AsyncClient(base_url=sim_url, timeout=60) as sim:
        response = await sim.post("/sim/rules", json=[{"match": None, "output": "A short answer."}])
        response.raise_for_status()
    async with httpx.AsyncClient(base_url=cascade_url, timeout=60) as client:
        return {
            name: await measure_pair(client, pid, chat, responses, turns=turns, blocks=blocks)
            for name, (chat, responses) in PAIRS.items()
        }


def run(turns: int, blocks: int) -> dict[str, Any]:
    with running_cascade() as (sim_url, url, pid):
        results = asyncio.run(bench(sim_url, url, pid, turns=turns, blocks=blocks))
    return {"benchmark": "doors", **results, "targets": {"ratio_max": RATIO_MAX}}


def main() -> None:
    turns = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    results = run(turns, blocks)
    for name in PAIRS:
        print(f"{name}: {results[name]}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
