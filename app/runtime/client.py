"""The SGLang HTTP client: the only code in cascade that talks to the runtime.

Contracts:
- One pooled `aiohttp.ClientSession` per `SGLangClient` (opened on first use, inside the event
  loop that uses it); `aclose()` releases it.
- Retries (bounded, jittered exponential backoff) happen only on connection errors, 429 (after
  `Retry-After`) and 5xx, and only before any chunk was handed to the caller: a stream that breaks
  after its first chunk raises, it is never silently restarted (that would duplicate tokens).
- Every failure is a typed `CascadeError`; upstream error text goes to the log (truncated), never
  into the error message.
- This layer does not enforce thinking budgets: `app.runtime.guard.GuardedRuntime` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import structlog
import yarl

from app import metrics, tracing
from app.config import Settings
from app.errors import (
    CascadeError,
    InvalidRequestError,
    RuntimeUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.runtime.body import build_chat_body, new_rid
from app.runtime.metrics import RuntimeMetrics, parse_metrics
from app.runtime.models import (
    Chunk,
    ChunkStream,
    Completion,
    RuntimeHealth,
    RuntimeRequest,
    ToolCall,
    ToolCallFunction,
)
from app.runtime.sse import (
    DONE,
    SSEDecoder,
    StreamErrorEvent,
    StreamProtocolError,
    as_finish_reason,
    chunk_from_event,
    decode_payload,
    parse_usage,
)

log = structlog.get_logger(__name__)

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MIN_ANSWER_ROOM = 16

_TOTAL_TOO_LONG = re.compile(
    rb"maximum context length of (\d+) tokens\. You requested a total of \d+ tokens: "
    rb"(\d+) tokens from the input"
)
_COMPLETION_TOO_LONG = re.compile(rb"supports at most (\d+) completion tokens")
# SGLang's tokenizer manager, for a prompt that alone fills the window.
_INPUT_TOO_LONG = re.compile(rb"is longer than the model's context length \((\d+) tokens\)")

CONTEXT_EXCEEDED = (
    "the conversation no longer fits the model's context window; start a new session (or fork "
    "this one earlier) or send shorter input"
)


def context_room(body: bytes, asked: int) -> int | None:
    """From SGLang's 400 text: how many tokens `max_tokens` may be, or None (another error)."""
    total = _TOTAL_TOO_LONG.search(body)
    if total is not None:
        return int(total.group(1)) - int(total.group(2))
    completion = _COMPLETION_TOO_LONG.search(body)
    if completion is not None:
        return min(asked - 1, int(completion.group(1)))
    return None


class _Retryable(Exception):
    """Internal: an attempt failed in a way that may be retried."""

    def __init__(self, error: CascadeError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


# What a failed call to the runtime can raise below this module: aiohttp's errors, and a
# timeout (a call's own `ClientTimeout`).
_HTTP_ERRORS = (aiohttp.ClientError, TimeoutError)
# Seconds an idle pooled connection is kept: below uvicorn's default keep-alive (5 s), which
# SGLang's server uses, so a connection the server is about to close is not reused.
_KEEPALIVE = 4.0
# Seconds a finished stream waits for the end of its body before its connection is dropped.
_DRAIN = 1.0


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class SGLangClient:
    """Raw access to one SGLang runtime (or an SGLang router in front of several)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        headers = {"content-type": "application/json"}
        if settings.runtime_api_key is not None:
            headers["authorization"] = f"Bearer {settings.runtime_api_key.get_secret_value()}"
        self._headers = headers
        # Connect covers waiting for a pooled connection too; read is the longest silence
        # between two reads (a stream's body is timed by `_SilenceWatch` instead, once its
        # headers came: a stream that stops sending tokens).
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.runtime_connect_timeout,
            sock_connect=settings.runtime_connect_timeout,
            sock_read=settings.runtime_read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None
        # Parsed once: aiohttp would parse a string URL on every call.
        self._chat_url = yarl.URL(settings.runtime_base + "/v1/chat/completions")
        self._model: str | None = settings.model
        self._context_length: int | None = None

    def _http(self) -> aiohttp.ClientSession:
        """The pooled session, opened on first use (aiohttp binds it to the running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.settings.runtime_max_connections,
                    limit_per_host=0,
                    keepalive_timeout=_KEEPALIVE,
                ),
                headers=self._headers,
                timeout=self._timeout,
                # Bodies are bytes cascade encodes itself (orjson); nothing else is needed.
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _get(self, path: str, *, seconds: float) -> tuple[aiohttp.ClientResponse, bytes]:
        """One GET of a small body; raises one of `_HTTP_ERRORS` when nothing usable came."""
        async with self._http().get(
            self.settings.runtime_base + path, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as response:
            return response, await response.read()

    # ------------------------------------------------------------------ helpers

    def _unavailable(self, what: str) -> RuntimeUnavailableError:
        return RuntimeUnavailableError(
            f"the SGLang runtime at {self.settings.runtime_display} {what}; start it "
            "(`cascade runtime` or `docker compose up sglang`) or point CASCADE_RUNTIME_URL at it",
            retry_after=5,
        )

    def _error_for_status(self, response: aiohttp.ClientResponse, body: bytes) -> CascadeError:
        status = response.status
        log.warning(
            "runtime_error_response",
            status=status,
            upstream_message=body[:300].decode("utf-8", "replace"),
        )
        if status == 400 and _INPUT_TOO_LONG.search(body) is not None:
            return InvalidRequestError(CONTEXT_EXCEEDED, code="context_length_exceeded")
        if status == 400:
            return InvalidRequestError(
                "the runtime rejected the request (for example: prompt longer than the context "
                "window, or an unsupported parameter)",
                code="runtime_rejected_request",
            )
        if status in (401, 403):
            return UpstreamError(
                "the runtime refused cascade's credentials; check CASCADE_RUNTIME_API_KEY",
                code="runtime_auth_failed",
            )
        if status == 429:
            return RuntimeUnavailableError(
                "the runtime is overloaded; retry shortly",
                retry_after=_retry_after(response) or 5,
                code="runtime_overloaded",
            )
        if status in (502, 503, 504):
            return self._unavailable("is not ready")
        return UpstreamError(f"the runtime failed with HTTP {status}", code="runtime_error")

    async def _backoff(self, attempt: int, retry_after: float | None, kind: str) -> None:
        metrics.RUNTIME_RETRIES.labels(kind).inc()
        base = self.settings.runtime_retry_backoff * (2**attempt)
        delay = random.uniform(0.5 * base, 1.5 * base)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 30.0))
        await asyncio.sleep(delay)

    async def _send(
        self, url: yarl.URL, headers: dict[str, str] | None, body: bytes, *, stream: bool
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """POST `body`; the response (its body read unless it is a 200 stream) and that body."""
        response: aiohttp.ClientResponse | None = None
        try:
            response = await self._http().post(url, data=body, headers=headers)
            content = b"" if stream and response.status == 200 else await response.read()
        except BaseException as exc:
            if response is not None:  # a body cut or timed out: its connection is not reused
                response.close()
            if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
                raise _Retryable(self._unavailable("is not reachable")) from exc
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise UpstreamTimeoutError("the runtime did not answer in time") from exc
            if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
                # Nothing was handed on yet: a connection that broke is worth another attempt.
                raise _Retryable(self._unavailable("closed the connection")) from exc
            raise
        return response, content

    @asynccontextmanager
    async def _open(
        self, path: str, payload: dict[str, Any], *, stream: bool, routing_key: str | None = None
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, bytes]]:
        """One POST attempt; yields a 200 response with its body (empty when streamed: read
        `response.content`) or raises (`_Retryable` when retrying helps).

        A request whose `max_tokens` does not fit the context window beside the prompt is sent
        again at once with the room the runtime reported (SGLang rejects it otherwise).
        """
        # The session's default headers (content type, key) are sent as well.
        headers = {"x-smg-routing-key": routing_key} if routing_key else {}
        tracing.inject(headers)
        url = (
            self._chat_url
            if path == "/v1/chat/completions"
            else yarl.URL(self.settings.runtime_base + path)
        )
        response, body = await self._send(url, headers, orjson.dumps(payload), stream=stream)
        for _ in range(2):
            if response.status != 400 or "max_completion_tokens" not in payload:
                break
            room = context_room(body, payload["max_completion_tokens"])
            if room is None:
                break
            response.release()
            if room < MIN_ANSWER_ROOM:
                raise InvalidRequestError(CONTEXT_EXCEEDED, code="context_length_exceeded")
            log.info("max_tokens_fitted", asked=payload["max_completion_tokens"], fitted=room)
            payload = {**payload, "max_completion_tokens": room}
            response, body = await self._send(url, headers, orjson.dumps(payload), stream=stream)
        try:
            if response.status != 200:
                error = self._error_for_status(response, body)
                if response.status in _RETRY_STATUSES:
                    raise _Retryable(error, _retry_after(response))
                raise error
            yield response, body
        finally:
            # A stream left before its end closes the connection (SGLang aborts on disconnect);
            # a body read to its end gives the connection back to the pool.
            if response.content.is_eof():
                response.release()
            else:
                response.close()

    # --------------------------------------------------------------- public API

    @property
    def served_model(self) -> str | None:
        """The served model's name once known (configured, or asked by `model_name`)."""
        return self._model

    async def model_name(self) -> str:
        """The served model name: configured, or asked of the runtime once."""
        if self._model is None:
            health = await self.health()
            if not health.reachable or health.model is None:
                raise self._unavailable("is not reachable")
            self._model = health.model
        return self._model

    async def complete(self, req: RuntimeRequest, *, rid: str | None = None) -> Completion:
        """One non-streamed generation (no budget guard at this layer)."""
        rid = rid or new_rid()
        model = await self.model_name()
        body = build_chat_body(req, self.settings, model=model, rid=rid, stream=False)
        attempts = self.settings.runtime_max_retries + 1
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self.settings.runtime_total_timeout):
                    async with self._open(
                        "/v1/chat/completions", body, stream=False, routing_key=req.routing_key
                    ) as (_, content):
                        data = orjson.loads(content)
                return _completion_from_body(data, rid=rid, model=model)
            except _Retryable as retry:
                if attempt + 1 >= attempts:
                    raise retry.error from None
                log.info("runtime_retry", rid=rid, attempt=attempt + 1, reason=retry.error.code)
                await self._backoff(attempt, retry.retry_after, retry.error.code)
            except TimeoutError as exc:
                raise UpstreamTimeoutError("the runtime did not finish in time") from exc
            except orjson.JSONDecodeError as exc:
                raise UpstreamError("the runtime sent a malformed response") from exc
        raise AssertionError("unreachable")

    async def stream(self, req: RuntimeRequest, *, rid: str | None = None) -> ChunkStream:
        """Stream one generation as `Chunk`s; the last one carries finish reason and usage.

        Closing the iterator early closes the HTTP stream (SGLang aborts on disconnect); callers
        that stop early should also `abort(rid)`, which is immediate.
        """
        rid = rid or new_rid()
        model = await self.model_name()
        body = build_chat_body(req, self.settings, model=model, rid=rid, stream=True)
        deadline = time.monotonic() + self.settings.runtime_total_timeout
        attempts = self.settings.runtime_max_retries + 1
        for attempt in range(attempts):
            handed_on = False
            try:
                async with self._open(
                    "/v1/chat/completions", body, stream=True, routing_key=req.routing_key
                ) as (response, _):
                    decoder = SSEDecoder()
                    pending: Chunk | None = None
                    finished = False
                    content = response.content
                    with _SilenceWatch(response, self.settings.runtime_read_timeout) as watch:
                        while True:
                            # Whatever the connection has now, without waiting for more.
                            watch.waiting_since = watch.loop.time()
                            data = await content.readany()
                            watch.waiting_since = None
                            if not data:
                                break
                            try:
                                for payload in decoder.payloads(data):
                                    event = decode_payload(payload)
                                    if event is DONE:
                                        finished = True
                                        break
                                    chunk = chunk_from_event(event)  # type: ignore[arg-type]
                                    if chunk is None:
                                        continue
                                    chunk.rid = rid
                                    if pending is None:
                                        pending = chunk
                                    elif chunk.usage is not None:
                                        # The usage-only chunk follows the finish chunk: merge them.
                                        pending.usage = chunk.usage
                                    elif _coalesce(pending, chunk):
                                        pass
                                    else:
                                        handed_on = True
                                        yield pending
                                        pending = chunk
                            except (StreamProtocolError, StreamErrorEvent):
                                # What came before a bad or error event in this read was received
                                # whole: hand it on first (the answer is then under way, and the
                                # stream is not retried), as when it came in reads of its own.
                                if pending is not None:
                                    handed_on = True
                                    yield pending
                                raise
                            if finished:
                                break
                            # Hand on what this read brought (never wait for more text), but hold
                            # a finish chunk until its usage chunk arrives.
                            if pending is not None and pending.finish_reason is None:
                                handed_on = True
                                yield pending
                                pending = None
                            if time.monotonic() > deadline:
                                raise UpstreamTimeoutError("the runtime did not finish in time")
                        if not finished:
                            raise _Retryable(self._unavailable("ended the stream early"))
                        if pending is not None:
                            if pending.finish_reason is None:
                                pending.finish_reason = "stop"
                            handed_on = True
                            yield pending
                    if not content.is_eof():
                        # The body's last (empty) chunk can come in a read of its own after
                        # `[DONE]`: take it, so the connection goes back to the pool.
                        with contextlib.suppress(*_HTTP_ERRORS):
                            async with asyncio.timeout(_DRAIN):
                                await content.read()
                    return
            except _Retryable as retry:
                error: CascadeError = retry.error
                if handed_on or attempt + 1 >= attempts:
                    raise _mid_stream(error, handed_on) from None
                await self._backoff(attempt, retry.retry_after, error.code)
            except StreamProtocolError:
                if handed_on or attempt + 1 >= attempts:
                    raise UpstreamError(
                        "the runtime sent a malformed stream event", code="runtime_bad_stream"
                    ) from None
                log.warning("runtime_malformed_stream", rid=rid, attempt=attempt + 1)
                await self._backoff(attempt, None, "runtime_bad_stream")
            except StreamErrorEvent as exc:
                log.warning(
                    "runtime_stream_error",
                    rid=rid,
                    upstream_code=exc.upstream_code,
                    upstream_message=exc.upstream_message[:300],
                )
                if exc.upstream_code == 400:
                    raise InvalidRequestError(
                        "the runtime rejected the request", code="runtime_rejected_request"
                    ) from None
                raise UpstreamError(
                    "the runtime reported an error during generation", code="runtime_error"
                ) from None
            except aiohttp.ServerTimeoutError as exc:
                raise UpstreamTimeoutError("the runtime stopped sending tokens") from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                if handed_on or attempt + 1 >= attempts:
                    raise _mid_stream(self._unavailable("closed the stream"), handed_on) from exc
                await self._backoff(attempt, None, "stream_closed")

    async def abort(self, rid: str) -> bool:
        """Ask the runtime to abort `rid` (SGLang matches by prefix; our rids are prefix-free).

        Best effort and quick: returns False when the runtime could not be told.
        """
        try:
            async with self._http().post(
                self.settings.runtime_base + "/abort_request",
                data=orjson.dumps({"rid": rid, "abort_all": False}),
                timeout=aiohttp.ClientTimeout(total=5.0),
            ) as response:
                await response.read()
        except _HTTP_ERRORS:
            log.warning("runtime_abort_failed", rid=rid)
            return False
        return response.status == 200

    async def health(self) -> RuntimeHealth:
        """Reachability (`/model_info`) and health (`/health`); never raises.

        A real runtime answers `/model_info` at once but `/health` only after a first generation
        succeeded, so both are reported. The model name is `/model_info`'s `served_model_name`;
        SGLang 0.5.15 has no such field, so then it is the first id of `/v1/models` (the served
        name), else `model_path` (what SGLang serves under when no name was given).
        """
        try:
            info, info_body = await self._get("/model_info", seconds=3.0)
        except _HTTP_ERRORS:
            return RuntimeHealth(reachable=False, healthy=False, detail="not reachable")
        if info.status != 200:
            return RuntimeHealth(
                reachable=True, healthy=False, detail=f"/model_info answered {info.status}"
            )
        try:
            data = orjson.loads(info_body)
        except orjson.JSONDecodeError:
            data = {}
        healthy = False
        try:
            health, _ = await self._get("/health", seconds=3.0)
            healthy = health.status == 200
        except _HTTP_ERRORS:
            healthy = False
        model = data.get("served_model_name") or await self._first_model_id()
        return RuntimeHealth(
            reachable=True,
            healthy=healthy,
            model=model or data.get("model_path"),
            model_path=data.get("model_path"),
            reasoning_parser=data.get("reasoning_parser"),
            tool_call_parser=data.get("tool_call_parser"),
            has_image_understanding=data.get("has_image_understanding"),
            detail="ok" if healthy else "reachable; /health not yet 200 (warming up?)",
        )

    async def diagnose(
        self, path: str, payload: dict[str, Any] | None = None, *, call_timeout: float = 30.0
    ) -> tuple[int, bytes] | None:
        """One request exactly as given, for `cascade doctor`: a GET, or a POST of `payload`;
        no retries and no body building. (status, body), or None when nothing answered."""
        try:
            if payload is None:
                response, body = await self._get(path, seconds=call_timeout)
            else:
                async with self._http().post(
                    self.settings.runtime_base + path,
                    data=orjson.dumps(payload),
                    timeout=aiohttp.ClientTimeout(total=call_timeout),
                ) as response:
                    body = await response.read()
        except _HTTP_ERRORS:
            return None
        return response.status, body

    async def _first_model_id(self) -> str | None:
        """The first model id `/v1/models` lists, or None when it cannot be read now."""
        try:
            response, body = await self._get("/v1/models", seconds=3.0)
            data = orjson.loads(body) if response.status == 200 else None
        except (*_HTTP_ERRORS, orjson.JSONDecodeError):
            return None
        models = data.get("data") if isinstance(data, dict) else None
        first = models[0] if isinstance(models, list) and models else None
        model_id = first.get("id") if isinstance(first, dict) else None
        return model_id if isinstance(model_id, str) and model_id else None

    async def context_length(self) -> int | None:
        """The runtime's context window in tokens (`/server_info`'s `context_length`), asked
        once and kept; None while it cannot be read (asked again next time)."""
        if self._context_length is None:
            info = await self.server_info()
            value = (info or {}).get("context_length")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                self._context_length = value
        return self._context_length

    async def server_info(self) -> dict[str, Any] | None:
        """The runtime's `/server_info` (its launch settings), or None when unreadable now."""
        try:
            response, body = await self._get("/server_info", seconds=5.0)
        except _HTTP_ERRORS:
            return None
        if response.status != 200:
            return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def metrics(self) -> RuntimeMetrics | None:
        """The gauges of the runtime's `/metrics` (`app.runtime.metrics`), or None when it
        cannot be read now (not reachable, not 200, metrics not enabled). Never raises."""
        try:
            response, body = await self._get("/metrics", seconds=3.0)
        except _HTTP_ERRORS:
            return None
        if response.status != 200:
            return None
        return parse_metrics(body.decode("utf-8", "replace"))

    async def list_models(self) -> dict[str, Any]:
        """The runtime's `/v1/models` body."""
        try:
            response, body = await self._get("/v1/models", seconds=5.0)
        except _HTTP_ERRORS:
            raise self._unavailable("is not reachable") from None
        if response.status != 200:
            raise self._error_for_status(response, body)
        data: dict[str, Any] = orjson.loads(body)
        return data


class _SilenceWatch:
    """The runtime's silence while a stream waits for its next bytes, held to `seconds`.

    aiohttp's `sock_read` cancels and re-arms a loop timer on every read that brings data,
    about half as much CPU per paced chunk as decoding the chunk. Here one timer runs for the
    whole stream and is re-armed only when it fires. The stream sets `waiting_since` (loop
    time) before each read and clears it after, so the time it spends handing chunks on (to a
    slow client) is not counted as the runtime's silence. When a wait reaches `seconds`, the
    read fails with `aiohttp.ServerTimeoutError`, as it did with `sock_read`. The response
    headers are still timed by the session's `sock_read`.
    """

    __slots__ = ("_content", "_handle", "_seconds", "loop", "waiting_since")

    def __init__(self, response: aiohttp.ClientResponse, seconds: float) -> None:
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None  # aiohttp sets it again for its next request
        self.loop = asyncio.get_running_loop()
        self.waiting_since: float | None = None
        self._content = response.content
        self._seconds = seconds
        self._handle: asyncio.TimerHandle | None = self.loop.call_later(seconds, self._check)

    def __enter__(self) -> _SilenceWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        since = self.waiting_since
        now = self.loop.time()
        if since is not None and now - since >= self._seconds:
            self._handle = None
            self._content.set_exception(
                aiohttp.ServerTimeoutError(f"no data from the runtime for {self._seconds} s")
            )
            return
        due = now + self._seconds if since is None else since + self._seconds
        # Timers fire to the millisecond: never re-arm for less, or a wait just short of
        # `seconds` would spin the loop until it is reached.
        self._handle = self.loop.call_at(max(due, now + 0.001), self._check)


def _coalesce(into: Chunk, chunk: Chunk) -> bool:
    """Merge `chunk` into `into` when both carry only text of the same kind.

    Events that arrive in one network read are relayed as one chunk: fewer, larger chunks cost
    less per token at every layer above, and nothing waits for it.
    """
    if into.tool_calls or chunk.tool_calls or into.finish_reason or chunk.finish_reason:
        return False
    if into.reasoning_content is not None and into.content is None:
        if chunk.reasoning_content is None or chunk.content is not None:
            return False
        into.reasoning_content += chunk.reasoning_content
    elif into.content is not None and into.reasoning_content is None:
        if chunk.content is None or chunk.reasoning_content is not None:
            return False
        into.content += chunk.content
    else:
        return False
    if chunk.completion_tokens is not None:
        into.completion_tokens = chunk.completion_tokens
    return True


def _mid_stream(error: CascadeError, handed_on: bool) -> CascadeError:
    if not handed_on:
        return error
    return UpstreamError(
        "the runtime's stream broke off mid-answer", code="runtime_stream_interrupted"
    )


def _completion_from_body(data: dict[str, Any], *, rid: str, model: str) -> Completion:
    choices = data.get("choices") or []
    if not choices:
        raise UpstreamError("the runtime sent a response without choices")
    choice = choices[0]
    message = choice.get("message") or {}
    calls = [
        ToolCall(
            id=call.get("id") or f"call_{i}",
            function=ToolCallFunction(
                name=(call.get("function") or {}).get("name") or "",
                arguments=(call.get("function") or {}).get("arguments") or "{}",
            ),
        )
        for i, call in enumerate(message.get("tool_calls") or [])
    ]
    return Completion(
        rid=rid,
        model=data.get("model") or model,
        content=message.get("content") or "",
        reasoning_content=message.get("reasoning_content"),
        tool_calls=calls,
        finish_reason=as_finish_reason(choice.get("finish_reason")),
        usage=parse_usage(data.get("usage")),
    )
