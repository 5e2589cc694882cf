"""cascade's Prometheus metrics: one registry per process, its counters, and the request record.

Every layer counts through this module (it imports nothing of cascade's), and `/metrics`
(`app.api.metrics_api`) renders `REGISTRY` with what is read from Redis at scrape time. A
worker process counts into its own `REGISTRY` and pushes it to Redis (`app.worker_metrics`).

Cost contract: the hot path pays a dictionary lookup and an increment per event, never per
relayed chunk. Label values are bounded: doors are a fixed set, tool names are the registry's
(anything else is `unknown`), the model is the served model's name, statuses are HTTP codes.

The request record (`RequestRecord`) is what the access-log middleware keeps for one HTTP
request; code below the door fills it through `current()` (a context variable, visible in the
tasks a request starts): the run's tokens, the session or response id a door gave out.
"""

from __future__ import annotations

import contextvars
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.process_collector import ProcessCollector

Door = Literal["chat", "responses", "ollama", "batch", "other"]
DOORS: Final[tuple[Door, ...]] = ("chat", "responses", "ollama", "batch", "other")
TOOL_OUTCOMES: Final = ("ok", "error", "refused", "paused")
TOKEN_KINDS: Final = ("prompt", "cached", "completion", "reasoning")

# `_created` series double the exposition and no dashboard here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

# Seconds; a turn is milliseconds (a replay, a refusal) to minutes (a long answer).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter(
    "cascade_http_requests",
    "HTTP requests answered, by door, status and served model ('' when no model ran).",
    ["door", "status", "model"],
    registry=REGISTRY,
)
HTTP_FIRST_BYTE = Histogram(
    "cascade_http_time_to_first_byte_seconds",
    "Seconds from a request's arrival to the first byte of its response body.",
    ["door"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "cascade_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its response (a stream's last event).",
    ["door"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "cascade_tokens",
    "Tokens of finished runs, by door and kind (prompt, cached, completion, reasoning).",
    ["door", "kind"],
    registry=REGISTRY,
)
BUDGET_GUARD = Counter(
    "cascade_budget_guard_interventions",
    "Times the thinking-budget guard cut a runtime call, by reason.",
    ["reason"],
    registry=REGISTRY,
)
TOOL_CALLS = Counter(
    "cascade_tool_calls",
    "Server tool calls the model made, by tool and outcome (ok, error, refused, paused).",
    ["tool", "outcome"],
    registry=REGISTRY,
)
RUNTIME_RETRIES = Counter(
    "cascade_runtime_retries",
    "Runtime calls sent again after a failure that nothing had been handed on from, by kind.",
    ["kind"],
    registry=REGISTRY,
)
RUNTIME_ERRORS = Counter(
    "cascade_runtime_errors",
    "Model calls of the agent loop that failed (after the client's retries), by error code.",
    ["kind"],
    registry=REGISTRY,
)
REDIS_ERRORS = Counter(
    "cascade_redis_errors",
    "Redis errors, by where they were met (request: answered as a 503; commit_retry: a turn "
    "commit tried again; worker: a worker's queue operation tried again).",
    ["where"],
    registry=REGISTRY,
)
WORKER_ITEMS = Counter(
    "cascade_worker_items",
    "Batch items a worker concluded, by outcome (completed, failed, retried, dead).",
    ["outcome"],
    registry=REGISTRY,
)

# Children of the per-request series, looked up once: labels() takes a lock and builds a key.
_TOKEN_CHILDREN = {door: tuple(TOKENS.labels(door, kind) for kind in TOKEN_KINDS) for door in DOORS}
FIRST_BYTE_BY_DOOR = {door: HTTP_FIRST_BYTE.labels(door) for door in DOORS}
DURATION_BY_DOOR = {door: HTTP_DURATION.labels(door) for door in DOORS}


def door_of(path: str) -> Door:
    """The door a request path belongs to (a few prefix checks)."""
    if path.startswith("/v1/"):
        rest = path[4:]
        if rest.startswith("chat/"):
            return "chat"
        if rest.startswith(("responses", "conversations")):
            return "responses"
        if rest.startswith(("batches", "files", "jobs")):
            return "batch"
        return "other"
    if path.startswith("/api/"):
        return "ollama"
    return "other"


class RequestRecord:
    """What one HTTP request left for its access-log line and metrics (filled as it runs)."""

    __slots__ = (
        "completion_tokens",
        "door",
        "key_id",
        "prompt_tokens",
        "ran_model",
        "response_id",
        "session_id",
    )

    def __init__(self, door: Door) -> None:
        self.door: Door = door
        self.key_id: str | None = None
        self.session_id: str | None = None
        self.response_id: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.ran_model = False


_RECORD: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "cascade_request_record", default=None
)
# The door of runs outside any HTTP request: a worker process sets "batch".
_default_door: Door = "other"


def current() -> RequestRecord | None:
    """The record of the HTTP request this code runs for, if any."""
    return _RECORD.get()


def bind(record: RequestRecord) -> contextvars.Token[RequestRecord | None]:
    return _RECORD.set(record)


def unbind(token: contextvars.Token[RequestRecord | None]) -> None:
    _RECORD.reset(token)


def set_default_door(door: Door) -> None:
    """The door counted for runs outside an HTTP request (a worker's items: `batch`)."""
    global _default_door
    _default_door = door


def note(
    *,
    session_id: str | None = None,
    response_id: str | None = None,
    key_id: str | None = None,
) -> None:
    """Ids for the request's access-log line (None leaves a value as it is): the session or
    response a door gave out, the caller's key id (`app.api.auth`)."""
    record = _RECORD.get()
    if record is None:
        return
    if key_id is not None:
        record.key_id = key_id
    if session_id is not None:
        record.session_id = session_id
    if response_id is not None:
        record.response_id = response_id


def run_finished(prompt: int, cached: int, completion: int, reasoning: int) -> None:
    """A run ended with this usage: counted under its door, and kept for the access log."""
    record = _RECORD.get()
    children = _TOKEN_CHILDREN[record.door if record is not None else _default_door]
    for child, value in zip(children, (prompt, cached, completion, reasoning), strict=True):
        if value:
            child.inc(value)
    if record is not None:
        record.prompt_tokens = (record.prompt_tokens or 0) + prompt
        record.completion_tokens = (record.completion_tokens or 0) + completion
        record.ran_model = True


def tool_label(name: str, known: bool) -> str:
    """A tool's label: its name when the registry has it, else `unknown` (model text is not
    a label: it is unbounded)."""
    return name if known else "unknown"
