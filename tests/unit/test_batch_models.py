"""The batch object as the openai SDK reads it; completion windows; the Redis hash form."""

from __future__ import annotations

import pytest
from openai.types import Batch

from app.batches.models import (
    BatchObject,
    CreateBatchRequest,
    LineError,
    RequestCounts,
    batch_from_hash,
    window_seconds,
)


@pytest.mark.parametrize(
    ("window", "seconds"), [("24h", 86400), ("90m", 5400), ("30s", 30), ("7d", 604800)]
)
def test_windows(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "24", "h", "0h", "-1h", "31d", "1w", "24 h"])
def test_bad_windows(window: str) -> None:
    with pytest.raises(ValueError):
        window_seconds(window)


def test_create_request_checks_endpoint_and_metadata() -> None:
    ok = CreateBatchRequest(input_file_id="file-1", endpoint="/v1/chat/completions")
    assert ok.completion_window == "24h"
    with pytest.raises(ValueError, match="endpoint"):
        CreateBatchRequest(input_file_id="file-1", endpoint="/v1/embeddings")
    with pytest.raises(ValueError, match="16 keys"):
        CreateBatchRequest(
            input_file_id="f",
            endpoint="/v1/chat/completions",
            metadata={str(i): "v" for i in range(17)},
        )


def sample() -> BatchObject:
    return BatchObject(
        id="batch_" + "a" * 24,
        owner="key_x",
        status="in_progress",
        endpoint="/v1/chat/completions",
        input_file_id="file-" + "b" * 24,
        completion_window="24h",
        created_at=1_700_000_000,
        expires_at=1_700_086_400,
        in_progress_at=1_700_000_001,
        errors=[LineError(code="invalid_json", message="line 3: not a JSON object", line=3)],
        request_counts=RequestCounts(total=10, completed=4, failed=1),
        usage={"input_tokens": 100, "output_tokens": 20, "reasoning_tokens": 5},
        metadata={"k": "v"},
        job={"type": "image_questions", "images": 5},
    )


def test_the_sdk_parses_the_batch_object() -> None:
    body = sample().to_openai()
    assert "owner" not in body and "fed" not in body
    batch = Batch.model_validate(body)
    assert batch.status == "in_progress"
    assert batch.request_counts is not None and batch.request_counts.total == 10
    assert batch.errors is not None and batch.errors.data is not None
    assert batch.errors.data[0].line == 3
    assert batch.usage is not None
    assert batch.usage.total_tokens == 120
    assert batch.usage.output_tokens_details.reasoning_tokens == 5
    assert (batch.model_extra or {})["job"]["images"] == 5


def test_hash_round_trip() -> None:
    obj = sample()
    raw = {
        b"id": obj.id.encode(),
        b"owner": b"key_x",
        b"status": b"in_progress",
        b"endpoint": obj.endpoint.encode(),
        b"input_file_id": obj.input_file_id.encode(),
        b"completion_window": b"24h",
        b"created_at": b"1700000000",
        b"expires_at": b"1700086400",
        b"in_progress_at": b"1700000001",
        b"completed_at": b"",
        b"errors": b'[{"code":"invalid_json","message":"line 3: not a JSON object","line":3}]',
        b"total": b"10",
        b"completed": b"4",
        b"failed": b"1",
        b"input_tokens": b"100",
        b"output_tokens": b"20",
        b"reasoning_tokens": b"5",
        b"metadata": b'{"k":"v"}',
        b"job": b'{"type":"image_questions","images":5}',
        b"sealed": b"0",
        b"feed_complete": b"1",
        b"fed": b"9",
        b"done": b"5",
    }
    parsed = batch_from_hash(raw)
    assert parsed is not None
    assert parsed.to_openai() == obj.to_openai()
    assert parsed.completed_at is None
    assert (parsed.fed, parsed.done, parsed.feed_complete, parsed.sealed) == (9, 5, True, False)
    assert batch_from_hash({}) is None
