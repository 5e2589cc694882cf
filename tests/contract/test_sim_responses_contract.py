"""The simulator's `/v1/chat/completions` bodies and stream chunks, against SGLang's own models.

Every corpus output is served by the simulator, once whole and once streamed. Each response
body must validate as SGLang 0.5.23's `ChatCompletionResponse` and be exactly what SGLang
writes for that model (`model_dump_json(by_alias=True)`, see `model_json_response`). Each
stream chunk must validate as `ChatCompletionStreamResponse` and be byte-for-byte one of the
two shapes SGLang writes: the msgspec chunk of `sse_utils.build_sse_content` (role, reasoning,
plain content, finish) or the pydantic chunk's `model_dump_json()` (tool-parser content,
tool calls, usage).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.contract import reference
from tests.contract.corpus import CASES, Case
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle, running_simulator

pytestmark = pytest.mark.contract

_SERVED = [case for case in CASES if not case.stream_raises]


def _marker(case: Case) -> str:
    return f"[corpus:{case.name}]"


def _request_body(case: Case, *, stream: bool) -> dict[str, Any]:
    body = case.body()
    messages = body["messages"]
    users = [m for m in messages if m["role"] == "user"]
    users[-1]["content"] = f"{_marker(case)} {users[-1]['content']}"
    body["max_tokens"] = 4096
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.fixture(scope="module")
def sim() -> Iterator[SimHandle]:
    rules = [Rule(match=_marker(case), output=case.output) for case in _SERVED]
    with running_simulator(rules=rules) as handle:
        yield handle


def _sse_payloads(text: str) -> list[str]:
    events = [event for event in text.split("\n\n") if event.strip()]
    payloads = []
    for event in events:
        assert event.startswith("data: "), event
        payloads.append(event[len("data: ") :])
    return payloads


def _light_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """SGLang's `build_sse_content` output for the values in `chunk`, or None when the chunk
    carries something that function can not write (tool calls, no choice)."""
    sse_utils = reference._mod("sglang.srt.entrypoints.openai.sse_utils")
    if len(chunk.get("choices", [])) != 1:
        return None
    choice = chunk["choices"][0]
    delta = choice.get("delta", {})
    if "tool_calls" in delta:
        return None
    line = sse_utils.build_sse_content(
        chunk_id=chunk["id"],
        created=chunk["created"],
        model=chunk["model"],
        index=choice["index"],
        role=delta.get("role"),
        content=delta.get("content"),
        reasoning_content=delta.get("reasoning_content"),
        finish_reason=choice.get("finish_reason"),
        logprobs=choice.get("logprobs"),
        matched_stop=choice.get("matched_stop"),
        usage=chunk.get("usage"),
    )
    assert line.startswith("data: ") and line.endswith("\n\n")
    light: dict[str, Any] = json.loads(line[len("data: ") : -2])
    return light


@pytest.mark.parametrize("case", _SERVED, ids=[case.name for case in _SERVED])
def test_non_streaming_body_is_an_sglang_chat_completion_response(
    sim: SimHandle, case: Case
) -> None:
    protocol = reference._mod("sglang.srt.entrypoints.openai.protocol")
    response = httpx.post(
        f"{sim.url}/v1/chat/completions", json=_request_body(case, stream=False), timeout=30
    )
    assert response.status_code == 200, response.text
    raw = response.json()
    model = protocol.ChatCompletionResponse.model_validate(raw)
    assert json.loads(model.model_dump_json(by_alias=True)) == raw
    assert model.choices[0].message.content is not None


@pytest.mark.parametrize("case", _SERVED, ids=[case.name for case in _SERVED])
def test_stream_chunks_are_sglang_chat_completion_chunks(sim: SimHandle, case: Case) -> None:
    protocol = reference._mod("sglang.srt.entrypoints.openai.protocol")
    response = httpx.post(
        f"{sim.url}/v1/chat/completions", json=_request_body(case, stream=True), timeout=30
    )
    assert response.status_code == 200, response.text
    payloads = _sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert chunks, "no chunk before [DONE]"
    for chunk in chunks:
        model = protocol.ChatCompletionStreamResponse.model_validate(chunk)
        shapes = [json.loads(model.model_dump_json()), _light_chunk(chunk)]
        assert chunk in shapes, f"chunk in neither SGLang shape: {chunk}"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finishes) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
