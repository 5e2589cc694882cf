"""The start of an answer that follows a reasoning block: no blank lines.

With thinking on, the model writes `</think>\n\n` and then its answer; SGLang's reasoning parser
leaves those newlines at the head of `content` (streamed, usually as a delta of their own; the
simulator does the same when not streamed). They are layout, not answer: a client shows them as
an empty paragraph, and history that keeps them renders `</think>\n\n\n\n` on the next turn, which
is not what the model wrote.

Contracts:
- only whole blank lines (whitespace up to and including a newline) at the very start of the
  content are removed; indentation of the first real line, and everything after it, is kept;
- streamed, whitespace-only content is held back until real text arrives and then handed on
  with it, trimmed; real text is never delayed; held whitespace that no text follows is dropped;
- this applies to requests with thinking on only: with thinking off the content is left exactly
  as the runtime sent it (`GuardedRuntime` decides).
"""

from __future__ import annotations

import re
from contextlib import aclosing

from app.runtime.models import ChunkStream

_LEADING_BLANK_LINES = re.compile(r"(?:[ \t\r\f\v]*\n)+")


def without_leading_blank_lines(text: str) -> str:
    """`text` without the blank lines it starts with."""
    match = _LEADING_BLANK_LINES.match(text)
    return text[match.end() :] if match else text


class AnswerStart:
    """The content deltas of one generation, fed in order; `feed` returns what to hand on."""

    __slots__ = ("_held", "_started")

    def __init__(self) -> None:
        self._held = ""
        self._started = False

    def feed(self, text: str) -> str:
        if self._started:
            return text
        text = self._held + text
        if not text.strip():
            self._held = text
            return ""
        self._held = ""
        self._started = True
        return without_leading_blank_lines(text)


async def trim_answer_start(chunks: ChunkStream) -> ChunkStream:
    """`chunks` with the content's leading blank lines removed (see the module docstring).

    Every chunk is handed on (a held one without its content: it may carry token counts)."""
    start = AnswerStart()
    async with aclosing(chunks):
        async for chunk in chunks:
            if chunk.content:
                chunk.content = start.feed(chunk.content) or None
            yield chunk
