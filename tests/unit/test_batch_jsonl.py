"""Streaming JSONL reading: line numbers, offsets, blank and over-long lines, resuming."""

from __future__ import annotations

import io

from app.batches.jsonl import CHUNK, Line, LineReader


async def read_all(data: bytes, **kwargs: int) -> list[Line]:
    reader = LineReader(io.BytesIO(data), max_line_bytes=kwargs.pop("max_line_bytes", 1 << 20))
    out = []
    while (line := await reader.next()) is not None:
        out.append(line)
    assert reader.exhausted
    return out


async def test_numbers_offsets_and_blank_lines() -> None:
    data = b'{"a":1}\n\n   \n{"b":2}\r\n{"c":3}'
    lines = await read_all(data)
    assert [(x.number, x.data) for x in lines] == [
        (1, b'{"a":1}'),
        (4, b'{"b":2}'),
        (5, b'{"c":3}'),
    ]
    # offsets cover the file: each line's bytes are data[start:end]
    for line in lines:
        assert data[line.start : line.end].rstrip(b"\r\n") == line.data
    assert lines[-1].end == len(data)


async def test_lines_across_chunk_boundaries() -> None:
    long = b"x" * (CHUNK + 100)
    data = b"first\n" + long + b"\nlast\n"
    lines = await read_all(data)
    assert [x.data for x in lines] == [b"first", long, b"last"]
    assert lines[1].start == 6 and lines[2].start == 6 + len(long) + 1


async def test_over_long_line_is_skipped_not_kept() -> None:
    data = b"ok\n" + b"y" * (3 * CHUNK) + b"\nafter\n"
    lines = await read_all(data, max_line_bytes=1000)
    assert [(x.number, x.too_long, x.data) for x in lines] == [
        (1, False, b"ok"),
        (2, True, b""),
        (3, False, b"after"),
    ]
    assert lines[2].start == 3 + 3 * CHUNK + 1


async def test_resume_from_an_offset() -> None:
    data = b"".join(f"line {i}\n".encode() for i in range(10))
    first = LineReader(io.BytesIO(data), max_line_bytes=100)
    taken = await first.batch(4, 1 << 20)
    assert [x.number for x in taken] == [1, 2, 3, 4]
    resumed = LineReader(
        io.BytesIO(data), offset=first.offset, number=first.number, max_line_bytes=100
    )
    rest = await resumed.batch(100, 1 << 20)
    assert [x.data for x in rest] == [f"line {i}".encode() for i in range(4, 10)]
    assert [x.number for x in rest] == list(range(5, 11))
    assert resumed.exhausted


async def test_batch_stops_at_the_byte_budget_but_takes_one_line() -> None:
    data = b"a" * 50 + b"\n" + b"b" * 50 + b"\n" + b"c\n"
    reader = LineReader(io.BytesIO(data), max_line_bytes=100)
    assert len(await reader.batch(10, 10)) == 1
    assert len(await reader.batch(10, 60)) == 2
    assert await reader.batch(10, 60) == []
