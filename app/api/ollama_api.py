"""`/api/*`: the Ollama API as a door on the turn engine, for Ollama clients (Home Assistant's
Ollama integration, the `ollama` Python client, ...).

`POST /api/chat` and `POST /api/generate` translate their request to a `ChatRequest`
(`app.agent.ollama_protocol`) and run it through `assemble_turn`, stateless (the client sends the
whole conversation, as Ollama clients do; nothing is stored). They stream by default, as NDJSON
(`application/x-ndjson`); the response starts only with the run's first output, so a runtime
that is down is an HTTP 503 before any byte, and a client that disconnects aborts the runtime
request. An error after the start is a last `{"error": ...}` line, as Ollama sends it.

The model offered is the client's tools only: cascade's server tools are offered only when the
operator names them in `CASCADE_OLLAMA_SERVER_TOOLS` (`*`: all enabled ones), with or without
client tools, because an Ollama client cannot show a server tool step and a voice assistant
should not wait for one it did not ask for.

The served model is the runtime's (`GET /api/tags`, `POST /api/show`, `GET /api/ps`); a request
may name it with or without `:latest` (chat and generate may also leave it out); any other name
is a 404. `/api/show` lists `vision` among the capabilities only when images can be taken in
(the intake needs Redis). `POST /api/pull`
of the served model succeeds at once (nothing to download); of another model it is a 404.
Errors are Ollama-shaped (`{"error": "message"}`, see `app.api.errors`); authentication is the
same Bearer API key as the rest of the API.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from app.agent.loop import AgentRun
from app.agent.models import ContentDelta, ReasoningDelta, RunDone, RunResult
from app.agent.ollama_protocol import (
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaWriter,
    Timings,
    is_unload,
    parse_chat,
    parse_generate,
    to_chat_request,
)
from app.agent.protocol import ChatRequest
from app.agent.turn import assemble_turn
from app.api.auth import authenticate
from app.api.deps import Owner, ServicesDep, services_of
from app.api.responses import JSONResponse
from app.api.streaming import event_stream, first_event
from app.errors import CascadeError, InvalidRequestError, NotFoundError
from app.jsonbody import JsonBodyError, parse_json
from app.services import Services

log = structlog.get_logger(__name__)
router = APIRouter()

# The Ollama release whose API (docs/api.md) this door follows; clients check it for features.
OLLAMA_VERSION = "0.33.0"
NDJSON = "application/x-ndjson"
_STARTED = datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return parse_json(raw)
    except JsonBodyError as exc:
        raise InvalidRequestError(f"request body: {exc}") from None


async def _served(services: Services, wanted: str | None) -> str:
    """The served model's name, after checking that `wanted` (if any) names it."""
    served = await services.runtime.model_name()
    if wanted and wanted not in (served, f"{served}:latest"):
        raise NotFoundError(f"model '{wanted}' not found: cascade serves '{served}'", param="model")
    return served


def _server_tools(services: Services) -> list[str]:
    """The server tools the operator lets Ollama clients use (those enabled and present)."""
    wanted = services.settings.ollama_server_tools
    enabled = [n for n in services.registry.names() if services.policy.is_enabled(n)]
    if "*" in wanted:
        return enabled
    return [name for name in wanted if name in enabled]


def _details() -> dict[str, Any]:
    # Ollama describes its GGUF files here; the runtime's model has no such facts to report.
    return {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": [],
        "parameter_size": "",
        "quantization_level": "",
    }


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _STARTED,
        "size": 0,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": _details(),
    }


async def _context_length(services: Services) -> int | None:
    info = await services.runtime_client.server_info()
    length = (info or {}).get("context_length")
    return length if isinstance(length, int) and not isinstance(length, bool) else None


# ----------------------------------------------------------------------------- model endpoints


def ollama_root() -> PlainTextResponse:
    """What Ollama answers at its root; clients probe it to see that a server is there (the
    root route, shared with the status page, is `app.api.app`'s)."""
    return PlainTextResponse("Ollama is running")


@router.api_route("/api/version", methods=["GET", "HEAD"])
async def version(_: Owner) -> JSONResponse:
    return JSONResponse({"version": OLLAMA_VERSION})


@router.api_route("/api/tags", methods=["GET", "HEAD"])
async def tags(services: ServicesDep, _: Owner) -> JSONResponse:
    """The one model cascade serves: the runtime's served model name."""
    return JSONResponse({"models": [_model_entry(await _served(services, None))]})


@router.api_route("/api/ps", methods=["GET", "HEAD"])
async def running(services: ServicesDep, _: Owner) -> JSONResponse:
    """The served model while the runtime is reachable (it is then loaded), else none."""
    health = await services.runtime.health()
    if not health.reachable:
        return JSONResponse({"models": []})
    entry = {
        **_model_entry(await _served(services, None)),
        "size_vram": 0,
        "context_length": await _context_length(services),
    }
    return JSONResponse({"models": [entry]})


@router.post("/api/show")
async def show(request: Request, services: ServicesDep, _: Owner) -> JSONResponse:
    data = await _body(request)
    wanted = (data.get("model") or data.get("name")) if isinstance(data, dict) else None
    if not isinstance(wanted, str) or not wanted:
        raise InvalidRequestError("model is required", param="model")
    served = await _served(services, wanted)
    info: dict[str, Any] = {"general.architecture": "cascade", "general.basename": served}
    context = await _context_length(services)
    if context is not None:
        info["cascade.context_length"] = context
    capabilities = ["completion", "tools", "thinking"]
    if services.media is not None:  # images need the intake (and so Redis)
        capabilities.append("vision")
    return JSONResponse(
        {
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": _details(),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": _STARTED,
        }
    )


@router.post("/api/pull")
async def pull(request: Request, services: ServicesDep, _: Owner) -> Response:
    """Nothing is downloaded: the served model is there already, and no other can be."""
    data = await _body(request)
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    wanted = data.get("model") or data.get("name")
    if not isinstance(wanted, str) or not wanted:
        raise InvalidRequestError("model is required", param="model")
    served = await services.runtime.model_name()
    if wanted not in (served, f"{served}:latest"):
        raise NotFoundError(
            f"cascade cannot pull '{wanted}': it serves only '{served}', the model its runtime "
            "was launched with",
            param="model",
        )
    if data.get("stream") is False:
        return JSONResponse({"status": "success"})
    lines = [
        OllamaWriter.line({"status": f"{served} is served by the runtime; nothing to download"}),
        OllamaWriter.line({"status": "success"}),
    ]
    return Response(b"".join(lines), media_type=NDJSON)


# ----------------------------------------------------------------------------- chat, generate


# Both take only the request (their dependencies called directly, as the chat door's are), so
# they are hot doors (`app.api.hot_routes`).
@router.post("/api/chat")
async def chat(request: Request) -> Response:
    owner = await authenticate(request)
    req = parse_chat(await _body(request))
    return await _answer(services_of(request), req, owner, has_input=bool(req.messages))


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    owner = await authenticate(request)
    req = parse_generate(await _body(request))
    has_input = bool(req.prompt or req.images)
    return await _answer(services_of(request), req, owner, has_input=has_input)


async def _answer(
    services: Services,
    req: OllamaChatRequest | OllamaGenerateRequest,
    owner: str,
    *,
    has_input: bool,
) -> Response:
    timings = Timings()
    model = await _served(services, req.model)
    writer = OllamaWriter(
        model=req.model or model, kind="chat" if isinstance(req, OllamaChatRequest) else "generate"
    )
    if not has_input:
        # Nothing to say: Ollama loads (or with keep_alive 0 unloads) the model and answers.
        body = writer.loaded(unload=is_unload(req.keep_alive))
        if req.stream:
            return Response(OllamaWriter.line(body), media_type=NDJSON)
        return JSONResponse(body)
    chat_req = to_chat_request(req, server_tools=_server_tools(services))
    if not req.stream:
        result = await _run(services, chat_req, owner, timings)
        return JSONResponse(writer.body(result, timings))
    events = _stream(services, chat_req, owner, writer, timings)
    return event_stream(await first_event(events), events, media_type=NDJSON)


async def _run(services: Services, req: ChatRequest, owner: str, timings: Timings) -> RunResult:
    """The whole run (streamed from the runtime, so the first output's time is known)."""
    assembled = await assemble_turn(services.turn, req, owner=owner, stream=True)
    result: RunResult | None = None
    async with aclosing(assembled.run.events()) as events:
        async for event in events:
            timings.event()
            if isinstance(event, RunDone):
                result = event.result
    timings.end()
    assert result is not None
    return result


async def _stream(
    services: Services, req: ChatRequest, owner: str, writer: OllamaWriter, timings: Timings
) -> AsyncGenerator[bytes, None]:
    """The one owner of a streamed answer: its run, its lines and its end.

    Text and thinking go out as they come; client tool calls go out whole, once the run ended
    (Ollama sends each call complete, with its arguments as an object). Server tool steps have
    no Ollama shape and are not shown.
    """
    assembled = await assemble_turn(services.turn, req, owner=owner, stream=True)
    run = assembled.run
    result: RunResult | None = None
    started = False
    try:
        async with aclosing(run.events()) as events:
            async for event in events:
                timings.event()
                line: bytes | None = None
                if isinstance(event, ContentDelta) and event.text:
                    line = writer.content(event.text)
                elif isinstance(event, ReasoningDelta) and event.text:
                    line = writer.thinking(event.text)
                elif isinstance(event, RunDone):
                    result = event.result
                if line is not None:
                    started = True
                    yield line
        timings.end()
        assert result is not None
    except CascadeError as exc:
        if not started:
            raise  # nothing was sent: a plain HTTP error (503, 400, ...)
        log.warning("ollama_stream_failed", code=exc.code, status=exc.status)
        yield writer.error(exc.message)
        return
    except BaseException:
        # The client went away (closed or cancelled): abort the runtime request.
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await _abort(services, run)
        raise
    if result.client_tool_calls:
        yield writer.tool_calls(result.client_tool_calls)
    yield writer.final(result, timings)


async def _abort(services: Services, run: AgentRun) -> None:
    rid = run.current_rid
    if rid is None:
        return
    try:
        await services.runtime.abort(rid)
    except Exception as exc:  # the runtime may be gone already
        log.warning("abort_failed", exc_type=type(exc).__name__)
    log.info("ollama_stream_interrupted", rid=rid)
