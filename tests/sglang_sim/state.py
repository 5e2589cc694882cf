"""The simulator's bookkeeping: request records, live jobs, the run queue, rules, counters."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tests.sglang_sim.script import Fault, FaultKind, Rule

__all__ = ["Job", "RecordedRequest", "RuleBook", "RuleChoice", "Slots", "Stats"]


class RecordedRequest(BaseModel):
    """What the simulator saw and did for one `/v1/chat/completions` request.

    `body` is the raw JSON body, `headers` the request's (names lower-cased); `rid` the
    effective request id (given or generated); `prompt` the rendered prompt text; `output` the
    raw text the model emitted (after the budget, stop and length cuts). `finish_reason` is the
    one sent to the client. Times are `time.monotonic()` seconds: `received_at` (body parsed),
    `started_at` (left the queue), `first_token_at`, `generation_ended_at` (last decode step,
    before the slot is freed), `finished_at` (response sent). `abort_reason` is "abort_request"
    or "client_disconnect". `traceparent` is the request's W3C trace context header, if any.
    """

    body: Any
    headers: dict[str, str] = {}  # the request's headers, names lower-cased
    rid: str | None = None
    stream: bool = False
    prompt: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    image_tokens: int = 0
    # Per `video_url` part: frames and size of the clip as decoded, and the frames kept.
    videos: list[dict[str, Any]] = []
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    finish_reason: str | None = None
    matched_stop: int | str | None = None
    output: str = ""
    thinking: bool = False
    in_think: bool | None = None
    budget_forced: bool = False
    rule_index: int | None = None
    fault: FaultKind | None = None
    status_code: int | None = None
    error: str | None = None
    aborted: bool = False
    abort_reason: str | None = None
    client_disconnected: bool = False
    received_at: float = 0.0
    started_at: float | None = None
    first_token_at: float | None = None
    generation_ended_at: float | None = None
    finished_at: float | None = None

    @property
    def traceparent(self) -> str | None:
        return self.headers.get("traceparent")


@dataclass
class Job:
    """A request the runtime knows by rid (SGLang's `rid_to_state` entry). Loop thread only."""

    rid: str
    record: RecordedRequest
    abort_event: asyncio.Event = field(default_factory=asyncio.Event)
    abort_sent: bool = False
    running: bool = False
    waiter: asyncio.Future[bool] | None = None

    @property
    def aborted(self) -> bool:
        return self.abort_event.is_set()


class Slots:
    """At most `limit()` jobs run; the others wait in FIFO order (SGLang's waiting queue).

    Loop thread only.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.running = 0
        self._waiters: deque[Job] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, job: Job) -> bool:
        """Wait for a slot; False when the job is aborted while it waits."""
        if job.aborted:
            return False
        if self.running < self._limit() and not self._waiters:
            self.running += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        job.waiter = waiter
        self._waiters.append(job)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()
            raise
        finally:
            if job in self._waiters:
                self._waiters.remove(job)
            job.waiter = None

    def release(self) -> None:
        self.running -= 1
        self.dispatch()

    def drop(self, job: Job) -> None:
        """Wake a queued job with "aborted"."""
        if job.waiter is not None and not job.waiter.done():
            job.waiter.set_result(False)
        if job in self._waiters:
            self._waiters.remove(job)

    def dispatch(self) -> None:
        """Start queued jobs while slots are free (after a release or a higher limit)."""
        while self._waiters and self.running < self._limit():
            job = self._waiters.popleft()
            if job.waiter is not None and not job.waiter.done():
                self.running += 1
                job.waiter.set_result(True)


@dataclass
class _RuleState:
    rule: Rule
    uses: int = 0
    faults: int = 0


@dataclass(frozen=True)
class RuleChoice:
    """The rule that answers a request (None: the default answer) and the fault it fires now."""

    index: int | None
    rule: Rule | None
    fault: Fault | None


class RuleBook:
    """Rules in order with their use and fault counters. Thread-safe."""

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self._lock = threading.Lock()
        self._states = [_RuleState(rule) for rule in rules]

    def add(self, rule: Rule) -> None:
        with self._lock:
            self._states.append(_RuleState(rule))

    def replace(self, rules: Sequence[Rule]) -> None:
        with self._lock:
            self._states = [_RuleState(rule) for rule in rules]

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return [state.rule for state in self._states]

    def choose(self, user_text: str, *, continuation: bool) -> RuleChoice:
        """The first unexpired rule matching the request. Its fault fires while it has firings
        left (not counted as a use); otherwise the rule is used once."""
        with self._lock:
            for index, state in enumerate(self._states):
                rule = state.rule
                if rule.times is not None and state.uses >= rule.times:
                    continue
                if rule.match is not None and rule.match not in user_text:
                    continue
                if rule.continuation is not None and rule.continuation != continuation:
                    continue
                if rule.fault is not None and state.faults < rule.fault.times:
                    state.faults += 1
                    return RuleChoice(index, rule, rule.fault)
                state.uses += 1
                return RuleChoice(index, rule, None)
        return RuleChoice(None, None, None)


class Stats:
    """Counters behind `/metrics`. Thread-safe."""

    THROUGHPUT_WINDOW = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.prompt_tokens = 0
            self.cached_tokens = 0
            self.generation_tokens = 0
            self.requests = 0
            self.aborted = 0
            self._recent: deque[float] = deque()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def token(self) -> None:
        """One generated token (for throughput and the generation counter)."""
        with self._lock:
            self.generation_tokens += 1
            self._recent.append(time.monotonic())

    def throughput(self) -> float:
        """Tokens per second over the last `THROUGHPUT_WINDOW` seconds."""
        cutoff = time.monotonic() - self.THROUGHPUT_WINDOW
        with self._lock:
            while self._recent and self._recent[0] < cutoff:
                self._recent.popleft()
            return len(self._recent) / self.THROUGHPUT_WINDOW

    def hit_rate(self) -> float:
        with self._lock:
            return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
