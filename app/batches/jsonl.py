"""Reading a JSONL file as a stream of lines with their numbers and byte offsets.

The reader holds one chunk and at most one line in memory, so a file of any size can be read
with flat memory. Blank lines are skipped but still counted in line numbers, which are 1-based
and match what an editor shows. A line longer than `max_line_bytes` is returned as
`too_long=True` with no data; the reader skips to its end without keeping it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import IO

CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based
    start: int  # byte offset of the line's first byte
    end: int  # byte offset just past its newline (or the end of the file)
    data: bytes  # without the newline; empty when too_long
    too_long: bool = False


class LineReader:
    """Lines of an open binary file from `offset` on (`number` counts lines before it)."""

    def __init__(
        self, fh: IO[bytes], *, offset: int = 0, number: int = 0, max_line_bytes: int
    ) -> None:
        self.fh = fh
        self.offset = offset  # where the next line starts
        self.number = number  # lines consumed so far
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._eof = False
        self._positioned = False

    @property
    def exhausted(self) -> bool:
        """True once the end of the file was reached and every line was returned."""
        return self._eof and not self._buffer

    async def _fill(self) -> bool:
        if self._eof:
            return False
        if not self._positioned:
            await asyncio.to_thread(self.fh.seek, self.offset + len(self._buffer))
            self._positioned = True
        chunk = await asyncio.to_thread(self.fh.read, CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    async def next(self) -> Line | None:
        """The next non-blank line, or None at the end of the file."""
        while True:
            line = await self._next_raw()
            if line is None:
                return None
            if line.too_long or line.data.strip():
                return line

    async def _next_raw(self) -> Line | None:
        skipping = False
        skipped = 0
        while True:
            index = self._buffer.find(b"\n")
            if index >= 0:
                return self._take(index + 1, skipping, skipped)
            if len(self._buffer) > self.max_line_bytes:
                # Too long: drop what we have and keep scanning for the end of the line.
                skipped += len(self._buffer)
                self._buffer.clear()
                skipping = True
            if not await self._fill():
                if not self._buffer and not skipping:
                    return None
                return self._take(len(self._buffer), skipping, skipped)

    def _take(self, size: int, skipping: bool, skipped: int) -> Line:
        raw = bytes(self._buffer[:size])
        del self._buffer[:size]
        start = self.offset
        self.offset += skipped + size
        self.number += 1
        data = raw[:-1] if raw.endswith(b"\n") else raw
        if data.endswith(b"\r"):
            data = data[:-1]
        if skipping or len(data) > self.max_line_bytes:
            return Line(self.number, start, self.offset, b"", too_long=True)
        return Line(self.number, start, self.offset, data)

    async def batch(self, max_lines: int, max_bytes: int) -> list[Line]:
        """Up to `max_lines` lines holding up to `max_bytes` (at least one line if any)."""
        out: list[Line] = []
        size = 0
        while len(out) < max_lines and (not out or size < max_bytes):
            line = await self.next()
            if line is None:
                break
            out.append(line)
            size += len(line.data)
        return out
