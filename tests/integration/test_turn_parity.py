"""One turn engine: the same request through `/v1/chat/completions` and through a batch line
reaches the runtime with the same body (rid aside),
under a restrictive operator tool policy and an operator system prompt."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.integration.test_batch_support import (
    await_final,
    batch_api,
    read_lines,
    running_worker,
    upload_jsonl,
)
from tests.integration.test_chat_api import WEATHER_TOOL
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle


def png_data_uri() -> str:
    out = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def test_chat_and_batch_send_the_runtime_the_same_body(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_TOOLS_ENABLED", "clock")
    monkeypatch.setenv("CASCADE_SYSTEM_PROMPT", "You are the house assistant.")
    sim.sim.add_rule(Rule(match=None, output="Red pixels.\n</think>\n\nA red rectangle."))
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in the picture?"},
                    {"type": "image_url", "image_url": {"url": png_data_uri()}},
                ],
            }
        ],
        "tools": [WEATHER_TOOL],
        "server_tools": ["clock"],  # a request with its own tools gets server tools it names
        "temperature": 0.6,
        "top_p": 0.9,
        "max_tokens": 200,
        "stop": ["###"],
        "thinking": True,
        "thinking_budget": 300,
    }
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        client = api.client()
        chat = client.chat.completions.create(
            **{k: body[k] for k in ("model", "messages")},
            extra_body={k: v for k, v in body.items() if k not in ("model", "messages")},
        )
        assert (chat.choices[0].message.content or "").strip() == "A red rectangle."
        line = {"custom_id": "same", "method": "POST", "url": "/v1/chat/completions", "body": body}
        batch = client.batches.create(
            input_file_id=upload_jsonl(client, [line]),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        async with running_worker(api.settings, api.config):
            done = await await_final(client, batch.id)
        [result] = read_lines(client, done.output_file_id)
    assert result["response"]["status_code"] == 200
    via_chat, via_batch = (dict(r.body) for r in sim.sim.requests)
    assert via_chat.pop("rid") != via_batch.pop("rid")
    assert via_chat == via_batch
    # The operator's policy and prompt are in both: only the enabled server tool is offered.
    names = sorted(t["function"]["name"] for t in via_batch["tools"])
    assert names == ["clock", "get_weather"]
    assert via_batch["messages"][0] == {
        "role": "system",
        "content": "You are the house assistant.",
    }
