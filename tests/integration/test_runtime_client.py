"""The runtime client and the budget guard over HTTP against the simulator: retries, faults,
timeouts, aborts, and budgets in both runtime modes (enforced / ignored, sglang #25536)."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.config import Settings, load_settings
from app.errors import (
    RuntimeUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.runtime import GuardedRuntime, RuntimeRequest, SGLangClient
from app.runtime.body import new_rid
from tests.redis_server import free_port
from tests.sglang_sim.script import Fault, Rule
from tests.sglang_sim.testing import SimHandle
from tests.sglang_sim.tokens import count_tokens

Q = [{"role": "user", "content": "question"}]


def settings_for(sim: SimHandle, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "runtime_url": sim.url,
        "runtime_retry_backoff": 0.01,
        "runtime_max_retries": 2,
    }
    values.update(overrides)
    return load_settings(**values)


async def test_retries_5xx_then_succeeds(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="fine", fault=Fault(kind="http_500", times=2)))
    client = SGLangClient(settings_for(sim))
    try:
        result = await client.complete(RuntimeRequest(messages=Q))
    finally:
        await client.aclose()
    assert result.content == "fine"
    assert [r.status_code for r in sim.sim.requests] == [500, 500, 200]


async def test_gives_up_after_the_retry_budget(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="x", fault=Fault(kind="http_500", times=10)))
    client = SGLangClient(settings_for(sim, runtime_max_retries=1))
    try:
        with pytest.raises(UpstreamError) as info:
            await client.complete(RuntimeRequest(messages=Q))
    finally:
        await client.aclose()
    assert info.value.status == 502
    assert len(sim.sim.requests) == 2
    assert "Traceback" not in info.value.message


async def test_429_retry_after_is_honoured(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="ok", fault=Fault(kind="http_429", retry_after=0.4, times=1)))
    client = SGLangClient(settings_for(sim))
    try:
        started = time.monotonic()
        result = await client.complete(RuntimeRequest(messages=Q))
        waited = time.monotonic() - started
    finally:
        await client.aclose()
    assert result.content == "ok"
    assert waited >= 0.4


async def test_unreachable_runtime_fails_fast_with_503() -> None:
    settings = load_settings(
        runtime_url=f"http://127.0.0.1:{free_port()}", runtime_retry_backoff=0.01, model="m"
    )
    client = SGLangClient(settings)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeUnavailableError) as info:
            await client.complete(RuntimeRequest(messages=Q))
    finally:
        await client.aclose()
    assert time.monotonic() - started < 5
    assert info.value.status == 503
    assert info.value.headers["Retry-After"]
    assert "CASCADE_RUNTIME_URL" in info.value.message


async def test_stream_cut_before_any_chunk_is_retried(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="whole answer", fault=Fault(kind="cut_stream", after_chunks=0)))
    client = SGLangClient(settings_for(sim))
    try:
        chunks = [c async for c in client.stream(RuntimeRequest(messages=Q))]
    finally:
        await client.aclose()
    assert "".join(c.content or "" for c in chunks) == "whole answer"
    assert len(sim.sim.requests) == 2


async def test_stream_cut_mid_answer_is_an_error_never_a_silent_restart(sim: SimHandle) -> None:
    sim.sim.add_rule(
        Rule(output="one two three four five six", fault=Fault(kind="cut_stream", after_chunks=3))
    )
    client = SGLangClient(settings_for(sim))
    received: list[str] = []
    try:
        with pytest.raises(UpstreamError) as info:
            async for chunk in client.stream(RuntimeRequest(messages=Q)):
                received.append(chunk.content or "")
    finally:
        await client.aclose()
    assert info.value.code == "runtime_stream_interrupted"
    assert received  # something was handed on before the cut ...
    assert len(sim.sim.requests) == 1  # ... so nothing was retried (no duplicated tokens)


async def test_malformed_chunk_mid_stream_is_an_error(sim: SimHandle) -> None:
    sim.sim.add_rule(
        Rule(output="alpha beta gamma delta", fault=Fault(kind="malformed_chunk", after_chunks=2))
    )
    client = SGLangClient(settings_for(sim))
    try:
        with pytest.raises(UpstreamError) as info:
            async for _ in client.stream(RuntimeRequest(messages=Q)):
                pass
    finally:
        await client.aclose()
    assert info.value.code == "runtime_bad_stream"


async def test_hanging_runtime_hits_the_read_timeout(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="never", fault=Fault(kind="hang", times=5)))
    client = SGLangClient(settings_for(sim, runtime_read_timeout=0.5, runtime_max_retries=0))
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError):
            await client.complete(RuntimeRequest(messages=Q))
    finally:
        await client.aclose()
    assert time.monotonic() - started < 5


async def test_a_stream_that_stalls_mid_answer_hits_the_read_timeout(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="one two three", tpot=3.0))
    client = SGLangClient(settings_for(sim, runtime_read_timeout=0.3, runtime_max_retries=0))
    received: list[str] = []
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeoutError) as info:
            async for chunk in client.stream(RuntimeRequest(messages=Q)):
                received.append(chunk.content or "")
    finally:
        await client.aclose()
    assert received == ["one"]  # the first token came at once, the second never in time
    assert info.value.message == "the runtime stopped sending tokens"
    assert time.monotonic() - started < 2.5


async def test_a_slow_consumer_is_not_the_runtime_s_silence(sim: SimHandle) -> None:
    """The read timeout counts the time the stream waits for the runtime, not the time its
    consumer takes between chunks."""
    sim.sim.add_rule(Rule(output="one two three four", tpot=0.05))
    client = SGLangClient(settings_for(sim, runtime_read_timeout=0.3, runtime_max_retries=0))
    texts: list[str] = []
    try:
        async for chunk in client.stream(RuntimeRequest(messages=Q)):
            texts.append(chunk.content or "")
            await asyncio.sleep(0.4)
    finally:
        await client.aclose()
    assert "".join(texts) == "one two three four"


async def test_abort_by_rid_stops_the_generation(sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="word " * 500, tpot=0.01))
    client = SGLangClient(settings_for(sim))
    rid = new_rid()
    try:

        async def consume() -> list[str]:
            return [
                c.finish_reason or ""
                async for c in client.stream(RuntimeRequest(messages=Q), rid=rid)
            ]

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        assert await client.abort(rid)
        reasons = await asyncio.wait_for(task, 10)
    finally:
        await client.aclose()
    assert rid in sim.sim.aborted_rids
    assert reasons[-1] == "abort"


async def test_health_reports_reachable_and_model(sim: SimHandle) -> None:
    client = SGLangClient(settings_for(sim))
    try:
        health = await client.health()
        assert health.reachable and health.healthy
        assert health.model == "qwen3.6-27b-cascade"
        assert health.reasoning_parser == "qwen3"
        assert await client.model_name() == "qwen3.6-27b-cascade"
    finally:
        await client.aclose()


# ----------------------------------------------------------------------------- budgets

LONG_REASONING = "Let me think about this carefully once more. " * 300


@pytest.mark.parametrize("stream", [False, True])
async def test_budget_enforced_by_the_runtime(sim: SimHandle, stream: bool) -> None:
    sim.sim.add_rule(Rule(output=LONG_REASONING + "</think>\n\nThe answer."))
    settings = settings_for(sim)
    client = SGLangClient(settings)
    runtime = GuardedRuntime(client, settings)
    req = RuntimeRequest(messages=Q, thinking=True, thinking_budget=50)
    try:
        if stream:
            from app.runtime import collect

            result = await collect(runtime.stream(req), rid="r", model="m")
        else:
            result = await runtime.complete(req)
    finally:
        await client.aclose()
    assert result.content.strip() == "The answer."
    assert result.usage.reasoning_tokens == 51  # N + the forced </think>, as on a real runtime
    assert result.thinking.closed_by_guard is False
    assert result.thinking.used == 51
    assert len(sim.sim.requests) == 1


@pytest.mark.parametrize("budget", [20, 64, 200])
async def test_budget_ignored_by_the_runtime_is_cut_by_the_guard(
    sim: SimHandle, budget: int
) -> None:
    sim.sim.config.ignore_thinking_budget = True
    # Paced, so the runaway is still generating when the guard cuts it (unpaced, a loaded
    # machine may let the simulator finish it first, and then there is nothing to abort).
    sim.sim.add_rule(
        Rule(continuation=False, output=LONG_REASONING + "</think>\n\nToo late.", tpot=0.005)
    )
    sim.sim.add_rule(Rule(continuation=True, output="Answer after the cut."))
    settings = settings_for(sim)
    client = SGLangClient(settings)
    runtime = GuardedRuntime(client, settings)
    try:
        result = await runtime.complete(
            RuntimeRequest(messages=Q, thinking=True, thinking_budget=budget)
        )
    finally:
        await client.aclose()
    assert result.content == "Answer after the cut."
    assert result.thinking.closed_by_guard is True
    margin = settings.budget_margin
    assert result.thinking.used <= budget + margin
    assert result.reasoning_content is not None
    assert count_tokens(result.reasoning_content) <= budget + margin
    first, follow = sim.sim.requests
    assert first.rid in sim.sim.aborted_rids  # the runaway generation was stopped
    body = follow.body
    assert body["continue_final_message"] is True
    assert body["chat_template_kwargs"] == {"enable_thinking": False, "preserve_thinking": True}
    assert "custom_params" not in body
    assert body["messages"][-1]["content"].endswith("\n</think>\n\n")
    # The simulator classifies the continuation as the answer, as a real runtime does.
    assert follow.reasoning_tokens == 0


@pytest.mark.parametrize("thinking", [False, True])
async def test_max_tokens_is_fitted_to_a_small_context_window(
    sim: SimHandle, thinking: bool
) -> None:
    # A checkpoint with a short context: cascade's default allowance does not fit beside the
    # prompt, and SGLang rejects such a request unless it is fitted.
    sim.sim.config.context_length = 600
    sim.sim.add_rule(Rule(output="short.</think>\n\nFits." if thinking else "Fits."))
    settings = settings_for(sim)
    client = SGLangClient(settings)
    runtime = GuardedRuntime(client, settings)
    try:
        result = await runtime.complete(
            RuntimeRequest(messages=Q, thinking=thinking, thinking_budget=100 if thinking else None)
        )
    finally:
        await client.aclose()
    assert result.content.strip() == "Fits."
    ok = [r for r in sim.sim.requests if r.status_code == 200]
    assert len(ok) == 1
    assert ok[0].body["max_completion_tokens"] + ok[0].prompt_tokens <= 600


async def test_prompt_longer_than_the_context_is_a_clear_400(sim: SimHandle) -> None:
    sim.sim.config.context_length = 64
    client = SGLangClient(settings_for(sim))
    try:
        with pytest.raises(Exception) as info:
            await client.complete(
                RuntimeRequest(messages=[{"role": "user", "content": "x " * 200}])
            )
    finally:
        await client.aclose()
    assert getattr(info.value, "status", None) == 400
