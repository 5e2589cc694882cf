"""`/v1/chat/completions` as SGLang 0.5.23 serves it (serving_chat.py + tokenizer_manager.py).

`serve_chat` runs one request on the raw ASGI channel: validation and prompt rendering, rule
choice and early faults, the duplicate-rid check, the run queue, paced decoding, and the
response (one JSON body, or SSE chunks whose headers go out with the first chunk). A task
listening on the channel turns a client disconnect into an abort of the request's rid.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from jsonschema import Draft202012Validator, SchemaError
from starlette.types import Receive, Send

from tests.sglang_sim.generation import (
    THINK_END,
    Decoder,
    Plan,
    Step,
    forced_tool_answer,
    plan_output,
)
from tests.sglang_sim.json_grammar import format_error, json_grammar
from tests.sglang_sim.media import ImageError, ImageInfo, VideoInfo, prompt_images, prompt_videos
from tests.sglang_sim.parsing import (
    Delta,
    RequestParsing,
    normalize_schema_types,
    tool_parsing_active,
)
from tests.sglang_sim.protocol import (
    MAX_STOP_COUNT,
    ChatRequest,
    ChunkHead,
    error_dict,
    light_chunk_dict,
    model_chunk_dict,
    response_dict,
    tool_call_dict,
    usage_chunk_dict,
    usage_dict,
)
from tests.sglang_sim.script import DEFAULT_ANSWER, DEFAULT_REASONING, Fault, Rule, SimConfig
from tests.sglang_sim.state import Job, RecordedRequest
from tests.sglang_sim.template import render_chat_prompt
from tests.sglang_sim.tokens import tokenize

if TYPE_CHECKING:
    from tests.sglang_sim.server import Simulator

__all__ = ["CUT_MARKER", "WEIGHT_VERSION", "quiet_cut_connection_logs", "send_json", "serve_chat"]

WEIGHT_VERSION = "default"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
CUT_MARKER = "sglang-sim: connection cut on purpose"
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


class _Cut(Exception):
    """Raised to make uvicorn drop the connection mid-response (fault `cut_stream`)."""

    def __init__(self) -> None:
        super().__init__(CUT_MARKER)


class _CutLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _Cut)


def quiet_cut_connection_logs() -> None:
    """Keep uvicorn from logging the deliberate `cut_stream` exception as an error."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _CutLogFilter) for f in logger.filters):
        logger.addFilter(_CutLogFilter())


class _Failure(Exception):
    """A request that ends in an SGLang-shaped error response."""

    def __init__(self, message: str, err_type: str = "BadRequestError", code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.err_type = err_type
        self.code = code


async def send_json(
    send: Send, content: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> None:
    """A complete JSON response on the raw ASGI channel."""
    body = orjson.dumps(content)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _sse(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class _Prepared:
    """A validated request, rendered and tokenized, ready to be scheduled.

    `parser_error` is set when SGLang's reasoning parser would fail on this request (a
    continued assistant message with null content): the output then cannot be delivered.
    """

    request: ChatRequest
    record: RecordedRequest
    prompt_tokens: list[str]
    thinking: bool
    parsing: RequestParsing
    parser_error: bool
    max_new_tokens: int
    continuation: bool
    user_text: str


@functools.lru_cache(maxsize=1024)
def _schema_problem(schema_json: bytes) -> str | None:
    """Draft 2020-12's verdict on one schema (its JSON text): the message of its `SchemaError`,
    or None. Remembered per schema: the verdict depends on the text alone, and checking the
    same tool schemas on every request was most of this simulator's CPU, which on a small
    machine competes with the process under test (a real runtime checks on cores of its own)."""
    try:
        Draft202012Validator.check_schema(orjson.loads(schema_json))
    except SchemaError as exc:
        return str(exc)
    return None


def _validation_error(config: SimConfig, request: ChatRequest) -> str | None:
    """serving_chat.py `_validate_request` (the checks that apply to this model)."""
    if not request.messages:
        return "Messages cannot be empty."
    if request.chat_template_kwargs and "chat_template" in request.chat_template_kwargs:
        return (
            "Request-supplied chat_template is not allowed. Start the server with "
            "--trust-request-chat-template to permit it."
        )
    tools = request.effective_tools
    choice = request.tool_choice
    if isinstance(choice, str) and choice.lower() == "required" and not tools:
        return "Tools cannot be empty if tool choice is set to required."
    if not isinstance(choice, str):
        if not tools:
            return "Tools cannot be empty if tool choice is set to a specific tool."
        if not any(tool.function.name == choice.function.name for tool in tools):
            return f"Tool '{choice.function.name}' not found in tools list."
    if request.has_message_tools:
        names = [tool.function.name for tool in tools]
        if len(names) != len(set(names)):
            return "Tool names must be unique across request and message tools."
    for i, tool in enumerate(tools):
        if tool.function.parameters is None:
            continue
        # SGLang rewrites ORM-style type names ("int", "list[str]", ...) in place first, and
        # renders and parses with the rewritten schema.
        normalize_schema_types(tool.function.parameters)
        problem = _schema_problem(orjson.dumps(tool.function.parameters))
        if problem is not None:
            return f"Tool {i} function has invalid 'parameters' schema: {problem}"
    format_problem = format_error(request.response_format, choice)
    if format_problem is not None:
        return format_problem
    max_new = request.max_new_tokens
    if max_new is not None and max_new < 0:
        # sampling_params.py `verify`.
        return f"max_new_tokens must be at least 0, got {max_new}."
    if max_new and max_new > config.context_length:
        return (
            f"max_completion_tokens is too large: {max_new}."
            f"This model supports at most {config.context_length} completion tokens."
        )
    # Simulator limits (SGLang supports these; cascade never sends them).
    if request.n != 1:
        return "The simulator supports n = 1 only."
    if isinstance(request.rid, list) and len(request.rid) != 1:
        return "The simulator supports a single rid only."
    # sampling_params.py `normalize`.
    if len(request.stop_list) > MAX_STOP_COUNT:
        return f"at most {MAX_STOP_COUNT} stop strings are allowed, got {len(request.stop_list)}"
    return None


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        return ""
    return ""


def _expand_images(
    tokens: list[str], images: list[ImageInfo], videos: list[VideoInfo] | None = None
) -> list[str]:
    """Replace each `<|image_pad|>` (`<|video_pad|>`) by that image's (video's) token count of
    pads unique to it."""
    pending = list(images)
    pending_videos = list(videos or ())
    expanded: list[str] = []
    for token in tokens:
        if token == IMAGE_PAD and pending:
            image = pending.pop(0)
            expanded.extend([f"{IMAGE_PAD}#{image.digest}"] * image.tokens)
        elif token == VIDEO_PAD and pending_videos:
            video = pending_videos.pop(0)
            expanded.extend([f"{VIDEO_PAD}#{video.digest}"] * video.tokens)
        else:
            expanded.append(token)
    return expanded


def _prepare(
    config: SimConfig, request: ChatRequest, body: Mapping[str, Any], record: RecordedRequest
) -> _Prepared:
    """Validation, prompt rendering and tokenization (`_validate_request`,
    `_process_messages`, `_apply_jinja_template`, tokenizer_manager `_validate_one_request`)."""
    error = _validation_error(config, request)
    if error is not None:
        raise _Failure(error)
    # Server defaults fill what the request left unset.
    template_kwargs = dict(request.chat_template_kwargs or {})
    template_kwargs.pop("reasoning_effort", None)
    for key, value in config.default_template_kwargs.items():
        template_kwargs.setdefault(key, value)
    thinking = template_kwargs.get("enable_thinking") is not False
    messages = [message.model_dump(exclude_none=True) for message in request.messages]
    # `_process_messages`: the template gets the request's own tools unless tool_choice is
    # "none" (only the named one for a named choice); message-level tools stay in messages.
    raw_tools = body.get("tools")
    template_tools = None
    if request.effective_tools and request.tool_choice != "none" and raw_tools:
        template_tools = list(raw_tools)
        if not isinstance(request.tool_choice, str):
            wanted = request.tool_choice.function.name
            template_tools = [
                tool
                for tool in template_tools
                if (tool.get("function") or {}).get("name") == wanted
            ] or None
    try:
        prompt = render_chat_prompt(
            messages,
            tools=template_tools,
            add_generation_prompt=True,
            enable_thinking=thinking,
            preserve_thinking=bool(template_kwargs.get("preserve_thinking", False)),
            continue_final_message=request.continue_final_message,
        )
    except ValueError as exc:
        # handle_request's `except ValueError`: 400 with type "BadRequest".
        raise _Failure(str(exc), "BadRequest") from exc
    record.prompt = prompt
    record.thinking = thinking
    try:
        images = prompt_images(messages)
        videos = prompt_videos(messages)
    except ImageError as exc:
        raise _Failure(f"Internal server error: {exc}", "InternalServerError", 500) from exc
    if (images or videos) and config.reject_images:
        raise _Failure("This model does not accept image inputs.")
    tokens = _expand_images(tokenize(prompt), images, videos)
    record.prompt_tokens = len(tokens)
    record.image_tokens = sum(image.tokens for image in images)
    record.videos = [
        {"frames": v.frames, "kept": v.kept, "width": v.width, "height": v.height, "fps": v.fps}
        for v in videos
    ]
    parsing, parser_error = _parsing_for(body, config)
    record.in_think = parsing.in_think
    context = config.context_length
    if len(tokens) >= context:
        raise _Failure(
            f"The input ({len(tokens)} tokens) is longer than the model's context length "
            f"({context} tokens)."
        )
    max_new = request.max_new_tokens
    if max_new is not None and max_new + len(tokens) > context:
        raise _Failure(
            "Requested token count exceeds the model's maximum context length of "
            f"{context} tokens. You requested a total of {max_new + len(tokens)} tokens: "
            f"{len(tokens)} tokens from the input messages and {max_new} tokens for the "
            "completion. Please reduce the number of tokens in the input messages or the "
            "completion to fit within the limit."
        )
    last_role = messages[-1].get("role") if messages else None
    return _Prepared(
        request=request,
        record=record,
        prompt_tokens=tokens,
        thinking=thinking,
        parsing=parsing,
        parser_error=parser_error,
        # scheduler.py `init_req_max_new_tokens` caps an unset limit near the context end.
        max_new_tokens=max_new if max_new is not None else context - len(tokens) - 1,
        continuation=request.continue_final_message and last_role == "assistant",
        user_text=_last_user_text(messages),
    )


def _parsing_for(body: Mapping[str, Any], config: SimConfig) -> tuple[RequestParsing, bool]:
    """The parsers' view of the request, and whether SGLang's reasoning parser would fail.

    A continued final assistant message with null content breaks the parser's setup in
    SGLang (`previous_content` None); only when the reasoning parser runs at all.
    """
    defaults = config.default_template_kwargs
    try:
        return RequestParsing.from_request(body, defaults), False
    except ValueError:
        messages = list(body.get("messages") or [])
        messages[-1] = {**messages[-1], "content": ""}
        parsing = RequestParsing.from_request({**body, "messages": messages}, defaults)
        return parsing, parsing.in_think is not None


def _plan(config: SimConfig, prepared: _Prepared, rule: Rule | None) -> Plan:
    if rule is not None:
        text = rule.output
    elif prepared.thinking:
        text = f"{DEFAULT_REASONING}{THINK_END}\n\n{DEFAULT_ANSWER}"
    else:
        text = DEFAULT_ANSWER
    request = prepared.request
    budget = (request.custom_params or {}).get("thinking_budget")
    # grammar_manager.py reads the budget only when it is an int.
    return plan_output(
        text,
        thinking=prepared.thinking,
        thinking_budget=budget if isinstance(budget, int) else None,
        enforce_budget=not config.ignore_thinking_budget,
        shape_answer=_answer_grammar(prepared, rule),
    )


def _answer_grammar(prepared: _Prepared, rule: Rule | None) -> Callable[[str], str] | None:
    """The answer's grammar: a forced tool_choice's, else a JSON response_format's (the two
    together are refused in validation)."""
    tools = _tool_grammar(prepared)
    if tools is not None or (rule is not None and rule.ignore_response_format):
        return tools
    return json_grammar(prepared.request.response_format)


def _tool_grammar(prepared: _Prepared) -> Callable[[str], str] | None:
    """The answer grammar of a forced `tool_choice` ("required" or a named function), or None.

    `_process_messages` builds it from the effective tools whenever tool_choice is not "none"
    (validation already refused a forced choice without tools); "auto" gets no grammar with
    qwen3_coder (no strict tools), and "none" neither: the tools are simply not rendered.
    """
    request = prepared.request
    choice = request.tool_choice
    tools = prepared.parsing.tools
    if choice in ("auto", "none") or not tools:
        return None
    wanted = choice if isinstance(choice, str) else choice.model_dump()
    parallel = request.parallel_tool_calls

    def shape(answer: str) -> str:
        return forced_tool_answer(answer, tools=tools, choice=wanted, parallel=parallel)

    return shape


def _new_tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


async def serve_chat(
    sim: Simulator,
    request: ChatRequest,
    body: Mapping[str, Any],
    receive: Receive,
    send: Send,
    *,
    headers: dict[str, str] | None = None,
) -> None:
    """Handle one chat completion on the raw ASGI channel (body already read; `headers`, the
    request's, lower-cased, are only recorded)."""
    record = sim.new_record(dict(body), request.stream, headers)
    gone = asyncio.Event()
    jobs: list[Job] = []

    async def listen() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                record.client_disconnected = True
                gone.set()
                if jobs:
                    # tokenizer_manager.py: a vanished client aborts its own rid.
                    sim.abort(jobs[0].rid, reason="client_disconnect")
                return

    listener = asyncio.create_task(listen())
    try:
        await _serve(sim, request, body, record, send, gone, jobs)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        record.finished_at = time.monotonic()


async def _send_failure(record: RecordedRequest, send: Send, failure: _Failure) -> None:
    record.status_code = failure.code
    record.error = failure.message
    await send_json(send, error_dict(failure.message, failure.err_type, failure.code), failure.code)


async def _serve(
    sim: Simulator,
    request: ChatRequest,
    body: Mapping[str, Any],
    record: RecordedRequest,
    send: Send,
    gone: asyncio.Event,
    jobs: list[Job],
) -> None:
    try:
        prepared = _prepare(sim.config, request, body, record)
    except _Failure as failure:
        await _send_failure(record, send, failure)
        return
    choice = sim.rulebook.choose(prepared.user_text, continuation=prepared.continuation)
    record.rule_index = choice.index
    fault = choice.fault
    if fault is not None:
        record.fault = fault.kind
        if fault.kind in ("http_500", "http_429", "hang"):
            await _early_fault(sim, fault, record, send, gone)
            return
    given = request.rid[0] if isinstance(request.rid, list) else request.rid
    rid = given or uuid.uuid4().hex
    record.rid = rid
    if rid in sim.jobs:
        await _send_failure(record, send, _Failure(f"Duplicate request ID detected: {rid}"))
        return
    job = Job(rid=rid, record=record)
    sim.jobs[rid] = job
    jobs.append(job)
    sim.stats.add(requests=1)
    try:
        await _generate(sim, prepared, job, choice.rule, fault, send)
    finally:
        if job.running:
            job.running = False
            sim.slots.release()
        sim.jobs.pop(rid, None)


async def _early_fault(
    sim: Simulator, fault: Fault, record: RecordedRequest, send: Send, gone: asyncio.Event
) -> None:
    if fault.kind == "http_500":
        failure = _Failure("Internal server error: simulated failure", "InternalServerError", 500)
        await _send_failure(record, send, failure)
    elif fault.kind == "http_429":
        retry = fault.retry_after if fault.retry_after is not None else 1.0
        record.status_code = 429
        await send_json(
            send,
            error_dict("Too Many Requests", "429", 429),
            429,
            headers=[("Retry-After", f"{retry:g}")],
        )
    else:  # hang: nothing until the client leaves or the simulator stops
        while not gone.is_set() and not sim.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), 0.05)
        if not gone.is_set():
            record.status_code = 503
            await send_json(send, error_dict("Server shutting down", "503", 503), 503)


async def _pause(seconds: float, job: Job) -> None:
    """Sleep unless the job gets aborted first."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(job.abort_event.wait(), seconds)


async def _generate(
    sim: Simulator,
    prepared: _Prepared,
    job: Job,
    rule: Rule | None,
    fault: Fault | None,
    send: Send,
) -> None:
    config = sim.config
    record = prepared.record
    plan = _plan(config, prepared, rule)
    record.budget_forced = plan.budget_forced
    decoder = Decoder(
        plan, max_new_tokens=prepared.max_new_tokens, stops=prepared.request.stop_list
    )
    writer = _Writer(sim, prepared, job, plan, fault, send)
    ttft = rule.ttft if rule is not None and rule.ttft is not None else config.ttft
    tpot = rule.tpot if rule is not None and rule.tpot is not None else config.tpot

    started = await sim.slots.acquire(job)
    if started:
        job.running = True
        record.started_at = time.monotonic()
        writer.cached = sim.cache.prefill(prepared.prompt_tokens)
        writer.prefilled = True
        record.cached_tokens = writer.cached
        sim.stats.add(prompt_tokens=len(prepared.prompt_tokens), cached_tokens=writer.cached)
        await _pause(ttft, job)
    first = True
    while True:
        if not started or job.aborted:
            step = decoder.abort()
        else:
            if not first:
                await _pause(tpot, job)
            step = decoder.abort() if job.aborted else decoder.step()
        if step.finish is None or step.finish.type != "abort":
            sim.stats.token()
            if first:
                record.first_token_at = time.monotonic()
        first = False
        record.completion_tokens = step.completion_tokens
        record.reasoning_tokens = plan.reasoning_tokens(step.completion_tokens)
        record.output = decoder.text
        await writer.step(step)
        if step.finish is not None:
            break
    assert decoder.finished is not None
    record.generation_ended_at = time.monotonic()
    record.matched_stop = decoder.finished.matched
    if started:
        # The scheduler frees the slot and caches prompt + output as generation ends.
        job.running = False
        sim.slots.release()
        emitted = plan.tokens[: min(decoder.count, len(plan.tokens))]
        # The last sampled token (EOS, a stop, the length cap's last) is never fed back.
        sim.cache.finish(prepared.prompt_tokens, emitted, max(decoder.count - 1, 0))
        if decoder.finished.type != "abort":
            sim.mark_warm()
    await writer.finish(step)


class _Writer:
    """Turns decode steps into the HTTP response: one JSON body, or SSE chunks (and faults)."""

    def __init__(
        self,
        sim: Simulator,
        prepared: _Prepared,
        job: Job,
        plan: Plan,
        fault: Fault | None,
        send: Send,
    ) -> None:
        self.sim = sim
        self.prepared = prepared
        self.request = prepared.request
        self.record = prepared.record
        self.plan = plan
        self.fault = fault
        self.send = send
        self.head = ChunkHead(job.rid, int(time.time()), self.request.model)
        self.cached = 0
        # False while the request never left the queue: SGLang then reports no prompt tokens.
        self.prefilled = False
        self.chunks_sent = 0
        self.headers_sent = False
        self.has_tool_calls = False
        options = self.request.stream_options
        self.include_usage = bool(options and options.include_usage)
        self.continuous_usage = bool(options and options.continuous_usage_stats)
        parsing = prepared.parsing
        self.splitter = parsing.splitter()
        self.tool_parsing = tool_parsing_active(parsing.tools, parsing.tool_choice)

    def usage(self, completion_tokens: int) -> dict[str, Any]:
        """usage_processor.py, from this request's meta_info."""
        report = self.sim.config.enable_cache_report
        return usage_dict(
            prompt_tokens=self.record.prompt_tokens if self.prefilled else 0,
            completion_tokens=completion_tokens,
            reasoning_tokens=self.plan.reasoning_tokens(completion_tokens),
            cached_tokens=(self.cached if self.prefilled else 0) if report else None,
            image_tokens=self.record.image_tokens if self.prefilled else 0,
        )

    # ---------------------------------------------------------------- streaming

    async def step(self, step: Step) -> None:
        """Stream one decode step (serving_chat.py `_generate_stream_content`)."""
        if not self.request.stream:
            return
        if not self.headers_sent:
            await self._chunk(light_chunk_dict(self.head, role="assistant", content=""))
            if self.prepared.parser_error:
                # SGLang's reasoning parser raises a TypeError here; the stream breaks.
                raise _Cut()
        deltas: list[Delta] = []
        if step.finish is not None and step.finish.type != "abort":
            deltas = self.splitter.finish(step.text)
        elif step.text:
            deltas = self.splitter.feed(step.text)
        usage = self.usage(step.completion_tokens) if self.continuous_usage else None
        for delta in deltas:
            if delta.reasoning_content:
                await self._chunk(
                    light_chunk_dict(
                        self.head, reasoning_content=delta.reasoning_content, usage=usage
                    )
                )
            if delta.content:
                if self.tool_parsing:
                    await self._chunk(
                        model_chunk_dict(self.head, content=delta.content, usage=usage)
                    )
                else:
                    await self._chunk(
                        light_chunk_dict(self.head, content=delta.content, usage=usage)
                    )
            for call in delta.tool_calls or []:
                self.has_tool_calls = True
                tool_call = tool_call_dict(
                    call_id=_new_tool_call_id() if call.name is not None else None,
                    index=call.index,
                    name=call.name,
                    arguments=call.arguments,
                )
                await self._chunk(model_chunk_dict(self.head, tool_calls=[tool_call], usage=usage))

    async def _chunk(self, payload: Mapping[str, Any]) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            self.record.status_code = 200
            await self.send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        fault = self.fault
        if fault is not None and self.chunks_sent == fault.after_chunks:
            if fault.kind == "cut_stream":
                raise _Cut()
            if fault.kind == "malformed_chunk":
                rid = self.head.rid.encode()
                broken = b'data: {"id":"' + rid + b'","object":"chat.completion.chunk","choices":[{'
                await self.send(
                    {"type": "http.response.body", "body": broken + b"\n\n", "more_body": True}
                )
                self.fault = None
        self.chunks_sent += 1
        await self.send({"type": "http.response.body", "body": _sse(payload), "more_body": True})

    # ---------------------------------------------------------------- the end

    async def finish(self, step: Step) -> None:
        """The finish and usage chunks and `[DONE]`, or the whole non-streaming response."""
        finish = step.finish
        assert finish is not None
        usage = self.usage(step.completion_tokens)
        if self.request.stream:
            reason: str = finish.type
            if self.has_tool_calls and reason == "stop":
                reason = "tool_calls"
            self.record.finish_reason = reason
            await self._chunk(
                light_chunk_dict(self.head, finish_reason=reason, matched_stop=finish.matched)
            )
            if self.include_usage:
                await self._chunk(usage_chunk_dict(self.head, usage))
            await self.send({"type": "http.response.body", "body": _DONE, "more_body": True})
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self._send_whole(finish.type, finish.matched, usage)

    async def _send_whole(
        self, reason: str, matched: int | str | None, usage: dict[str, Any]
    ) -> None:
        """serving_chat.py `_build_chat_response` for n = 1."""
        if self.prepared.parser_error:
            failure = _Failure("Failed to parse reasoning content", "InternalServerError", 500)
            await _send_failure(self.record, self.send, failure)
            return
        split = self.prepared.parsing.split(self.record.output)
        tool_calls = None
        if split.tool_calls:
            tool_calls = [
                tool_call_dict(
                    call_id=_new_tool_call_id(), index=i, name=call.name, arguments=call.arguments
                )
                for i, call in enumerate(split.tool_calls)
            ]
            if reason == "stop":
                reason, matched = "tool_calls", None
        self.record.finish_reason = reason
        self.record.matched_stop = matched
        self.record.status_code = 200
        payload = response_dict(
            rid=self.head.rid,
            created=int(time.time()),
            model=self.request.model,
            content=split.content or "",
            reasoning_content=split.reasoning_content or None,
            tool_calls=tool_calls,
            finish_reason=reason,
            matched_stop=matched,
            usage=usage,
            weight_version=WEIGHT_VERSION,
        )
        body = orjson.dumps(payload)
        fault = self.fault
        if fault is not None and fault.kind == "malformed_chunk":
            body = body[: len(body) // 2]
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        if fault is not None and fault.kind == "cut_stream":
            partial = body[: len(body) // 2]
            await self.send({"type": "http.response.body", "body": partial, "more_body": True})
            raise _Cut()
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
