"""The simulated SGLang 0.5.23 runtime: its state, its control API and its ASGI app.

`Simulator` owns the config, the scripted rules, the prefix cache, the live requests (by rid)
and the records of every chat request it received. `Simulator.app` is the ASGI app (FastAPI
behind SGLang's API-key check); `/v1/chat/completions` itself is served by
`tests.sglang_sim.chat`. The package docstring lists what is simulated and what is not.

Threading: the app runs on one event loop (uvicorn's). Config, rules, records and aborted
rids may be read or changed from other threads (the test's); live-request state is touched
only on the loop.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tests.sglang_sim.chat import WEIGHT_VERSION, send_json, serve_chat
from tests.sglang_sim.hybrid_cache import HybridRadixCache
from tests.sglang_sim.protocol import AbortRequest, ChatRequest, error_dict
from tests.sglang_sim.script import Rule, SimConfig
from tests.sglang_sim.state import Job, RecordedRequest, RuleBook, Slots, Stats
from tests.sglang_sim.tokens import RadixCache

__all__ = ["RecordedRequest", "Simulator"]

# Unconfirmed: the Qwen3.5/3.6 architecture as its HF config names it.
MODEL_TYPE = "qwen3_5"
ARCHITECTURES = ["Qwen3_5ForConditionalGeneration"]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Simulator:
    """A scripted SGLang 0.5.23 runtime; serve `app` with uvicorn (see `.testing`).

    Control (any thread): `config`, `update_config(**changes)`, `add_rule`, `set_rules`,
    `reset()`; records: `requests` (the live `RecordedRequest` objects, in arrival order) and
    `aborted_rids` (every rid aborted, by `/abort_request` or a client disconnect).
    """

    def __init__(self, config: SimConfig | None = None, rules: Sequence[Rule] = ()) -> None:
        self._lock = threading.Lock()
        self._config = config or SimConfig()
        self.rulebook = RuleBook(rules)
        self.cache = _prefix_cache(self._config)
        self.stats = Stats()
        self.jobs: dict[str, Job] = {}
        self.slots = Slots(lambda: self._config.max_running)
        self.closing = False
        self._records: list[RecordedRequest] = []
        self._aborted: list[str] = []
        self._warm = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = time.time()
        self.fastapi = self._build_app()
        self.app: ASGIApp = _with_api_key(self.fastapi, self)

    # ------------------------------------------------------------------ control (any thread)

    @property
    def config(self) -> SimConfig:
        return self._config

    def update_config(self, **changes: Any) -> SimConfig:
        """Change config fields (validated as a whole); affects requests arriving afterwards,
        and a higher `max_running` starts queued requests at once."""
        with self._lock:
            merged = SimConfig.model_validate({**self._config.model_dump(), **changes})
            if _cache_settings(merged) != _cache_settings(self._config):
                self.cache = _prefix_cache(merged)
            self._config = merged
        self._in_loop(self.slots.dispatch)
        return merged

    def add_rule(self, rule: Rule) -> None:
        """Append a rule (rules are tried in order; the first match wins)."""
        self.rulebook.add(rule)

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """Replace every rule (use and fault counters start afresh)."""
        self.rulebook.replace(rules)

    def reset(self) -> None:
        """Forget rules, records, aborted rids, the prefix cache, counters and warm-up."""
        self.rulebook.replace([])
        self.cache.reset()
        self.stats.reset()
        with self._lock:
            self._records = []
            self._aborted = []
            self._warm = False

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    @property
    def aborted_rids(self) -> list[str]:
        with self._lock:
            return list(self._aborted)

    def close(self) -> None:
        """Let go of every queued, hanging or generating request so the server can stop."""
        self.closing = True
        self._in_loop(self._abort_everything)

    # ------------------------------------------------------------------ used by chat (loop)

    def new_record(
        self, body: Any, stream: bool, *, traceparent: str | None = None
    ) -> RecordedRequest:
        self._loop = asyncio.get_running_loop()
        record = RecordedRequest(
            body=body, stream=stream, received_at=time.monotonic(), traceparent=traceparent
        )
        with self._lock:
            self._records.append(record)
        return record

    def mark_warm(self) -> None:
        """A generation completed (what SGLang's warm-up request establishes)."""
        self._warm = True

    def abort(self, rid: str, abort_all: bool = False, *, reason: str = "abort_request") -> None:
        """SGLang's abort: the tokenizer manager forwards it only if `rid` names a live request
        exactly; the scheduler then aborts every request whose rid starts with it."""
        if not abort_all and not rid:
            return
        if not abort_all:
            job = self.jobs.get(rid)
            if job is None or job.abort_sent:
                return
            job.abort_sent = True
        for other in list(self.jobs.values()):
            if other.aborted or not (abort_all or other.rid.startswith(rid)):
                continue
            other.abort_event.set()
            self.slots.drop(other)
            other.record.aborted = True
            other.record.abort_reason = reason
            self.stats.add(aborted=1)
            with self._lock:
                self._aborted.append(other.rid)

    def _abort_everything(self) -> None:
        for job in list(self.jobs.values()):
            job.abort_event.set()
            self.slots.drop(job)

    def _in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn)

    # ------------------------------------------------------------------ the app

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        sim = self

        @app.exception_handler(RequestValidationError)
        async def _invalid(request: Request, exc: RequestValidationError) -> Response:
            # http_server.py: FastAPI's 422 becomes a 400 ErrorResponse.
            exc_str, errors_str = str(exc), str(exc.errors())
            message = f"{exc_str} {errors_str}" if errors_str and errors_str != exc_str else exc_str
            return _json(error_dict(message, "Bad Request", 400), 400)

        async def _require_json(request: Request) -> None:
            # http_server.py `validate_json_request`.
            content_type = request.headers.get("content-type", "").lower()
            if content_type.split(";", 1)[0] != "application/json":
                raise RequestValidationError(
                    errors=[
                        {
                            "loc": ["header", "content-type"],
                            "msg": "Unsupported Media Type: Only 'application/json' is allowed",
                            "type": "value_error",
                        }
                    ]
                )

        @app.post("/v1/chat/completions", dependencies=[Depends(_require_json)])
        async def chat_completions(body: ChatRequest, request: Request) -> Response:
            raw = await request.json()
            trace = request.headers.get("traceparent")
            return _RawCall(
                lambda receive, send: serve_chat(sim, body, raw, receive, send, traceparent=trace)
            )

        @app.post("/abort_request")
        async def abort_request(body: AbortRequest) -> Response:
            sim.abort(body.rid, body.abort_all)
            return Response(status_code=200)

        @app.api_route("/flush_cache", methods=["GET", "POST"])
        async def flush_cache() -> Response:
            # The scheduler refuses while requests are running or waiting.
            if sim.jobs:
                return Response("Flush cache failed.\n", status_code=400)
            sim.cache.reset()
            return Response(
                "Cache flushed.\nPlease check backend logs for more details. (When there are "
                "running or waiting requests, the operation will not be performed.)\n"
            )

        @app.get("/health")
        @app.get("/health_generate")
        async def health() -> Response:
            if sim.config.health_check_latency:
                await asyncio.sleep(sim.config.health_check_latency)
            return Response(status_code=200 if sim._is_up() else 503)

        @app.get("/ready")
        async def ready() -> Response:
            return Response(status_code=200 if sim._is_up() else 503)

        @app.get("/model_info")
        async def model_info() -> Response:
            return _json(sim._model_info())

        @app.get("/server_info")
        async def server_info() -> Response:
            return _json(sim._server_info())

        @app.get("/v1/models")
        async def models() -> Response:
            return _json({"object": "list", "data": [sim._model_card()]})

        @app.get("/v1/models/{model:path}")
        async def model(model: str) -> Response:
            if model != sim.config.model_name:
                error = {
                    "message": f"The model '{model}' does not exist",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
                return _json({"error": error}, 404)
            return _json(sim._model_card())

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(sim._metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

        @app.post("/sim/rules")
        async def sim_rules(request: Request) -> Response:
            try:
                items = await request.json()
                if not isinstance(items, list):
                    raise TypeError("expected a JSON list of rules")
                rules = [Rule.model_validate(item) for item in items]
            except (ValidationError, TypeError, ValueError) as exc:
                return _json({"error": str(exc)}, 400)
            sim.set_rules(rules)
            return _json({"rules": len(rules)})

        @app.post("/sim/config")
        async def sim_config(request: Request) -> Response:
            try:
                changes = await request.json()
                if not isinstance(changes, dict):
                    raise TypeError("expected a JSON object")
                config = sim.update_config(**changes)
            except (ValidationError, TypeError, ValueError) as exc:
                return _json({"error": str(exc)}, 400)
            return _json(config.model_dump())

        @app.get("/sim/requests")
        async def sim_requests() -> Response:
            return _json(
                {
                    "requests": [record.model_dump() for record in sim.requests],
                    "aborted_rids": sim.aborted_rids,
                }
            )

        @app.post("/sim/reset")
        async def sim_reset() -> Response:
            sim.reset()
            return Response(status_code=200)

        return app

    def _is_up(self) -> bool:
        return self._warm or not self.config.healthy_after_first_generation

    def _model_card(self) -> dict[str, Any]:
        """protocol.py `ModelCard`."""
        name = self.config.model_name
        return {
            "id": name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "sglang",
            "root": name,
            "parent": None,
            "max_model_len": self.config.context_length,
        }

    def _model_info(self) -> dict[str, Any]:
        """http_server.py `model_info`."""
        config = self.config
        info: dict[str, Any] = {
            "model_path": config.model_path,
            "served_model_name": config.model_name,
            "tokenizer_path": config.model_path,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": WEIGHT_VERSION,
            "load_format": "auto",
            "reasoning_parser": config.reasoning_parser,
            "tool_call_parser": config.tool_call_parser,
            "disaggregation_mode": "null",
            "has_image_understanding": not config.reject_images,
            "has_audio_understanding": False,
            "model_type": MODEL_TYPE,
            "architectures": ARCHITECTURES,
        }
        if not config.model_info_served_model_name:
            del info["served_model_name"]  # SGLang 0.5.15's /model_info has no such field
        return info

    def _server_info(self) -> dict[str, Any]:
        """A few of the fields of http_server.py `server_info`: the server args under
        `ServerArgs`' own field names (`build_server_info`), plus version and live state."""
        config = self.config
        spec = config.speculative_algorithm is not None
        return {
            "model_path": config.model_path,
            "tokenizer_path": config.model_path,
            "served_model_name": config.model_name,
            "context_length": config.context_length,
            "max_running_requests": config.max_running,
            "page_size": config.cache_page_size,
            "reasoning_parser": config.reasoning_parser,
            "tool_call_parser": config.tool_call_parser,
            "enable_strict_thinking": config.enable_strict_thinking,
            "default_chat_template_kwargs": config.default_template_kwargs or None,
            "enable_cache_report": config.enable_cache_report,
            "enable_metrics": True,
            "enable_priority_scheduling": config.enable_priority_scheduling,
            "speculative_algorithm": config.speculative_algorithm,
            "speculative_num_steps": 3 if spec else None,
            "speculative_eagle_topk": 1 if spec else None,
            "speculative_num_draft_tokens": 4 if spec else None,
            "startup_time": self._started,
            "internal_states": [
                {
                    "effective_max_running_requests_per_dp": config.max_running,
                    "last_gen_throughput": self.stats.throughput(),
                    **({"avg_spec_accept_length": config.spec_accept_length} if spec else {}),
                }
            ],
            "version": config.version,
            "frontend": "python",
        }

    def _token_usage(self) -> float:
        """The share of the KV pool (`max_total_tokens`) the running requests hold: their
        prompt and the tokens generated so far (the cached tree's unlocked pages do not count,
        as SGLang's evictable tokens do not)."""
        held = sum(
            job.record.prompt_tokens + job.record.completion_tokens
            for job in list(self.jobs.values())
            if job.running
        )
        return min(1.0, held / self.config.max_total_tokens)

    def _metrics(self) -> str:
        """Prometheus text with SGLang's metric names and labels (metrics_collector.py)."""
        name = self.config.model_name
        scheduler = {
            "engine_type": "unified",
            "model_name": name,
            "moe_ep_rank": "0",
            "pp_rank": "0",
            "tp_rank": "0",
        }
        if self.config.enable_priority_scheduling:
            # The totals of the queue gauges sit under priority="" (`_log_gauge_queue_count`);
            # the simulator ignores priority, so it has no per-priority breakdown to add.
            scheduler["priority"] = ""
        tokenizer = {"engine_type": "unified", "model_name": name}
        stats = self.stats
        lines: list[str] = []

        def family(
            metric: str, kind: str, doc: str, sample: str, labels: dict[str, str], value: float
        ) -> None:
            rendered = ",".join(f'{key}="{val}"' for key, val in sorted(labels.items()))
            lines.extend(
                [
                    f"# HELP {metric} {doc}",
                    f"# TYPE {metric} {kind}",
                    f"{sample}{{{rendered}}} {float(value)!r}",
                ]
            )

        def gauge(metric: str, doc: str, value: float) -> None:
            family(metric, "gauge", doc, metric, scheduler, value)

        def counter(metric: str, doc: str, value: float, **extra: str) -> None:
            family(metric, "counter", doc, f"{metric}_total", {**tokenizer, **extra}, value)

        gauge("sglang:num_running_reqs", "The number of running requests.", self.slots.running)
        gauge(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            self.slots.waiting,
        )
        gauge("sglang:gen_throughput", "The generation throughput (token/s).", stats.throughput())
        gauge("sglang:token_usage", "The token usage.", self._token_usage())
        gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", stats.hit_rate())
        gauge(
            "sglang:spec_accept_length",
            "Mean acceptance length of speculative decoding (accepted drafts + bonus token per "
            "forward).",
            self.config.spec_accept_length if self.config.speculative_algorithm else 0.0,
        )
        counter("sglang:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens)
        counter(
            "sglang:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens,
        )
        counter(
            "sglang:cached_tokens",
            "Number of cached prompt tokens by source (device/host/storage).",
            stats.cached_tokens,
            cache_source="device",
        )
        counter("sglang:num_requests", "Number of requests processed.", stats.requests)
        counter("sglang:num_aborted_requests", "Number of requests aborted.", stats.aborted)
        return "\n".join(lines) + "\n"


def _cache_settings(config: SimConfig) -> tuple[bool, int, int]:
    return config.mamba_cache, config.cache_page_size, config.mamba_track_interval


def _prefix_cache(config: SimConfig) -> RadixCache | HybridRadixCache:
    """The prefix cache the launch flags select (see `SimConfig.mamba_cache`)."""
    if config.mamba_cache:
        return HybridRadixCache(config.cache_page_size, config.mamba_track_interval)
    return RadixCache(config.cache_page_size)


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


class _RawCall(Response):
    """A response that takes over the raw ASGI channel: chat completions need to hold their
    headers until the first token and to hear the client going away."""

    def __init__(self, run: Callable[[Receive, Send], Awaitable[None]]) -> None:
        super().__init__()
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._run(receive, send)
        if self.background is not None:
            await self.background()


def _with_api_key(app: ASGIApp, sim: Simulator) -> ASGIApp:
    """SGLang's `--api-key` middleware (utils/auth.py `decide_request_auth`)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        key = sim.config.api_key
        if scope["type"] == "http" and key and scope.get("method") != "OPTIONS":
            path: str = scope.get("path", "")
            exempt = path.startswith(("/health", "/ready", "/metrics", "/sim/"))
            if not exempt and not _bearer_matches(scope, key):
                await send_json(send, {"error": "Unauthorized"}, 401)
                return
        await app(scope, receive, send)

    return guarded


def _bearer_matches(scope: Scope, key: str) -> bool:
    header = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            header = value.decode("latin-1")
            break
    parts = header.split(" ", 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return False
    return secrets.compare_digest(parts[1].encode(), key.encode())
