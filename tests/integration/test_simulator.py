"""The SGLang 0.5.23 simulator, driven over HTTP as cascade drives the real runtime.

Expected shapes come from SGLang 0.5.23's source (serving_chat.py, protocol.py, sse_utils.py,
usage_processor.py, http_server.py, tokenizer_manager.py, scheduler.py) and from what a real
SGLang runtime was seen to do (the docstrings of `tests.sglang_sim` name it); token counts are
computed with the simulator's documented tokenizer approximation (`tests.sglang_sim.tokens`) and
the project's chat template."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.sglang_sim import Fault, Rule, SimConfig
from tests.sglang_sim.state import RecordedRequest
from tests.sglang_sim.template import render_chat_prompt
from tests.sglang_sim.testing import SimHandle, running_simulator, spawn_simulator
from tests.sglang_sim.tokens import tokenize

EOS_ID = 248046  # `<|im_end|>`, the simulator's matched_stop for a natural stop
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
REASONING = "I should look up the weather.\n"
TOOL_XML = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)
TOOL_OUTPUT = f"{REASONING}</think>\n\nLet me check.\n\n{TOOL_XML}"
THINKING = {"enable_thinking": True}
LONG_ANSWER = " ".join(["lorem"] * 40)  # 40 tokens


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def tokens(text: str) -> int:
    return len(tokenize(text))


@pytest.fixture
def handle() -> Iterator[SimHandle]:
    with running_simulator(SimConfig()) as running:
        yield running


@asynccontextmanager
async def client(handle: SimHandle, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=handle.url, timeout=10.0, **kwargs) as http:
        yield http


async def chat(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("model", "qwen3.6-27b-cascade")
    return await http.post("/v1/chat/completions", json=body)


async def stream_events(http: httpx.AsyncClient, **body: Any) -> list[str]:
    """The `data:` payloads of a streamed completion, `[DONE]` included."""
    body.setdefault("model", "qwen3.6-27b-cascade")
    events: list[str] = []
    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line:
                assert line.startswith("data: ")
                events.append(line.removeprefix("data: "))
    return events


def record_for(handle: SimHandle, rid: str) -> RecordedRequest:
    return next(r for r in handle.sim.requests if r.rid == rid)


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- non-streaming


async def test_non_streaming_reasoning_content_and_tool_calls(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(match="weather", output=TOOL_OUTPUT))
    messages = user("What is the weather in Paris?")
    async with client(handle) as http:
        response = await chat(
            http, messages=messages, tools=TOOLS, chat_template_kwargs=THINKING, rid="req-1"
        )
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "metadata"]
    assert body["id"] == "req-1"
    assert body["object"] == "chat.completion"
    assert body["model"] == "qwen3.6-27b-cascade"
    assert body["metadata"] == {"weight_version": "default"}
    (choice,) = body["choices"]
    assert list(choice) == ["index", "message", "logprobs", "finish_reason", "matched_stop"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["matched_stop"] is None  # cleared when stop becomes tool_calls
    message = choice["message"]
    assert list(message) == ["role", "content", "reasoning_content", "tool_calls"]
    assert message["role"] == "assistant"
    assert message["reasoning_content"] == REASONING
    assert message["content"] == "\n\nLet me check.\n\n"
    (call,) = message["tool_calls"]
    assert CALL_ID.match(call["id"])
    assert call["index"] == 0
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}

    prompt = render_chat_prompt(messages, tools=TOOLS, enable_thinking=True)
    reasoning_tokens = tokens(REASONING) + 1  # `</think>` included
    completion_tokens = tokens(TOOL_OUTPUT) + 1  # EOS included
    assert body["usage"] == {
        "prompt_tokens": tokens(prompt),
        "total_tokens": tokens(prompt) + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "reasoning_tokens": reasoning_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }
    record = record_for(handle, "req-1")
    assert record.prompt == prompt
    assert record.body["rid"] == "req-1"
    assert record.finish_reason == "tool_calls"


async def test_non_streaming_plain_answer_with_server_defaults(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Paris is the capital of France."))
    async with client(handle) as http:
        response = await chat(http, messages=user("Capital of France?"))
    body = response.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])  # a uuid4 hex rid when none is given
    (choice,) = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "Paris is the capital of France.",
        "reasoning_content": None,
    }
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == EOS_ID
    usage = body["usage"]
    assert usage["reasoning_tokens"] == 0
    assert usage["completion_tokens_details"] is None
    assert usage["completion_tokens"] == tokens("Paris is the capital of France.") + 1
    # The server default turns thinking off: the prompt ends with a closed think block.
    (record,) = handle.sim.requests
    assert record.prompt is not None
    assert record.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


async def test_default_answer_without_rules_follows_thinking(handle: SimHandle) -> None:
    async with client(handle) as http:
        plain = (await chat(http, messages=user("hi"))).json()
        thinking = (await chat(http, messages=user("hi"), reasoning_effort="high")).json()
    assert plain["choices"][0]["message"]["content"]
    assert plain["choices"][0]["message"]["reasoning_content"] is None
    # reasoning_effort other than "none" switches thinking on (protocol.py).
    assert thinking["choices"][0]["message"]["reasoning_content"]
    assert thinking["usage"]["reasoning_tokens"] > 0


# --------------------------------------------------------------------------- streaming


def _phase(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return "usage"
    choice = chunk["choices"][0]
    delta = choice["delta"]
    if choice["finish_reason"] is not None:
        return "finish"
    if delta.get("role") == "assistant":
        return "role"
    if delta.get("tool_calls"):
        return "tool"
    if delta.get("reasoning_content"):
        return "reasoning"
    if delta.get("content"):
        return "content"
    raise AssertionError(f"unexpected chunk {chunk}")


async def test_streaming_chunk_order_and_shapes(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=TOOL_OUTPUT))
    async with client(handle) as http:
        events = await stream_events(
            http,
            messages=user("Weather in Paris?"),
            tools=TOOLS,
            chat_template_kwargs=THINKING,
            stream_options={"include_usage": True},
            rid="stream-1",
        )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["id"] == "stream-1" and c["object"] == "chat.completion.chunk" for c in chunks)
    phases = [_phase(c) for c in chunks]
    order = ["role", "reasoning", "content", "tool", "finish", "usage"]
    assert phases == sorted(phases, key=order.index)
    assert set(phases) == set(order)
    assert phases.count("role") == phases.count("finish") == phases.count("usage") == 1

    # First chunk: sse_utils.build_sse_content (reasoning_content always present, no usage).
    first = chunks[0]
    assert first["choices"][0]["delta"] == {
        "reasoning_content": None,
        "role": "assistant",
        "content": "",
    }
    assert "usage" not in first
    reasoning = [c for c, p in zip(chunks, phases, strict=True) if p == "reasoning"]
    assert all(list(c["choices"][0]["delta"]) == ["reasoning_content"] for c in reasoning)
    assert "".join(c["choices"][0]["delta"]["reasoning_content"] for c in reasoning) == REASONING
    # With the tool parser active, content chunks are pydantic dumps: every field, usage null.
    content = [c for c, p in zip(chunks, phases, strict=True) if p == "content"]
    for chunk in content:
        assert list(chunk["choices"][0]["delta"]) == ["role", "content", "reasoning_content"]
        assert chunk["usage"] is None
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "\n\nLet me check.\n\n"

    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c, p in zip(chunks, phases, strict=True)
        if p == "tool"
    ]
    assert CALL_ID.match(calls[0]["id"])
    assert calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["type"] == "function"
    for fragment in calls[1:]:
        assert fragment["id"] is None
        assert fragment["function"]["name"] is None
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"city": "Paris", "days": 3}
    assert {call["index"] for call in calls} == {0}

    finish = chunks[phases.index("finish")]
    assert finish["choices"][0]["delta"] == {"reasoning_content": None}
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert finish["choices"][0]["matched_stop"] == EOS_ID  # streaming keeps it
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == tokens(TOOL_OUTPUT) + 1
    assert usage["usage"]["reasoning_tokens"] == tokens(REASONING) + 1


async def test_streaming_plain_content_without_usage(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Hello there, friend."))
    async with client(handle) as http:
        events = await stream_events(http, messages=user("hi"))
    chunks = [json.loads(event) for event in events[:-1]]
    assert events[-1] == "[DONE]"
    # No tool parser: content chunks come from build_sse_content (no role, no usage key).
    content = chunks[1:-1]
    assert content
    for chunk in content:
        assert list(chunk["choices"][0]["delta"]) == ["reasoning_content", "content"]
        assert "usage" not in chunk
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "Hello there, friend."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # no usage chunk without asking


async def test_streaming_headers_wait_for_the_first_token(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Hello.", ttft=0.3))
    async with client(handle) as http:
        started = time.monotonic()
        request = http.build_request(
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": user("hi"), "stream": True},
        )
        response = await http.send(request, stream=True)
        waited = time.monotonic() - started
        await response.aread()
        await response.aclose()
    (record,) = handle.sim.requests
    assert record.first_token_at is not None and record.started_at is not None
    # serving_chat.py primes the generator before returning the StreamingResponse.
    assert waited >= record.first_token_at - record.started_at


async def test_continuous_usage_and_hidden_reasoning_stream(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=f"{REASONING}</think>\n\nSunny."))
    async with client(handle) as http:
        events = await stream_events(
            http,
            messages=user("Weather?"),
            chat_template_kwargs=THINKING,
            stream_reasoning=False,
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    chunks = [json.loads(event) for event in events[:-1]]
    reasoning = [
        c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("reasoning_content")
    ]
    # stream_reasoning=false: the reasoning arrives in one piece once it ends.
    assert len(reasoning) == 1
    assert reasoning[0]["choices"][0]["delta"]["reasoning_content"] == REASONING
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content and all(c["usage"]["prompt_tokens"] > 0 for c in content)


# --------------------------------------------------------------------------- thinking budget


BUDGET_REASONING = " ".join(f"step{i}" for i in range(30)) + ".\n"
BUDGET_OUTPUT = f"{BUDGET_REASONING}</think>\n\nThe answer is 42."


async def test_thinking_budget_is_enforced(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=BUDGET_OUTPUT))
    async with client(handle) as http:
        body = (
            await chat(
                http,
                messages=user("Think hard"),
                chat_template_kwargs=THINKING,
                custom_params={"thinking_budget": 5},
            )
        ).json()
    message = body["choices"][0]["message"]
    # N reasoning tokens, a forced `</think>`, then the script's answer.
    assert message["reasoning_content"] == "".join(tokenize(BUDGET_REASONING)[:5])
    assert message["content"] == "\n\nThe answer is 42."
    assert body["usage"]["reasoning_tokens"] == 6
    assert body["usage"]["completion_tokens"] == 5 + 1 + tokens("\n\nThe answer is 42.") + 1
    assert handle.sim.requests[0].budget_forced


async def test_thinking_budget_ignored_reproduces_issue_25536(handle: SimHandle) -> None:
    handle.sim.update_config(ignore_thinking_budget=True)
    handle.sim.add_rule(Rule(output=BUDGET_OUTPUT))
    async with client(handle) as http:
        body = (
            await chat(
                http,
                messages=user("Think hard"),
                chat_template_kwargs=THINKING,
                custom_params={"thinking_budget": 5},
            )
        ).json()
    assert body["choices"][0]["message"]["reasoning_content"] == BUDGET_REASONING
    assert body["usage"]["reasoning_tokens"] == tokens(BUDGET_REASONING) + 1


async def test_thinking_budget_needs_thinking_on(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Plain answer."))
    async with client(handle) as http:
        body = (
            await chat(http, messages=user("Quick"), custom_params={"thinking_budget": 1})
        ).json()
    assert body["choices"][0]["message"]["content"] == "Plain answer."
    assert body["usage"]["reasoning_tokens"] == 0


# --------------------------------------------------------------------------- finishing


async def test_max_tokens_cuts_the_output_with_length(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    async with client(handle) as http:
        body = (await chat(http, messages=user("Talk"), max_tokens=5)).json()
        events = await stream_events(http, messages=user("Talk"), max_completion_tokens=7)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["matched_stop"] is None
    assert choice["message"]["content"] == "".join(tokenize(LONG_ANSWER)[:5])
    assert body["usage"]["completion_tokens"] == 5
    finish = json.loads(events[-2])
    assert finish["choices"][0]["finish_reason"] == "length"
    streamed = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[1:-2]
    )
    assert streamed == "".join(tokenize(LONG_ANSWER)[:7])


async def test_max_tokens_counts_reasoning_too(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=BUDGET_OUTPUT))
    async with client(handle) as http:
        body = (
            await chat(http, messages=user("Think"), chat_template_kwargs=THINKING, max_tokens=4)
        ).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["reasoning_content"] == "".join(tokenize(BUDGET_REASONING)[:4])
    assert choice["message"]["content"] == ""
    assert body["usage"]["reasoning_tokens"] == body["usage"]["completion_tokens"] == 4


async def test_stop_string_trims_and_is_reported(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="one two STOP three four"))
    async with client(handle) as http:
        body = (await chat(http, messages=user("Count"), stop=["STOP"])).json()
        events = await stream_events(http, messages=user("Count"), stop="STOP")
    choice = body["choices"][0]
    # detokenizer_manager.py `trim_matched_stop`: the text before the stop string.
    assert choice["message"]["content"] == "one two "
    assert choice["finish_reason"] == "stop"
    assert choice["matched_stop"] == "STOP"
    streamed = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[1:-2]
    )
    assert streamed == "one two "
    assert json.loads(events[-2])["choices"][0]["matched_stop"] == "STOP"


async def test_streaming_holds_back_a_possible_stop_string(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="alpha ST beta STOP gamma"))
    async with client(handle) as http:
        events = await stream_events(http, messages=user("Go"), stop=["STOP"])
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
    # output_streamer.py: the step ending in " ST" (a prefix of "STOP") is not streamed.
    assert contents == ["alpha", " ST beta", " "]


# --------------------------------------------------------------------------- continuation


async def test_continue_final_message_classification(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(continuation=True, output="more thoughts.\n</think>\n\nIt is 42."))
    handle.sim.add_rule(Rule(continuation=False, output="fresh answer"))
    messages = [
        *user("What is the answer?"),
        {"role": "assistant", "content": "", "reasoning_content": "partial reasoning"},
    ]
    async with client(handle) as http:
        thinking = (
            await chat(
                http,
                messages=messages,
                continue_final_message=True,
                chat_template_kwargs=THINKING,
                rid="cont-thinking",
            )
        ).json()
        handle.sim.set_rules([Rule(continuation=True, output="It is 42.")])
        answer = (
            await chat(
                http,
                messages=messages,
                continue_final_message=True,
                chat_template_kwargs={"enable_thinking": False, "preserve_thinking": True},
                rid="cont-answer",
            )
        ).json()
    # enable_thinking true: the parser assumes the continuation starts inside <think>.
    message = thinking["choices"][0]["message"]
    assert message["reasoning_content"] == "more thoughts.\n"
    assert message["content"] == "\n\nIt is 42."
    assert thinking["usage"]["reasoning_tokens"] == tokens("more thoughts.\n") + 1
    # {"enable_thinking": false, "preserve_thinking": true}: all of it is content.
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] is None
    assert message["content"] == "It is 42."
    assert answer["usage"]["reasoning_tokens"] == 0
    # SGLang drops the final assistant message and appends its (empty) content after the
    # generation prompt; its reasoning_content is not rendered.
    first = record_for(handle, "cont-thinking").prompt
    second = record_for(handle, "cont-answer").prompt
    assert first is not None and first.endswith("<|im_start|>assistant\n<think>\n")
    assert second is not None and second.endswith("<think>\n\n</think>\n\n")
    assert "partial reasoning" not in first + second


async def test_continuing_a_null_assistant_content_breaks_the_reasoning_parser(
    handle: SimHandle,
) -> None:
    # SGLang hands the null content to the qwen3 parser as previous_content and fails.
    messages = [*user("Question?"), {"role": "assistant", "content": None}]
    async with client(handle) as http:
        broken = await chat(http, messages=messages, continue_final_message=True)
        unparsed = await chat(
            http, messages=messages, continue_final_message=True, separate_reasoning=False
        )
    assert broken.status_code == 500
    assert broken.json()["message"] == "Failed to parse reasoning content"
    assert broken.json()["type"] == "InternalServerError"
    assert unparsed.status_code == 200  # no reasoning parser, no failure


# --------------------------------------------------------------------------- prefix cache


async def test_cached_tokens_grow_on_a_repeated_prefix(handle: SimHandle) -> None:
    system = {"role": "system", "content": "You are a helpful assistant. " * 10}
    first_messages = [system, *user("First question about apples")]
    other_messages = [system, *user("Second question about pears")]
    async with client(handle) as http:
        first = (await chat(http, messages=first_messages)).json()
        again = (await chat(http, messages=first_messages)).json()
        other = (await chat(http, messages=other_messages)).json()
        handle.sim.update_config(enable_cache_report=False)
        unreported = (await chat(http, messages=first_messages)).json()
        handle.sim.update_config(enable_cache_report=True)
        assert (await http.post("/flush_cache")).status_code == 200
        flushed = (await chat(http, messages=first_messages)).json()
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    prompt_tokens = again["usage"]["prompt_tokens"]
    # The whole prompt is cached but one token, which is always computed.
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": prompt_tokens - 1}
    a = tokenize(render_chat_prompt(first_messages, enable_thinking=False))
    b = tokenize(render_chat_prompt(other_messages, enable_thinking=False))
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert 0 < shared < len(b) - 1
    assert other["usage"]["prompt_tokens_details"] == {"cached_tokens": shared}
    assert unreported["usage"]["prompt_tokens_details"] is None
    assert flushed["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_cache_page_size_rounds_hits_down(handle: SimHandle) -> None:
    handle.sim.update_config(cache_page_size=16)
    messages = user("Tell me something about caching pages in a radix tree, please.")
    async with client(handle) as http:
        await chat(http, messages=messages)
        again = (await chat(http, messages=messages)).json()
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    prompt_tokens = again["usage"]["prompt_tokens"]
    assert cached % 16 == 0
    assert prompt_tokens - 1 - 16 < cached <= prompt_tokens - 1


# --------------------------------------------------------------------------- abort


async def test_abort_matches_rids_by_prefix_non_streaming(handle: SimHandle) -> None:
    handle.sim.update_config(tpot=0.05)
    handle.sim.add_rule(Rule(match="Talk", output=LONG_ANSWER))
    handle.sim.add_rule(Rule(match="Brief", output="Done.", tpot=0.0))
    async with client(handle) as http:
        tasks = {
            rid: asyncio.create_task(chat(http, messages=user(text), rid=rid))
            for rid, text in (("job-1", "Talk"), ("job-1-b", "Talk"), ("job-2", "Brief"))
        }
        await wait_until(
            lambda: sum(r.first_token_at is not None for r in handle.sim.requests) == 3
        )
        # The tokenizer manager forwards an abort only for a live rid; "job" names none.
        assert (await http.post("/abort_request", json={"rid": "job"})).status_code == 200
        await asyncio.sleep(0.05)
        assert handle.sim.aborted_rids == []
        assert (await http.post("/abort_request", json={"rid": "job-1"})).status_code == 200
        bodies = {rid: (await task).json() for rid, task in tasks.items()}
    assert sorted(handle.sim.aborted_rids) == ["job-1", "job-1-b"]
    for rid in ("job-1", "job-1-b"):
        choice = bodies[rid]["choices"][0]
        assert choice["finish_reason"] == "abort"
        assert choice["matched_stop"] is None
        completion = bodies[rid]["usage"]["completion_tokens"]
        assert 0 < completion < tokens(LONG_ANSWER)
        assert choice["message"]["content"] == "".join(tokenize(LONG_ANSWER)[:completion])
        assert record_for(handle, rid).abort_reason == "abort_request"
    assert bodies["job-2"]["choices"][0]["finish_reason"] == "stop"


async def test_abort_streaming_request(handle: SimHandle) -> None:
    handle.sim.update_config(tpot=0.05)
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    events: list[str] = []
    async with client(handle) as http:
        body = {
            "model": "m",
            "messages": user("Talk"),
            "stream": True,
            "rid": "s-1",
            "stream_options": {"include_usage": True},
        }
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line:
                    continue
                events.append(line.removeprefix("data: "))
                if len(events) == 3:
                    await http.post("/abort_request", json={"rid": "s-1", "abort_all": False})
    assert events[-1] == "[DONE]"
    finish, usage = json.loads(events[-3]), json.loads(events[-2])
    assert finish["choices"][0]["finish_reason"] == "abort"
    assert usage["choices"] == [] and 0 < usage["usage"]["completion_tokens"] < tokens(LONG_ANSWER)
    assert handle.sim.aborted_rids == ["s-1"]


async def test_client_disconnect_aborts_the_request(handle: SimHandle) -> None:
    handle.sim.update_config(tpot=0.05)
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    async with client(handle) as http:
        body = {"model": "m", "messages": user("Talk"), "stream": True, "rid": "gone-1"}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line:
                    break  # leave after the first chunk
    await wait_until(lambda: handle.sim.aborted_rids == ["gone-1"])
    record = record_for(handle, "gone-1")
    await wait_until(lambda: record.finish_reason is not None)
    assert record.client_disconnected
    assert record.abort_reason == "client_disconnect"
    assert record.finish_reason == "abort"
    assert record.completion_tokens < tokens(LONG_ANSWER)


async def test_abort_of_a_queued_request(handle: SimHandle) -> None:
    handle.sim.update_config(max_running=1, tpot=0.02)
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    async with client(handle) as http:
        running = asyncio.create_task(chat(http, messages=user("Talk"), rid="first"))
        await wait_until(lambda: any(r.started_at for r in handle.sim.requests))
        queued = asyncio.create_task(chat(http, messages=user("Talk"), rid="second"))
        await wait_until(lambda: len(handle.sim.requests) == 2 and handle.sim.requests[1].rid)
        await http.post("/abort_request", json={"rid": "second"})
        aborted = (await queued).json()
        (await http.post("/abort_request", json={"rid": "first"})).raise_for_status()
        await running
    assert aborted["choices"][0]["finish_reason"] == "abort"
    # Aborted in the waiting queue: SGLang's abort output has no prompt/cached counts.
    assert aborted["usage"]["prompt_tokens"] == 0
    assert aborted["usage"]["completion_tokens"] == 0
    assert record_for(handle, "second").started_at is None


async def test_duplicate_live_rid_is_rejected(handle: SimHandle) -> None:
    handle.sim.update_config(tpot=0.02)
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    async with client(handle) as http:
        first = asyncio.create_task(chat(http, messages=user("Talk"), rid="dup"))
        await wait_until(lambda: any(r.started_at for r in handle.sim.requests))
        duplicate = await chat(http, messages=user("Talk"), rid="dup")
        await http.post("/abort_request", json={"rid": "dup"})
        await first
    assert duplicate.status_code == 400
    assert duplicate.json() == {
        "object": "error",
        "message": "Duplicate request ID detected: dup",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }


# --------------------------------------------------------------------------- faults


async def test_fault_http_500_then_normal(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Recovered.", fault=Fault(kind="http_500", times=2)))
    async with client(handle) as http:
        failures = [await chat(http, messages=user("hi")) for _ in range(2)]
        ok = await chat(http, messages=user("hi"))
    for failure in failures:
        assert failure.status_code == 500
        error = failure.json()
        assert list(error) == ["object", "message", "type", "param", "code"]
        assert error["type"] == "InternalServerError" and error["code"] == 500
    assert ok.json()["choices"][0]["message"]["content"] == "Recovered."


async def test_fault_http_429_has_retry_after(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Later.", fault=Fault(kind="http_429", retry_after=2.5)))
    async with client(handle) as http:
        limited = await chat(http, messages=user("hi"))
        ok = await chat(http, messages=user("hi"))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2.5"
    assert limited.json()["code"] == 429
    assert ok.status_code == 200


async def test_fault_hang_until_the_client_leaves(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="Awake.", fault=Fault(kind="hang")))
    async with client(handle) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/v1/chat/completions", json={"messages": user("hi")}, timeout=0.3)
        await wait_until(lambda: handle.sim.requests[0].client_disconnected)
        ok = await chat(http, messages=user("hi"))
    assert handle.sim.requests[0].fault == "hang"
    assert handle.sim.requests[0].status_code is None
    assert ok.json()["choices"][0]["message"]["content"] == "Awake."


async def test_fault_cut_stream(handle: SimHandle) -> None:
    handle.sim.add_rule(
        Rule(output=LONG_ANSWER, fault=Fault(kind="cut_stream", after_chunks=2, times=2))
    )
    async with client(handle) as http:
        events: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):
            async with http.stream(
                "POST", "/v1/chat/completions", json={"messages": user("hi"), "stream": True}
            ) as response:
                async for line in response.aiter_lines():
                    if line:
                        events.append(line)
        with pytest.raises(httpx.RemoteProtocolError):
            await chat(http, messages=user("hi"))
        ok = await chat(http, messages=user("hi"))
    assert len(events) == 2
    assert "data: [DONE]" not in events
    assert ok.json()["choices"][0]["message"]["content"] == LONG_ANSWER


async def test_fault_malformed_chunk(handle: SimHandle) -> None:
    handle.sim.add_rule(
        Rule(output="Fine words.", fault=Fault(kind="malformed_chunk", after_chunks=1, times=2))
    )
    async with client(handle) as http:
        events = await stream_events(http, messages=user("hi"))
        broken = await chat(http, messages=user("hi"))
    assert events[-1] == "[DONE]"
    bad = []
    for event in events[:-1]:
        try:
            json.loads(event)
        except json.JSONDecodeError:
            bad.append(event)
    assert len(bad) == 1
    assert events.index(bad[0]) == 1
    assert broken.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.content)


# --------------------------------------------------------------------------- tool_choice

TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
NAMED_TIME = {"type": "function", "function": {"name": "get_time"}}


async def test_required_tool_choice_turns_a_plain_answer_into_a_call(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="It is sunny, no tool needed."))
    async with client(handle) as http:
        forced = await chat(http, messages=user("hi"), tools=TOOLS, tool_choice="required")
        free = await chat(http, messages=user("hi"), tools=TOOLS, tool_choice="auto")
    choice = forced.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    # The first offered tool, its required parameter with a placeholder value.
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": ""}'}
    assert choice["message"]["content"] == ""
    assert free.json()["choices"][0]["message"]["content"] == "It is sunny, no tool needed."


async def test_required_tool_choice_drops_text_before_the_call(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=TOOL_OUTPUT))
    async with client(handle) as http:
        response = await chat(
            http,
            messages=user("weather?"),
            tools=TOOLS,
            tool_choice="required",
            chat_template_kwargs=THINKING,
        )
    message = response.json()["choices"][0]["message"]
    assert message["reasoning_content"] == REASONING  # the grammar starts after the reasoning
    assert message["content"] == ""  # "Let me check." may not precede the call
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris",
        "days": 3,
    }
    assert handle.sim.requests[-1].output == f"{REASONING}</think>{TOOL_XML}"


async def test_named_tool_choice_forces_exactly_that_tool(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=f"{TOOL_XML}\nand more text"))
    async with client(handle) as http:
        named = await chat(
            http, messages=user("q"), tools=[*TOOLS, TIME_TOOL], tool_choice=NAMED_TIME
        )
        weather = await chat(
            http,
            messages=user("q"),
            tools=[*TOOLS, TIME_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    (call,) = named.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "get_time", "arguments": '{"zone": ""}'}
    weather_message = weather.json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in weather_message["tool_calls"]] == ["get_weather"]
    assert weather_message["content"] == ""
    assert handle.sim.requests[-1].output == TOOL_XML  # nothing after the one call


async def test_required_tool_choice_streams_the_forced_call(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output="No call from me."))
    async with client(handle) as http:
        events = await stream_events(http, messages=user("q"), tools=TOOLS, tool_choice="required")
    chunks = [json.loads(e) for e in events[:-1]]
    names = [
        call["function"]["name"]
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls") or []
        if call["function"].get("name")
    ]
    assert names == ["get_weather"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"


async def test_required_tool_choice_applies_after_a_forced_think_end(handle: SimHandle) -> None:
    handle.sim.add_rule(Rule(output=" ".join(["hmm"] * 50)))  # reasoning that never closes
    async with client(handle) as http:
        response = await chat(
            http,
            messages=user("q"),
            tools=TOOLS,
            tool_choice="required",
            chat_template_kwargs=THINKING,
            custom_params={"thinking_budget": 5},
        )
    body = response.json()
    assert body["usage"]["reasoning_tokens"] == 6
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_tool_choice_none_leaves_the_tools_out_and_parses_no_call(
    handle: SimHandle,
) -> None:
    handle.sim.add_rule(Rule(output=TOOL_XML))
    async with client(handle) as http:
        response = await chat(http, messages=user("q"), tools=TOOLS, tool_choice="none")
    message = response.json()["choices"][0]["message"]
    assert message.get("tool_calls") is None and message["content"] == TOOL_XML
    assert "get_weather" not in handle.sim.requests[-1].prompt


# --------------------------------------------------------------------------- scheduling


async def test_max_running_queues_the_second_request(handle: SimHandle) -> None:
    handle.sim.update_config(max_running=1, tpot=0.02)
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    async with client(handle) as http:
        first = asyncio.create_task(chat(http, messages=user("one"), rid="q-1"))
        await wait_until(lambda: any(r.started_at for r in handle.sim.requests))
        second = asyncio.create_task(chat(http, messages=user("two"), rid="q-2"))
        await wait_until(lambda: len(handle.sim.requests) == 2)
        await asyncio.sleep(0.05)
        metrics = (await http.get("/metrics")).text
        await first
        await second
    assert re.search(r"^sglang:num_queue_reqs\{[^}]*\} 1\.0$", metrics, re.M)
    assert re.search(r"^sglang:num_running_reqs\{[^}]*\} 1\.0$", metrics, re.M)
    one, two = record_for(handle, "q-1"), record_for(handle, "q-2")
    assert one.generation_ended_at is not None and two.started_at is not None
    assert two.received_at < one.generation_ended_at  # it arrived while the first ran
    assert two.started_at >= one.generation_ended_at  # and started only after it ended


async def test_token_usage_is_the_running_requests_share_of_the_pool(handle: SimHandle) -> None:
    handle.sim.update_config(tpot=0.02, max_total_tokens=1000)
    handle.sim.add_rule(Rule(output=LONG_ANSWER))
    async with client(handle) as http:
        idle = (await http.get("/metrics")).text
        running = asyncio.create_task(chat(http, messages=user("one"), rid="u-1"))
        await wait_until(
            lambda: any(r.rid == "u-1" and r.completion_tokens >= 5 for r in handle.sim.requests)
        )
        busy = (await http.get("/metrics")).text
        await running
        held = record_for(handle, "u-1").prompt_tokens

    def usage(text: str) -> float:
        match = re.search(r"^sglang:token_usage\{[^}]*\} (\S+)$", text, re.M)
        assert match is not None
        return float(match.group(1))

    assert usage(idle) == 0.0
    # the prompt and at least the 5 tokens generated by then, of a 1000-token pool
    assert (held + 5) / 1000 <= usage(busy) <= (held + 41) / 1000


async def test_queue_gauges_carry_a_priority_label_only_with_priority_scheduling() -> None:
    with running_simulator(SimConfig(enable_priority_scheduling=False)) as running:
        async with client(running) as http:
            metrics = (await http.get("/metrics")).text
    line = re.search(r"^sglang:num_running_reqs\{([^}]*)\} ", metrics, re.M)
    assert line is not None
    assert "priority" not in line.group(1) and 'tp_rank="0"' in line.group(1)


# --------------------------------------------------------------------------- errors, auth


async def test_request_validation_errors(handle: SimHandle) -> None:
    async with client(handle) as http:
        missing = await http.post("/v1/chat/completions", json={"model": "m"})
        not_json = await http.post("/v1/chat/completions", content=b"hello")
        required = await chat(http, messages=user("hi"), tool_choice="required")
        empty = await chat(http, messages=[])
    for response in (missing, not_json):
        assert response.status_code == 400
        error = response.json()
        assert error["object"] == "error" and error["type"] == "Bad Request"
        assert error["code"] == 400 and error["param"] is None
    assert "messages" in missing.json()["message"]
    assert "application/json" in not_json.json()["message"]
    assert required.status_code == 400
    assert required.json()["message"] == "Tools cannot be empty if tool choice is set to required."
    assert required.json()["type"] == "BadRequestError"
    assert empty.json()["message"] == "Messages cannot be empty."


async def test_an_invalid_tool_schema_is_refused_every_time_a_valid_one_never(
    handle: SimHandle,
) -> None:
    def tool(parameters: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]

    bad = {"type": "object", "properties": {"a": {"type": 5}}}
    good = {"type": "object", "properties": {"a": {"type": "integer"}}}
    async with client(handle) as http:
        # Each verdict is remembered per schema: asked twice, answered the same twice.
        refused = [await chat(http, messages=user("hi"), tools=tool(bad)) for _ in range(2)]
        served = [await chat(http, messages=user("hi"), tools=tool(good)) for _ in range(2)]
    for response in refused:
        assert response.status_code == 400
        assert response.json()["message"].startswith(
            "Tool 0 function has invalid 'parameters' schema: 5 is not valid"
        )
    assert [r.status_code for r in served] == [200, 200]


async def test_api_key_is_required_except_for_probes() -> None:
    with running_simulator(SimConfig(api_key="sekret")) as running:
        async with client(running) as http:
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
            denied = await http.get("/v1/models")
            wrong = await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
            abort = await http.post("/abort_request", json={"rid": "x"})
            chat_denied = await chat(http, messages=user("hi"))
        async with client(running, headers={"Authorization": "Bearer sekret"}) as http:
            allowed = await http.get("/v1/models")
            chat_ok = await chat(http, messages=user("hi"))
    for response in (denied, wrong, abort, chat_denied):
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized"}
    assert allowed.status_code == 200
    assert chat_ok.status_code == 200
    assert len(running.sim.requests) == 1


# --------------------------------------------------------------------------- other endpoints


async def test_health_waits_for_the_first_generation() -> None:
    config = SimConfig(healthy_after_first_generation=True)
    with running_simulator(config) as running:
        async with client(running) as http:
            before = await http.get("/health")
            info = await http.get("/model_info")
            await chat(http, messages=user("warm up"))
            after = await http.get("/health")
            generate = await http.get("/health_generate")
    assert before.status_code == 503
    assert info.status_code == 200
    assert after.status_code == 200 and generate.status_code == 200
    body = info.json()
    assert body["model_path"] == config.model_path
    assert body["served_model_name"] == config.model_name
    assert body["reasoning_parser"] == "qwen3"
    assert body["tool_call_parser"] == "qwen3_coder"
    assert body["has_image_understanding"] is True


async def test_models_server_info_and_metrics(handle: SimHandle) -> None:
    async with client(handle) as http:
        models = (await http.get("/v1/models")).json()
        one = await http.get("/v1/models/qwen3.6-27b-cascade")
        unknown = await http.get("/v1/models/other")
        await chat(http, messages=user("hi"))
        info = (await http.get("/server_info")).json()
        metrics = (await http.get("/metrics")).text
    assert models["object"] == "list"
    (card,) = models["data"]
    assert list(card) == ["id", "object", "created", "owned_by", "root", "parent", "max_model_len"]
    assert card["id"] == card["root"] == "qwen3.6-27b-cascade"
    assert card["owned_by"] == "sglang" and card["max_model_len"] == 131072
    assert one.json()["id"] == "qwen3.6-27b-cascade"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert info["version"] == "0.5.23"
    assert info["max_running_requests"] == 48
    labels = 'engine_type="unified",model_name="qwen3.6-27b-cascade"'
    # priority="" as SGLang adds it with --enable-priority-scheduling (the simulator's default)
    ranks = 'moe_ep_rank="0",pp_rank="0",priority="",tp_rank="0"'
    gauges = (
        "num_running_reqs",
        "num_queue_reqs",
        "gen_throughput",
        "token_usage",
        "cache_hit_rate",
        "spec_accept_length",
    )
    for gauge in gauges:
        assert re.search(rf"^sglang:{gauge}\{{{labels},{ranks}\}} ", metrics, re.M), gauge
    assert re.search(r"^# TYPE sglang:token_usage gauge$", metrics, re.M)
    assert re.search(rf"^sglang:num_requests_total\{{{labels}\}} 1\.0$", metrics, re.M)


async def test_image_tokens_are_counted(handle: SimHandle) -> None:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    async with client(handle) as http:
        body = (await chat(http, messages=[{"role": "user", "content": content}])).json()
        broken = await chat(
            http,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ],
        )
    # 640x480 rounds to 640x480 (multiples of 32): 20 x 15 patches of 32 px.
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "image_tokens": 300}
    text_only = tokens(
        render_chat_prompt([{"role": "user", "content": content}], enable_thinking=False)
    )
    assert body["usage"]["prompt_tokens"] == text_only - 1 + 300
    assert broken.status_code == 500
    assert broken.json()["type"] == "InternalServerError"


# --------------------------------------------------------------------------- standalone


def test_standalone_subprocess_answers_health_and_models() -> None:
    with spawn_simulator(["--model", "sim-model", "--api-key", "k"]) as child:
        health = httpx.get(f"{child.url}/health", timeout=5)
        denied = httpx.get(f"{child.url}/v1/models", timeout=5)
        headers = {"Authorization": "Bearer k"}
        models = httpx.get(f"{child.url}/v1/models", headers=headers, timeout=5)
        rules = [{"match": "ping", "output": "pong"}]
        assert httpx.post(f"{child.url}/sim/rules", json=rules, timeout=5).status_code == 200
        answer = httpx.post(
            f"{child.url}/v1/chat/completions",
            json={"messages": user("ping")},
            headers=headers,
            timeout=5,
        )
        recorded = httpx.get(f"{child.url}/sim/requests", timeout=5).json()
    assert health.status_code == 200
    assert denied.status_code == 401
    assert models.json()["data"][0]["id"] == "sim-model"
    assert answer.json()["choices"][0]["message"]["content"] == "pong"
    assert recorded["requests"][0]["output"] == "pong"
    assert child.process.returncode is not None  # stopped on exit
