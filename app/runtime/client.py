"""The SGLang HTTP client: the only code in cascade that talks to the runtime.

Contracts:
- One pooled `httpx.AsyncClient` per `SGLangClient`; `aclose()` releases it.
- Retries (bounded, jittered exponential backoff) happen only on connection errors, 429 (after
  `Retry-After`) and 5xx, and only before any chunk was handed to the caller: a stream that breaks
  after its first chunk raises, it is never silently restarted (that would duplicate tokens).
- Every failure is a typed `CascadeError`; upstream error text goes to the log (truncated), never
  into the error message.
- This layer does not enforce thinking budgets: `app.runtime.guard.GuardedRuntime` does.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import structlog

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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class SGLangClient:
    """Raw access to one SGLang runtime (or an SGLang router in front of several)."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        headers = {"content-type": "application/json"}
        if settings.runtime_api_key is not None:
            headers["authorization"] = f"Bearer {settings.runtime_api_key.get_secret_value()}"
        timeout = httpx.Timeout(
            connect=settings.runtime_connect_timeout,
            read=settings.runtime_read_timeout,
            write=settings.runtime_read_timeout,
            pool=settings.runtime_connect_timeout,
        )
        # One pool: generation calls go straight to the transport (no per-call URL/header
        # merging, auth or redirect machinery: that was most of cascade's CPU per turn); the
        # client on the same transport serves the occasional small calls.
        self._transport = transport or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(
                max_connections=settings.runtime_max_connections,
                max_keepalive_connections=settings.runtime_max_connections,
            ),
        )
        self._http = httpx.AsyncClient(
            base_url=settings.runtime_base,
            headers=headers,
            timeout=timeout,
            transport=self._transport,
        )
        self._headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        self._timeout_ext = timeout.as_dict()
        self._chat_url = httpx.URL(settings.runtime_base + "/v1/chat/completions")
        self._model: str | None = settings.model
        self._context_length: int | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ helpers

    def _unavailable(self, what: str) -> RuntimeUnavailableError:
        return RuntimeUnavailableError(
            f"the SGLang runtime at {self.settings.runtime_display} {what}; start it "
            "(`cascade runtime` or `docker compose up sglang`) or point CASCADE_RUNTIME_URL at it",
            retry_after=5,
        )

    def _error_for_status(self, response: httpx.Response, body: bytes) -> CascadeError:
        status = response.status_code
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
        self, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes, *, stream: bool
    ) -> httpx.Response:
        request = httpx.Request(
            "POST", url, headers=headers, content=body, extensions={"timeout": self._timeout_ext}
        )
        try:
            response = await self._transport.handle_async_request(request)
            if not stream or response.status_code != 200:
                await response.aread()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _Retryable(self._unavailable("is not reachable")) from exc
        except (httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            # Nothing was handed on yet: a connection that broke is worth another attempt.
            raise _Retryable(self._unavailable("closed the connection")) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError("the runtime did not answer in time") from exc
        return response

    @asynccontextmanager
    async def _open(
        self, path: str, payload: dict[str, Any], *, stream: bool, routing_key: str | None = None
    ) -> AsyncIterator[httpx.Response]:
        """One POST attempt; yields a 200 response or raises (`_Retryable` when retrying helps).

        A request whose `max_tokens` does not fit the context window beside the prompt is sent
        again at once with the room the runtime reported (SGLang rejects it otherwise).
        """
        headers = list(self._headers)
        if routing_key:
            headers.append((b"x-smg-routing-key", routing_key.encode()))
        tracing.inject(headers)
        url = (
            self._chat_url
            if path == "/v1/chat/completions"
            else httpx.URL(self.settings.runtime_base + path)
        )
        response = await self._send(url, headers, orjson.dumps(payload), stream=stream)
        for _ in range(2):
            if response.status_code != 400 or "max_completion_tokens" not in payload:
                break
            room = context_room(response.content, payload["max_completion_tokens"])
            if room is None:
                break
            await response.aclose()
            if room < MIN_ANSWER_ROOM:
                raise InvalidRequestError(CONTEXT_EXCEEDED, code="context_length_exceeded")
            log.info("max_tokens_fitted", asked=payload["max_completion_tokens"], fitted=room)
            payload = {**payload, "max_completion_tokens": room}
            response = await self._send(url, headers, orjson.dumps(payload), stream=stream)
        try:
            if response.status_code != 200:
                error = self._error_for_status(response, response.content)
                if response.status_code in _RETRY_STATUSES:
                    raise _Retryable(error, _retry_after(response))
                raise error
            yield response
        finally:
            await response.aclose()

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
                    ) as response:
                        data = orjson.loads(response.content)
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
                ) as response:
                    decoder = SSEDecoder()
                    pending: Chunk | None = None
                    finished = False
                    # The raw byte stream: httpx's decoder layers add nothing for SSE over JSON.
                    async for data in response.stream:  # type: ignore[union-attr]
                        for event in decoder.feed(data):
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
            except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
                if handed_on or attempt + 1 >= attempts:
                    raise _mid_stream(self._unavailable("closed the stream"), handed_on) from exc
                await self._backoff(attempt, None, "stream_closed")
            except httpx.ReadTimeout as exc:
                raise UpstreamTimeoutError("the runtime stopped sending tokens") from exc

    async def abort(self, rid: str) -> bool:
        """Ask the runtime to abort `rid` (SGLang matches by prefix; our rids are prefix-free).

        Best effort and quick: returns False when the runtime could not be told.
        """
        try:
            response = await self._http.post(
                "/abort_request", json={"rid": rid, "abort_all": False}, timeout=5.0
            )
        except httpx.HTTPError:
            log.warning("runtime_abort_failed", rid=rid)
            return False
        return response.status_code == 200

    async def health(self) -> RuntimeHealth:
        """Reachability (`/model_info`) and health (`/health`); never raises.

        A real runtime answers `/model_info` at once but `/health` only after a first generation
        succeeded, so both are reported. The model name is `/model_info`'s `served_model_name`;
        SGLang 0.5.15 has no such field, so then it is the first id of `/v1/models` (the served
        name), else `model_path` (what SGLang serves under when no name was given).
        """
        try:
            info = await self._http.get("/model_info", timeout=3.0)
        except httpx.HTTPError:
            return RuntimeHealth(reachable=False, healthy=False, detail="not reachable")
        if info.status_code != 200:
            return RuntimeHealth(
                reachable=True, healthy=False, detail=f"/model_info answered {info.status_code}"
            )
        try:
            data = orjson.loads(info.content)
        except orjson.JSONDecodeError:
            data = {}
        healthy = False
        try:
            health = await self._http.get("/health", timeout=3.0)
            healthy = health.status_code == 200
        except httpx.HTTPError:
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
                response = await self._http.get(path, timeout=call_timeout)
            else:
                response = await self._http.post(
                    path, content=orjson.dumps(payload), timeout=call_timeout
                )
        except httpx.HTTPError:
            return None
        return response.status_code, response.content

    async def _first_model_id(self) -> str | None:
        """The first model id `/v1/models` lists, or None when it cannot be read now."""
        try:
            response = await self._http.get("/v1/models", timeout=3.0)
            data = orjson.loads(response.content) if response.status_code == 200 else None
        except (httpx.HTTPError, orjson.JSONDecodeError):
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
            response = await self._http.get("/server_info", timeout=5.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def metrics(self) -> RuntimeMetrics | None:
        """The gauges of the runtime's `/metrics` (`app.runtime.metrics`), or None when it
        cannot be read now (not reachable, not 200, metrics not enabled). Never raises."""
        try:
            response = await self._http.get("/metrics", timeout=3.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return parse_metrics(response.content.decode("utf-8", "replace"))

    async def list_models(self) -> dict[str, Any]:
        """The runtime's `/v1/models` body."""
        try:
            response = await self._http.get("/v1/models", timeout=5.0)
        except httpx.HTTPError:
            raise self._unavailable("is not reachable") from None
        if response.status_code != 200:
            raise self._error_for_status(response, response.content)
        data: dict[str, Any] = orjson.loads(response.content)
        return data


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
