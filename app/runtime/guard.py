"""The thinking-budget guard: cascade enforces budgets even when the runtime does not.

SGLang's strict thinking closes reasoning at the budget, but sglang issue #25536 reports budgets
not enforced for Qwen3.6-27B. So every thinking call is streamed from the runtime and its reasoning
tokens counted as they arrive (exactly, from `continuous_usage_stats`; estimated from text when a
runtime does not report them). When

- reasoning passes `budget + margin` tokens, or
- the runtime stops with `finish_reason: "length"` while still reasoning,

the guard aborts the runtime request and continues the *answer* in a second request. SGLang 0.5.23
implements `continue_final_message` by removing the final assistant message, rendering the rest
with the generation prompt and appending that message's *content* verbatim (its
`reasoning_content` is not rendered; serving_chat `_handle_last_assistant_message`). The
continuation is therefore sent with thinking *off* and `preserve_thinking` on (as seen working on
a real runtime: the output is classified as content), and the reasoning so far rides in the
content, closed by cascade: `"{reasoning}\n</think>\n\n"`, so the model still sees it. Thinking
must be off here: with strict thinking a thinking-on request is held inside the reasoning grammar
(no end of sequence before a `</think>` the model has already seen), and would run to
`max_tokens`. Whatever a runtime classifies the continuation as, the guard hands it on as
answer text. The caller therefore always gets an answer, and reasoning handed on never exceeds
`budget + margin` counted tokens (the chunk that would cross it is dropped, not cut).

The answer (content and tool calls) never exceeds its allowance (`answer_allowance`: the
caller's `max_tokens`). The first request's `max_tokens` is `budget + 1 + allowance`
(`runtime_max_tokens`), exact when the runtime holds the budget; reasoning that ends before
the budget would leave the answer more, so the guard counts answer tokens too (completion
tokens past the reasoning and its `</think>`) and, when a chunk would pass the allowance,
drops it, aborts the runtime request and ends with `finish_reason: "length"`, usage counting
the tokens handed on. A continuation gets the whole allowance (no answer came before it) as
its `max_tokens`, which the runtime holds exactly with thinking off.

Non-streamed calls with thinking on are streamed internally for the same reason; the result is
the aggregate. Usage of both requests is summed; `ThinkingReport.closed_by_guard` says the guard
stepped in.

With thinking on, the answer is handed on without the blank lines the model writes after
`</think>` (`app.runtime.answer_start`), streamed or not, so every door gets the same content.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Protocol

import structlog

from app import metrics
from app.config import Settings
from app.runtime.aggregate import collect
from app.runtime.answer_start import trim_answer_start, without_leading_blank_lines
from app.runtime.body import answer_allowance, new_rid
from app.runtime.models import (
    Chunk,
    ChunkStream,
    Completion,
    RuntimeHealth,
    RuntimeRequest,
    ThinkingReport,
    Usage,
)

log = structlog.get_logger(__name__)


class Runtime(Protocol):
    """What the agent needs from a model runtime."""

    async def complete(self, req: RuntimeRequest, *, rid: str | None = None) -> Completion: ...

    def stream(self, req: RuntimeRequest, *, rid: str | None = None) -> ChunkStream: ...

    async def abort(self, rid: str) -> bool: ...

    async def health(self) -> RuntimeHealth: ...

    async def model_name(self) -> str: ...


def closed_thinking(reasoning: str) -> str:
    """The assistant prefix that closes thinking after `reasoning` (the template's own layout)."""
    return reasoning.rstrip("\n") + "\n</think>\n\n"


def estimate_tokens(text: str) -> int:
    """Rough token count when the runtime reports none: ~4 characters a token, at least 1."""
    return max(1, len(text) // 4)


class GuardedRuntime:
    """A `Runtime` that enforces thinking budgets on top of another (normally `SGLangClient`)."""

    def __init__(self, inner: Runtime, settings: Settings) -> None:
        self.inner = inner
        self.settings = settings

    async def abort(self, rid: str) -> bool:
        return await self.inner.abort(rid)

    async def health(self) -> RuntimeHealth:
        return await self.inner.health()

    async def model_name(self) -> str:
        return await self.inner.model_name()

    async def complete(self, req: RuntimeRequest, *, rid: str | None = None) -> Completion:
        if not req.thinking or req.thinking_budget is None:
            completion = await self.inner.complete(req, rid=rid)
            if req.thinking:
                completion.content = without_leading_blank_lines(completion.content)
            completion.thinking = ThinkingReport(
                enabled=req.thinking,
                budget=req.thinking_budget,
                used=completion.usage.reasoning_tokens,
            )
            return completion
        rid = rid or new_rid()
        async with aclosing(self.stream(req, rid=rid)) as chunks:
            return await collect(chunks, rid=rid, model=await self.inner.model_name())

    def stream(self, req: RuntimeRequest, *, rid: str | None = None) -> ChunkStream:
        chunks = self._guarded(req, rid=rid)
        return trim_answer_start(chunks) if req.thinking else chunks

    async def _guarded(self, req: RuntimeRequest, *, rid: str | None = None) -> ChunkStream:
        rid = rid or new_rid()
        if not req.thinking or req.thinking_budget is None:
            async with aclosing(self.inner.stream(req, rid=rid)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is not None:
                        used = chunk.usage.reasoning_tokens if chunk.usage else 0
                        chunk.thinking = ThinkingReport(
                            enabled=req.thinking, budget=req.thinking_budget, used=used
                        )
                    yield chunk
            return

        budget = req.thinking_budget
        limit = budget + self.settings.budget_margin
        allowance = answer_allowance(req, self.settings)
        counted = 0
        answered = 0
        answer_started = False
        reasoning: list[str] = []
        overran = False
        cut = False
        final: Chunk | None = None
        async with aclosing(self.inner.stream(req, rid=rid)) as chunks:
            async for chunk in chunks:
                if cut:
                    # Aborted: wait for the runtime's last chunk for its usage, relay nothing.
                    if chunk.finish_reason is not None:
                        final = chunk
                        break
                    continue
                if chunk.reasoning_content and not answer_started:
                    now = (
                        chunk.completion_tokens
                        if chunk.completion_tokens is not None
                        else counted + estimate_tokens(chunk.reasoning_content)
                    )
                    if now > limit:
                        overran = True
                        break
                    counted = now
                    reasoning.append(chunk.reasoning_content)
                if chunk.content or chunk.tool_calls:
                    answer_started = True
                    now = _answer_tokens(chunk, counted, answered)
                    if now > allowance:
                        cut = True
                        await self.inner.abort(rid)
                        if chunk.finish_reason is None:
                            continue
                        chunk.content, chunk.tool_calls = None, None
                    else:
                        answered = now
                if chunk.finish_reason is not None:
                    final = chunk
                    break
                yield chunk
        if overran:
            # Stop paying for reasoning nobody will see; closing the stream alone is lazy.
            await self.inner.abort(rid)
        if cut:
            log.info("answer_allowance_guard", rid=rid, allowance=allowance, answered=answered)
            metrics.BUDGET_GUARD.labels("answer_allowance").inc()
            final = _cut_finish(final, rid, reasoned=counted, answered=answered)
        still_reasoning = (
            final is not None
            and final.finish_reason == "length"
            and not (answer_started or final.content or final.tool_calls)
        )
        if final is not None and not still_reasoning:
            used = final.usage.reasoning_tokens if final.usage else counted
            final.thinking = ThinkingReport(enabled=True, budget=budget, used=used or counted)
            yield final
            return
        if final is None and not overran:
            # The inner stream ended without a finish chunk: it raised, or was closed by us.
            return
        if final is not None and final.reasoning_content:
            reasoning.append(final.reasoning_content)
        first_usage = final.usage if final is not None and final.usage else Usage()
        reason = "overrun" if overran else "length_while_reasoning"
        metrics.BUDGET_GUARD.labels(reason).inc()
        log.info(
            "thinking_budget_guard",
            rid=rid,
            budget=budget,
            counted=counted,
            reason=reason,
        )
        continuation = self._continue_answer(req, "".join(reasoning), rid, counted, first_usage)
        async with aclosing(continuation) as answer:
            async for chunk in answer:
                yield chunk

    async def _continue_answer(
        self,
        req: RuntimeRequest,
        reasoning: str,
        first_rid: str,
        counted: int,
        first_usage: Usage,
    ) -> ChunkStream:
        follow = req.model_copy(
            update={
                "messages": [
                    *req.messages,
                    {"role": "assistant", "content": closed_thinking(reasoning)},
                ],
                "thinking": False,
                "thinking_budget": None,
                "preserve_thinking": True,
                "continue_final_message": True,
                "max_answer_tokens": answer_allowance(req, self.settings),
            }
        )
        rid = new_rid("g")
        report = ThinkingReport(
            enabled=True,
            budget=req.thinking_budget,
            used=first_usage.reasoning_tokens or counted,
            closed_by_guard=True,
        )
        async with aclosing(self.inner.stream(follow, rid=rid)) as chunks:
            async for chunk in chunks:
                # A continuation is the answer: anything classified as reasoning is answer text.
                if chunk.reasoning_content:
                    chunk.content = (chunk.content or "") + chunk.reasoning_content
                    chunk.reasoning_content = None
                chunk.rid = first_rid
                if chunk.finish_reason is not None:
                    usage = chunk.usage or Usage()
                    chunk.usage = first_usage.plus(usage)
                    chunk.usage.reasoning_tokens = report.used
                    chunk.thinking = report
                yield chunk


def _answer_tokens(chunk: Chunk, reasoned: int, answered: int) -> int:
    """Answer tokens once `chunk` is added: completion tokens past the `reasoned` ones and the
    `</think>` (counted as reasoning, as SGLang counts it), or estimated from the text."""
    if chunk.completion_tokens is not None:
        return chunk.completion_tokens - reasoned - 1
    text = (chunk.content or "") + "".join(
        (d.name or "") + (d.arguments or "") for d in chunk.tool_calls or ()
    )
    return answered + estimate_tokens(text)


def _cut_finish(final: Chunk | None, rid: str, *, reasoned: int, answered: int) -> Chunk:
    """The finish of an answer cut at its allowance: `length`, with the runtime's usage but
    completion tokens counting what was handed on (reasoning and the answer so far)."""
    usage = (final.usage if final is not None else None) or Usage()
    reasoning = usage.reasoning_tokens or reasoned + 1
    completion = reasoning + answered
    usage = usage.model_copy(
        update={
            "completion_tokens": completion,
            "total_tokens": usage.prompt_tokens + completion,
            "reasoning_tokens": reasoning,
        }
    )
    return Chunk(finish_reason="length", usage=usage, rid=rid)
