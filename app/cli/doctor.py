"""`cascade doctor`: check a live deployment and say, per check, PASS / WARN / FAIL and the fix.

It talks to the runtime directly (through `app.runtime.client.SGLangClient`, with the runtime URL
and key from the settings), to Redis, and to the configured tool backends; never to cascade's own
API, so it creates no sessions. Model calls are tiny (a few tokens each, about eight calls) and
carry their own `rid`s; nothing is left behind on the runtime except its prefix cache.

Checks, in order (`CHECKS` names them all):
- runtime: reachable (`/model_info`), healthy (`/health`); SGLang version (`/server_info`) against
  the pinned one; the launch flags cascade relies on, read from `/server_info` under SGLang's
  `ServerArgs` field names: reasoning parser `qwen3`, tool parser `qwen3_coder`, strict thinking,
  cache report, priority scheduling, speculative decoding (and its accept length, `/metrics`
  `sglang:spec_accept_length`); the context length against cascade's largest request.
- behaviour: thinking off for a request that does not say (`reasoning_content` null); strict
  thinking exact (budget 16 gives `reasoning_tokens` 17, `</think>` included); a named
  `tool_choice` yields a call to that tool; the same prompt twice reuses its prefix
  (`cached_tokens` > 0 the second time); a small PNG is accepted and costs the prompt tokens
  cascade's resize arithmetic predicts (within `IMAGE_TOLERANCE`).
- Redis (`CASCADE_REDIS_URL`): reachable, AOF on (`CONFIG GET appendonly`), PING latency.
- tools: SearXNG, Home Assistant and each MCP server (HTTP: it answers; stdio: the command exists)
  when configured; unconfigured ones are left out.

Exit status (`exit_code`): 1 when any check FAILs, else 0. No exception text and no secret is
printed; URLs are shown with credentials masked.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import httpx
import orjson
from redis.exceptions import RedisError

from app.config import Settings
from app.errors import CascadeError
from app.media.config import IMAGE_FACTOR, MediaSettings
from app.media.resize import smart_resize
from app.redact import redact_url
from app.redis_client import redis_client
from app.runtime.body import new_rid
from app.runtime.client import SGLangClient
from app.runtime.launch import PINNED_SGLANG_VERSION, parse_version
from app.runtime.models import Completion, RuntimeRequest
from tools.config import McpServerConfig, ToolSettings

Status = Literal["PASS", "WARN", "FAIL"]

BUDGET = 16
# The image's prompt cost may differ from the estimate by the `<|vision_start|>` and
# `<|vision_end|>` tokens around the pads and by how the text part's rendering tokenizes when the
# content becomes a list of parts; anything beyond this is a different resize on the runtime.
IMAGE_TOLERANCE = 4
IMAGE_SIDE = 256  # a multiple of 32 inside every default pixel range: no resize on either side
REDIS_SLOW_MS = 20.0
REASONING_PARSER = "qwen3"
TOOL_CALL_PARSER = "qwen3_coder"

# The prompts of the model checks; the simulator's tests script their answers by these texts.
THINKING_PROMPT = "cascade doctor: reply with the single word ok."
BUDGET_PROMPT = (
    "cascade doctor budget check: before answering, think through every integer from 1 to 200 "
    "one by one, then answer with the word done."
)
TOOL_PROMPT = "cascade doctor tool check: call the tool."
TOOL_NAME = "doctor_ping"
PREFIX_PROMPT = "cascade doctor prefix check. " + "The same stable words every time. " * 40
IMAGE_PROMPT = "cascade doctor image check: what colour is this?"

TOOL_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Answers pong. Used only to check that tool_choice is honoured.",
        "parameters": {
            "type": "object",
            "properties": {"note": {"type": "string"}},
            "required": [],
        },
    },
}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    check: str
    status: Status
    detail: str
    fix: str = ""


CHECKS = (
    "runtime-reachable",
    "runtime-version",
    "reasoning-parser",
    "tool-parser",
    "strict-thinking",
    "cache-report",
    "priority-scheduling",
    "speculative-decoding",
    "context-length",
    "thinking-default",
    "thinking-budget",
    "tool-choice",
    "prefix-reuse",
    "image",
    "redis",
    "redis-persistence",
    "redis-latency",
    "searxng",
    "home-assistant",
    "mcp:<name>",
)

RELAUNCH = "relaunch the runtime with `cascade runtime --print`'s command"


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed, else 0."""
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def render_table(checks: list[Check]) -> str:
    """`STATUS  check-name  detail — fix`, one line per check."""
    width = max((len(c.check) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.status:4s}  {c.check:{width}s}  {c.detail}"
        if c.fix:
            line += f" — {c.fix}"
        lines.append(line)
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    """A JSON list of `{check, status, detail, fix}`."""
    return orjson.dumps([asdict(c) for c in checks], option=orjson.OPT_INDENT_2).decode()


def _why(exc: BaseException) -> str:
    """What went wrong, without upstream text: cascade's own message, or the exception type."""
    if isinstance(exc, CascadeError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return type(exc).__name__


# ----------------------------------------------------------------------------- judgements


def judge_flags(info: dict[str, Any], accept_length: float | None) -> list[Check]:
    """The launch flags cascade relies on, from `/server_info` (SGLang's `ServerArgs` names)."""
    out: list[Check] = []
    version = str(info.get("version") or "unknown")
    try:
        same = parse_version(version) == parse_version(PINNED_SGLANG_VERSION)
    except ValueError:
        same = False
    if same:
        out.append(Check("runtime-version", "PASS", f"SGLang {version}"))
    else:
        out.append(
            Check(
                "runtime-version",
                "WARN",
                f"SGLang {version}; cascade pins {PINNED_SGLANG_VERSION}",
                f"use the pinned image, or launch with `cascade runtime --sglang-version "
                f"{version} --print`'s command",
            )
        )
    for name, field, want in (
        ("reasoning-parser", "reasoning_parser", REASONING_PARSER),
        ("tool-parser", "tool_call_parser", TOOL_CALL_PARSER),
    ):
        got = info.get(field)
        if got == want:
            out.append(Check(name, "PASS", f"{field} {got}"))
        else:
            flag = "--" + field.replace("_", "-")
            out.append(
                Check(
                    name,
                    "FAIL",
                    f"{field} is {got!r}, cascade needs {want!r}",
                    f"{RELAUNCH} ({flag} {want})",
                )
            )
    out.append(
        _flag(
            info,
            "strict-thinking",
            "enable_strict_thinking",
            "thinking budgets are not enforced by the runtime; cascade's guard cuts reasoning",
            f"{RELAUNCH} (--enable-strict-thinking)",
        )
    )
    out.append(
        _flag(
            info,
            "cache-report",
            "enable_cache_report",
            "no cached_tokens in usage: prefix reuse cannot be measured",
            f"{RELAUNCH} (--enable-cache-report)",
        )
    )
    out.append(
        _flag(
            info,
            "priority-scheduling",
            "enable_priority_scheduling",
            "batch items are not queued behind chat requests",
            f"{RELAUNCH} (--enable-priority-scheduling)",
        )
    )
    algorithm = info.get("speculative_algorithm")
    if algorithm:
        accept = "unknown" if accept_length is None else f"{accept_length:.2f}"
        out.append(Check("speculative-decoding", "PASS", f"{algorithm}, accept length {accept}"))
    else:
        out.append(
            Check(
                "speculative-decoding",
                "WARN",
                "speculative decoding is off (slower decoding)",
                f"{RELAUNCH} (--speculative-algorithm NEXTN)",
            )
        )
    return out


def _flag(info: dict[str, Any], name: str, field: str, consequence: str, fix: str) -> Check:
    if info.get(field) is True:
        return Check(name, "PASS", f"{field} on")
    return Check(name, "WARN", f"{field} off: {consequence}", fix)


def judge_context(context_length: int | None, settings: Settings) -> Check:
    """The runtime's context window against the most completion tokens cascade asks for."""
    need = settings.thinking_budget_max + settings.budget_margin + settings.answer_tokens_default
    if context_length is None:
        return Check("context-length", "WARN", "the runtime does not report its context length")
    detail = f"{context_length} tokens; cascade asks up to {need} completion tokens"
    if context_length > need:
        return Check("context-length", "PASS", detail)
    return Check(
        "context-length",
        "WARN",
        detail + " (a maximal turn would not fit)",
        "lower CASCADE_THINKING_BUDGET_MAX / CASCADE_ANSWER_TOKENS_DEFAULT, or launch with a "
        "larger --context-length",
    )


def judge_budget(done: Completion) -> Check:
    """Strict thinking is exact when a budget of `BUDGET` gives `BUDGET + 1` reasoning tokens."""
    used = done.usage.reasoning_tokens
    want = BUDGET + 1
    if used == want:
        return Check("thinking-budget", "PASS", f"budget {BUDGET} → reasoning_tokens {used}")
    if used > want:
        return Check(
            "thinking-budget",
            "WARN",
            f"budget {BUDGET} → reasoning_tokens {used}: budgets not enforced by the runtime; "
            "cascade's guard will cut reasoning",
            "launch with --enable-strict-thinking (sglang #25536 reports it can still be "
            "ignored; the guard covers that)",
        )
    return Check(
        "thinking-budget",
        "WARN",
        f"inconclusive: reasoning ended after {used} tokens, before the budget of {BUDGET}",
        "run the doctor again (the model answered without using its budget)",
    )


def judge_tool_choice(done: Completion) -> Check:
    names = [call.function.name for call in done.tool_calls]
    if names and names[0] == TOOL_NAME:
        return Check("tool-choice", "PASS", f"named tool_choice → a call to {TOOL_NAME}")
    got = ", ".join(names) if names else "no tool call"
    return Check(
        "tool-choice",
        "FAIL",
        f"named tool_choice {TOOL_NAME} → {got}",
        f"{RELAUNCH} (--tool-call-parser {TOOL_CALL_PARSER}, SGLang {PINNED_SGLANG_VERSION})",
    )


def judge_prefix(first: Completion, second: Completion, cache_report: bool) -> Check:
    numbers = (
        f"prompt {second.usage.prompt_tokens} tokens, cached {first.usage.cached_tokens} then "
        f"{second.usage.cached_tokens}"
    )
    if second.usage.cached_tokens > 0:
        return Check("prefix-reuse", "PASS", numbers)
    if not cache_report:
        return Check(
            "prefix-reuse",
            "WARN",
            "not measurable: the runtime does not report cached tokens",
            f"{RELAUNCH} (--enable-cache-report)",
        )
    return Check(
        "prefix-reuse",
        "WARN",
        numbers + ": the repeated prompt was not reused",
        "check the runtime's radix cache (no --disable-radix-cache; mamba cache strategy "
        "extra_buffer with --page-size 64)",
    )


def image_estimate(media: MediaSettings) -> int:
    """Visual tokens cascade expects the doctor's `IMAGE_SIDE`² image to cost."""
    h, w = smart_resize(
        IMAGE_SIDE,
        IMAGE_SIDE,
        factor=IMAGE_FACTOR,
        min_pixels=media.image_min_pixels,
        max_pixels=media.image_max_pixels,
    )
    return (h // IMAGE_FACTOR) * (w // IMAGE_FACTOR)


def judge_image(delta: int, estimate: int) -> Check:
    detail = f"accepted; +{delta} prompt tokens, cascade estimates {estimate}"
    if abs(delta - estimate) <= IMAGE_TOLERANCE:
        return Check("image", "PASS", detail)
    return Check(
        "image",
        "WARN",
        detail + f" (off by more than {IMAGE_TOLERANCE})",
        "the runtime resizes images differently: align CASCADE_IMAGE_MIN_PIXELS / "
        "CASCADE_IMAGE_MAX_PIXELS with the runtime's --mm-process-config",
    )


def tiny_png() -> str:
    """A `IMAGE_SIDE`² one-colour PNG as a `data:` URI (a few hundred bytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def spec_accept_length(metrics: str) -> float | None:
    """`sglang:spec_accept_length` from Prometheus text (the first sample), or None."""
    match = re.search(r"^sglang:spec_accept_length(?:\{[^}]*\})?\s+(\S+)", metrics, re.M)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


# ----------------------------------------------------------------------------- the runtime


class _RuntimeChecks:
    def __init__(self, settings: Settings, media: MediaSettings, timeout: float) -> None:
        self.settings = settings
        self.media = media
        self.timeout = timeout
        self.client = SGLangClient(settings)

    async def complete(self, req: RuntimeRequest) -> Completion:
        async with asyncio.timeout(self.timeout):
            return await self.client.complete(req, rid=new_rid("doctor"))

    async def run(self) -> list[Check]:
        try:
            return await self._run()
        finally:
            await self.client.aclose()

    async def _run(self) -> list[Check]:
        where = self.settings.runtime_display
        health = await self.client.health()
        if not health.reachable:
            return [
                Check(
                    "runtime-reachable",
                    "FAIL",
                    f"{where}: {health.detail}",
                    "start it (`cascade runtime` or `docker compose up sglang`) or set "
                    "CASCADE_RUNTIME_URL (and CASCADE_RUNTIME_API_KEY)",
                )
            ]
        out = [
            Check("runtime-reachable", "PASS", f"{where}, model {health.model}")
            if health.healthy
            else Check(
                "runtime-reachable",
                "WARN",
                f"{where}: {health.detail}",
                "wait: the first generation after a launch can take minutes",
            )
        ]
        info = await self.client.server_info()
        metrics = await self.client.diagnose("/metrics", call_timeout=10.0)
        accept = (
            spec_accept_length(metrics[1].decode("utf-8", "replace"))
            if metrics is not None and metrics[0] == 200
            else None
        )
        if info is None:
            out.append(
                Check(
                    "runtime-version",
                    "WARN",
                    "/server_info unreadable: launch flags not checked",
                    "check CASCADE_RUNTIME_API_KEY",
                )
            )
            info = {}
        else:
            out += judge_flags(info, accept)
        context = info.get("context_length")
        out.append(judge_context(context if isinstance(context, int) else None, self.settings))
        for probe in (
            self._thinking_default,
            self._budget,
            self._tool_choice,
            lambda: self._prefix(info.get("enable_cache_report") is True),
            self._image,
        ):
            out.append(await probe())
        return out

    async def _thinking_default(self) -> Check:
        # Sent as is: cascade's own bodies always carry chat_template_kwargs.
        model = await self._model()
        if model is None:
            return Check("thinking-default", "FAIL", "the runtime names no model")
        payload = {
            "model": model,
            "messages": [{"role": "user", "content": THINKING_PROMPT}],
            "max_completion_tokens": 8,
            "rid": new_rid("doctor"),
        }
        answer = await self.client.diagnose(
            "/v1/chat/completions", payload, call_timeout=self.timeout
        )
        if answer is None or answer[0] != 200:
            status = "no answer" if answer is None else f"HTTP {answer[0]}"
            return Check("thinking-default", "FAIL", f"plain request failed ({status})")
        try:
            message = orjson.loads(answer[1])["choices"][0]["message"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return Check("thinking-default", "FAIL", "malformed response")
        if message.get("reasoning_content") is None:
            return Check(
                "thinking-default", "PASS", "a request that does not say gets no reasoning"
            )
        return Check(
            "thinking-default",
            "WARN",
            "thinking is on for requests that do not say (direct callers get reasoning; cascade "
            "always sends enable_thinking)",
            f"{RELAUNCH} (--default-chat-template-kwargs '{{\"enable_thinking\": false}}', "
            "SGLang 0.5.23+)",
        )

    async def _model(self) -> str | None:
        try:
            return await self.client.model_name()
        except CascadeError:
            return None

    async def _budget(self) -> Check:
        req = RuntimeRequest(
            messages=[{"role": "user", "content": BUDGET_PROMPT}],
            thinking=True,
            thinking_budget=BUDGET,
            max_answer_tokens=8,
        )
        try:
            return judge_budget(await self.complete(req))
        except (CascadeError, TimeoutError) as exc:
            return Check("thinking-budget", "FAIL", f"request failed: {_why(exc)}")

    async def _tool_choice(self) -> Check:
        req = RuntimeRequest(
            messages=[{"role": "user", "content": TOOL_PROMPT}],
            tools=[TOOL_SCHEMA],
            tool_choice={"type": "function", "function": {"name": TOOL_NAME}},
            max_answer_tokens=64,
        )
        try:
            return judge_tool_choice(await self.complete(req))
        except (CascadeError, TimeoutError) as exc:
            return Check("tool-choice", "FAIL", f"request failed: {_why(exc)}")

    async def _prefix(self, cache_report: bool) -> Check:
        req = RuntimeRequest(
            messages=[{"role": "user", "content": PREFIX_PROMPT}], max_answer_tokens=4
        )
        try:
            first = await self.complete(req)
            second = await self.complete(req)
        except (CascadeError, TimeoutError) as exc:
            return Check("prefix-reuse", "FAIL", f"request failed: {_why(exc)}")
        return judge_prefix(first, second, cache_report)

    async def _image(self) -> Check:
        text = RuntimeRequest(
            messages=[{"role": "user", "content": [{"type": "text", "text": IMAGE_PROMPT}]}],
            max_answer_tokens=4,
        )
        image = RuntimeRequest(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": tiny_png()}},
                        {"type": "text", "text": IMAGE_PROMPT},
                    ],
                }
            ],
            max_answer_tokens=4,
        )
        try:
            without = await self.complete(text)
        except (CascadeError, TimeoutError) as exc:
            return Check("image", "FAIL", f"text-only request failed: {_why(exc)}")
        try:
            with_image = await self.complete(image)
        except (CascadeError, TimeoutError) as exc:
            return Check(
                "image",
                "FAIL",
                f"a {IMAGE_SIDE}x{IMAGE_SIDE} PNG was rejected: {_why(exc)}",
                "serve the vision checkpoint (natfii/Qwen3.6-27B-VLM-Cascade) with multimodal on",
            )
        delta = with_image.usage.prompt_tokens - without.usage.prompt_tokens
        return judge_image(delta, image_estimate(self.media))


# ----------------------------------------------------------------------------- Redis, tools


async def redis_checks(url: str | None) -> list[Check]:
    """Reachable, AOF on, PING latency; nothing when `cascade up` runs its own Redis."""
    if url is None:
        return []
    shown = redact_url(url)
    client = redis_client(url)
    try:
        try:
            async with asyncio.timeout(5):
                await client.ping()
        except (RedisError, OSError, TimeoutError):
            return [
                Check(
                    "redis",
                    "FAIL",
                    f"{shown} does not answer",
                    "start Redis or fix CASCADE_REDIS_URL",
                )
            ]
        out = [Check("redis", "PASS", shown)]
        try:
            config: dict[Any, Any] = await client.config_get("appendonly")
            aof = config.get("appendonly") or config.get(b"appendonly")
            aof_text = aof.decode() if isinstance(aof, bytes) else aof
        except RedisError:
            aof_text = None
        if aof_text == "yes":
            out.append(Check("redis-persistence", "PASS", "appendonly yes"))
        elif aof_text is None:
            out.append(
                Check(
                    "redis-persistence",
                    "WARN",
                    "CONFIG GET appendonly refused: persistence unknown",
                    "make sure the server runs with appendonly yes",
                )
            )
        else:
            out.append(
                Check(
                    "redis-persistence",
                    "WARN",
                    f"appendonly {aof_text}: sessions and batches since the last snapshot are "
                    "lost when Redis restarts",
                    "set `appendonly yes` in redis.conf (now: redis-cli CONFIG SET appendonly yes)",
                )
            )
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            await client.ping()
            timings.append((time.perf_counter() - start) * 1000)
        median = statistics.median(timings)
        if median <= REDIS_SLOW_MS:
            out.append(Check("redis-latency", "PASS", f"PING {median:.1f} ms"))
        else:
            out.append(
                Check(
                    "redis-latency",
                    "WARN",
                    f"PING {median:.1f} ms (over {REDIS_SLOW_MS:.0f} ms)",
                    "run Redis next to cascade (same host or LAN)",
                )
            )
        return out
    finally:
        await client.aclose()


async def _reaches(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int | None:
    """The HTTP status `url` answers with, or None when nothing answered."""
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError:
        return None
    return response.status_code


async def tool_checks(tools: ToolSettings) -> list[Check]:
    """Each configured tool backend answers; unconfigured ones give no line."""
    out: list[Check] = []
    async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as http:
        if tools.searxng_base is not None:
            shown = redact_url(tools.searxng_base)
            status = await _reaches(http, tools.searxng_base + "/healthz", {})
            if status is None or status >= 500:
                out.append(
                    Check(
                        "searxng",
                        "WARN",
                        f"{shown} not reachable" if status is None else f"{shown}: HTTP {status}",
                        "start SearXNG or fix CASCADE_SEARXNG_URL (web_search fails until then)",
                    )
                )
            else:
                out.append(Check("searxng", "PASS", shown))
        if tools.home_assistant_base is not None and tools.home_assistant_token is not None:
            shown = redact_url(tools.home_assistant_base)
            token = tools.home_assistant_token.get_secret_value()
            status = await _reaches(
                http, tools.home_assistant_base + "/api/", {"authorization": f"Bearer {token}"}
            )
            if status == 200:
                out.append(Check("home-assistant", "PASS", shown))
            elif status in (401, 403):
                out.append(
                    Check(
                        "home-assistant",
                        "WARN",
                        f"{shown} refused the token",
                        "create a new long-lived token for CASCADE_HOME_ASSISTANT_TOKEN",
                    )
                )
            else:
                out.append(
                    Check(
                        "home-assistant",
                        "WARN",
                        f"{shown} not reachable" if status is None else f"{shown}: HTTP {status}",
                        "start Home Assistant or fix CASCADE_HOME_ASSISTANT_URL",
                    )
                )
        for server in tools.mcp_servers:
            out.append(await _mcp_check(http, server))
    return out


async def _mcp_check(http: httpx.AsyncClient, server: McpServerConfig) -> Check:
    name = f"mcp:{server.name}"
    if server.url is not None:
        shown = redact_url(str(server.url))
        # Any HTTP answer (an MCP endpoint may well say 405 to a GET) means the server is up.
        status = await _reaches(http, str(server.url), {})
        if status is None:
            return Check(
                name, "WARN", f"{shown} not reachable", "start it or fix CASCADE_MCP_SERVERS"
            )
        return Check(name, "PASS", f"{shown} answers")
    command = server.command or ""
    # A bare name is looked up on PATH; a path must be an executable file.
    if shutil.which(command) is None:
        return Check(
            name,
            "WARN",
            f"command {command!r} not found",
            "install it or fix its command in CASCADE_MCP_SERVERS",
        )
    return Check(name, "PASS", f"command {command!r} found")


# ----------------------------------------------------------------------------- entry


async def run_doctor(
    settings: Settings,
    tools: ToolSettings,
    media: MediaSettings,
    *,
    call_timeout: float = 180.0,
) -> list[Check]:
    """Every check, in `CHECKS` order; `call_timeout` bounds each model call (a cold runtime's first
    generation can take over a minute)."""
    parts: list[Callable[[], Awaitable[list[Check]]]] = [
        lambda: _RuntimeChecks(settings, media, call_timeout).run(),
        lambda: redis_checks(settings.redis_url),
        lambda: tool_checks(tools),
    ]
    out: list[Check] = []
    for part in parts:
        out += await part()
    return out
