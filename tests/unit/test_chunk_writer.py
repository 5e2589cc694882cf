"""The chat door's stream chunks: each one an SSE event holding one chat.completion.chunk."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.agent.protocol import ChunkWriter
from app.runtime.models import ThinkingReport, Usage


def _chunk(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert b"\n" not in event[:-2]
    body: dict[str, Any] = orjson.loads(event[6:])
    return body


@pytest.mark.parametrize("text", ["word", ' "quoted" \\ ', "line\nbreak", "ünï 😀", " "])
def test_text_deltas_are_whole_chunks(text: str) -> None:
    writer = ChunkWriter(cid="chatcmpl-1", model="m")
    content = _chunk(writer.content(text))
    reasoning = _chunk(writer.reasoning(text))
    for body in (content, reasoning):
        assert (body["id"], body["object"], body["model"]) == (
            "chatcmpl-1",
            "chat.completion.chunk",
            "m",
        )
        assert isinstance(body["created"], int)
    assert content["choices"] == [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    assert reasoning["choices"] == [
        {"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}
    ]


def test_role_tool_call_finish_and_usage_chunks() -> None:
    writer = ChunkWriter(cid="chatcmpl-2", model="m")
    role = _chunk(writer.role("sess_1"))
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert role["session_id"] == "sess_1"
    call = _chunk(writer.tool_call(0, "call_1", "lookup", ""))
    assert call["choices"][0]["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup", "arguments": ""},
            }
        ]
    }
    more = _chunk(writer.tool_call(0, None, None, '{"a":1}'))
    assert more["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]
    }
    finish = _chunk(writer.finish("stop", {"outcome": "final", "steps": 1}, None))
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert finish["cascade"] == {"outcome": "final", "steps": 1}
    usage = _chunk(
        writer.usage(Usage(prompt_tokens=3, completion_tokens=4), ThinkingReport(enabled=False))
    )
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 7
    assert writer.done() == b"data: [DONE]\n\n"
