"""Folding a chunk stream into a `Completion`: text joined, tool-call deltas merged by index."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.runtime.models import (
    Chunk,
    Completion,
    FinishReason,
    ThinkingReport,
    ToolCall,
    ToolCallFunction,
    Usage,
)


class CompletionBuilder:
    """Accumulates chunks in order; `build()` gives the equivalent non-streamed result."""

    __slots__ = ("_calls", "content", "finish", "reasoning", "thinking", "usage")

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self._calls: dict[int, tuple[str, str, list[str]]] = {}
        self.finish: FinishReason = "stop"
        self.usage = Usage()
        self.thinking = ThinkingReport(enabled=False)

    def add(self, chunk: Chunk) -> None:
        if chunk.reasoning_content:
            self.reasoning.append(chunk.reasoning_content)
        if chunk.content:
            self.content.append(chunk.content)
        for delta in chunk.tool_calls or ():
            call_id, name, args = self._calls.get(delta.index, ("", "", []))
            self._calls[delta.index] = (call_id or delta.id or "", name or delta.name or "", args)
            args.append(delta.arguments)
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.thinking is not None:
            self.thinking = chunk.thinking

    def call(self, index: int) -> tuple[str, str, str]:
        """(id, name, arguments so far) of the call at `index`."""
        call_id, name, args = self._calls[index]
        return call_id, name, "".join(args)

    def build(self, *, rid: str, model: str) -> Completion:
        tool_calls = [
            ToolCall(
                id=call_id or f"call_{index}",
                function=ToolCallFunction(name=name, arguments="".join(args) or "{}"),
            )
            for index, (call_id, name, args) in sorted(self._calls.items())
        ]
        return Completion(
            rid=rid,
            model=model,
            content="".join(self.content),
            reasoning_content="".join(self.reasoning) if self.reasoning else None,
            tool_calls=tool_calls,
            finish_reason=self.finish,
            usage=self.usage,
            thinking=self.thinking,
        )


async def collect(chunks: AsyncIterator[Chunk], *, rid: str, model: str) -> Completion:
    """Aggregate a chunk stream into a `Completion`."""
    builder = CompletionBuilder()
    async for chunk in chunks:
        builder.add(chunk)
    return builder.build(rid=rid, model=model)
