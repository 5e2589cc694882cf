from __future__ import annotations

import orjson
import pytest

from app.runtime.sse import (
    DONE,
    SSEDecoder,
    StreamErrorEvent,
    StreamProtocolError,
    chunk_from_event,
    decode_payload,
)


def decoded(decoder: SSEDecoder, data: bytes) -> list[object]:
    """The events `data` completes, decoded in order (as the runtime client decodes them)."""
    return [decode_payload(payload) for payload in decoder.payloads(data)]


def _events(*objs: object) -> bytes:
    out = b""
    for obj in objs:
        payload = b"[DONE]" if obj is DONE else orjson.dumps(obj)
        out += b"data: " + payload + b"\n\n"
    return out


STREAM = _events(
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "thinking…"}}]},
    {"choices": [{"index": 0, "delta": {"content": "\n\nHello"}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "id": "call_0123456789abcdef01234567",
                            "index": 0,
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"index": 0, "id": None, "function": {"name": None, "arguments": "{"}}
                    ]
                },
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}},
    DONE,
)


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, len(STREAM)])
def test_decoder_is_independent_of_how_bytes_are_split(piece: int) -> None:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(STREAM), piece):
        events.extend(decoded(decoder, STREAM[i : i + piece]))
    assert events[-1] is DONE
    chunks = [chunk_from_event(e) for e in events[:-1]]  # type: ignore[arg-type]
    assert chunks[0] is None  # the role chunk carries no text
    assert chunks[1] is not None and chunks[1].reasoning_content == "thinking…"
    assert chunks[2] is not None and chunks[2].content == "\n\nHello"
    first_call = chunks[3].tool_calls[0]  # type: ignore[union-attr]
    assert (first_call.id, first_call.name, first_call.arguments) == (
        "call_0123456789abcdef01234567",
        "get_weather",
        "",
    )
    assert chunks[4].tool_calls[0].arguments == "{"  # type: ignore[union-attr]
    assert chunks[5] is not None and chunks[5].finish_reason == "tool_calls"
    assert chunks[6] is not None and chunks[6].usage is not None
    assert chunks[6].usage.total_tokens == 14
    assert not decoder.pending


def test_crlf_and_comments_are_accepted() -> None:
    decoder = SSEDecoder()
    raw = (
        b": keep-alive\r\n\r\ndata: "
        + orjson.dumps({"choices": [{"index": 0, "delta": {"content": "x"}}]})
        + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    )
    events = decoded(decoder, raw)
    assert len(events) == 2 and events[1] is DONE


def test_events_other_than_one_data_line_decode_the_same() -> None:
    """SGLang's one-`data: `-line events take a short path; every other form of an event
    (no space after the colon, the JSON over two data lines, an id field, an empty data
    line) still decodes as the event stream format says."""
    payload = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    half = 1  # after the opening brace: a newline there is JSON whitespace
    raw = (
        b"data: " + payload + b"\n\n"
        b"data:" + payload + b"\n\n"
        b"data: " + payload[:half] + b"\ndata: " + payload[half:] + b"\n\n"
        b"id: 7\ndata: " + payload + b"\n\n"
        b"data: \n\n"
        b"data: [DONE]\n\n"
    )
    events = decoded(SSEDecoder(), raw)
    assert events[-1] is DONE
    first = orjson.loads(payload)
    assert events[:-1] == [
        first,
        first,
        orjson.loads(payload[:half] + b"\n" + payload[half:]),
        first,
    ]


def test_malformed_event_raises() -> None:
    with pytest.raises(StreamProtocolError):
        decoded(SSEDecoder(), b"data: {not json\n\n")


def test_error_event_raises_with_upstream_text_kept_apart() -> None:
    event = {"error": {"object": "error", "message": "Traceback /srv/x.py", "code": 400}}
    with pytest.raises(StreamErrorEvent) as info:
        chunk_from_event(event)
    assert info.value.upstream_code == 400


def test_partial_event_is_reported_pending() -> None:
    decoder = SSEDecoder()
    assert decoded(decoder, b'data: {"choices": [') == []
    assert decoder.pending


def test_usage_variants_of_different_versions() -> None:
    old = chunk_from_event(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "total_tokens": 7,
                "reasoning_tokens": 2,
            },
        }
    )
    new = chunk_from_event(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "total_tokens": 7,
                "completion_tokens_details": {"reasoning_tokens": 2},
                "prompt_tokens_details": {"cached_tokens": 1},
            },
        }
    )
    assert old is not None and old.usage is not None and old.usage.reasoning_tokens == 2
    assert new is not None and new.usage is not None
    assert (new.usage.reasoning_tokens, new.usage.cached_tokens) == (2, 1)
