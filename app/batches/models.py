"""The batch object (OpenAI's shape), its statuses and the create request.

Statuses: `validating → in_progress → finalizing → completed`; `failed` (the input file as a
whole is unusable), `cancelling → cancelled`, `expired` (the completion window passed). A
batch in one of `FINAL_STATUSES` never changes again.

Counts: `total` is the number of request lines in the input (blank lines are skipped);
`failed` counts lines that failed validation plus items whose tries ran out; `completed`
counts items with an answer. Items a cancel or expiry kept from running are in neither, and
appear in the error file with code `batch_cancelled` or `batch_expired`: every input line has
exactly one line in the output file or the error file.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
ENDPOINTS = ("/v1/chat/completions",)
_WINDOW_RE = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_SECONDS = 30 * 86400


def window_seconds(window: str) -> int:
    """Seconds of a completion window like `24h`, `90m`, `30s` (ValueError if malformed)."""
    match = _WINDOW_RE.fullmatch(window)
    if match is None:
        raise ValueError("completion_window must look like 24h, 90m or 3600s")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError("completion_window may be at most 30 days")
    return seconds


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(ge=3600, le=30 * 86400)


class CreateBatchRequest(BaseModel):
    """`POST /v1/batches`."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiresAfter | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        window_seconds(value)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError("metadata may hold at most 16 keys")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return value


class LineError(BaseModel):
    """One problem of the input (`errors.data` of the batch object)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(BaseModel):
    """The OpenAI batch object, plus `owner` (never sent) and cascade's bookkeeping."""

    id: str
    owner: str
    status: BatchStatus
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    metadata: dict[str, str] | None = None
    errors: list[LineError] = Field(default_factory=list)
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: dict[str, int] = Field(default_factory=dict)
    model: str | None = None
    output_expires_after: int | None = None
    # feeding state (not part of the OpenAI object)
    fed: int = 0
    done: int = 0
    fed_bytes: int = 0
    done_bytes: int = 0
    feed_complete: bool = False
    valid: int = 0
    feed_offset: int = 0
    feed_line: int = 0
    sealed: bool = False
    job: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_openai(self) -> dict[str, Any]:
        """The body clients see (`openai.types.Batch`)."""
        counts = self.request_counts
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": (
                {"object": "list", "data": [e.model_dump() for e in self.errors]}
                if self.errors
                else None
            ),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": counts.model_dump(),
            "metadata": self.metadata,
            "usage": _usage_body(self.usage),
        }
        if self.job is not None:
            body["job"] = self.job
        return body


def _usage_body(usage: dict[str, int]) -> dict[str, Any]:
    prompt = usage.get("input_tokens", 0)
    output = usage.get("output_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": usage.get("cached_tokens", 0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": usage.get("reasoning_tokens", 0)},
        "total_tokens": prompt + output,
    }


_INT_FIELDS = (
    "created_at",
    "expires_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "output_expires_after",
)
_USAGE_FIELDS = ("input_tokens", "output_tokens", "reasoning_tokens", "cached_tokens")


def batch_from_hash(raw: dict[Any, Any]) -> BatchObject | None:
    """Parse the batch hash (bytes or str keys); None when it is empty."""
    if not raw:
        return None
    text = {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }

    def num(name: str) -> int:
        value = text.get(name, "")
        return int(value) if value else 0

    def opt(name: str) -> int | None:
        value = text.get(name, "")
        return int(value) if value else None

    def js(name: str) -> Any:
        value = text.get(name, "")
        return orjson.loads(value) if value else None

    return BatchObject(
        id=text["id"],
        owner=text["owner"],
        status=text["status"],
        endpoint=text["endpoint"],
        input_file_id=text["input_file_id"],
        completion_window=text["completion_window"],
        created_at=num("created_at"),
        **{name: opt(name) for name in _INT_FIELDS if name != "created_at"},
        output_file_id=text.get("output_file_id") or None,
        error_file_id=text.get("error_file_id") or None,
        metadata=js("metadata"),
        errors=[LineError.model_validate(e) for e in js("errors") or []],
        request_counts=RequestCounts(
            total=num("total"), completed=num("completed"), failed=num("failed")
        ),
        usage={name: num(name) for name in _USAGE_FIELDS},
        model=text.get("model") or None,
        fed=num("fed"),
        done=num("done"),
        fed_bytes=num("fed_bytes"),
        done_bytes=num("done_bytes"),
        feed_complete=text.get("feed_complete") == "1",
        valid=num("valid"),
        feed_offset=num("feed_offset"),
        feed_line=num("feed_line"),
        sealed=text.get("sealed") == "1",
        job=js("job"),
    )
