"""The HTTP application: construction, lifespan, health and model listing.

`create_app(settings)` owns one runtime client and one Redis connection pool for the process;
both are opened in the lifespan and closed on shutdown. Endpoints that need the model come in
their own routers; this module wires them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from fastapi import Depends, FastAPI, Request
from starlette.responses import Response

from app import __version__, tracing
from app.api.access_log import AccessLogMiddleware
from app.api.auth import authenticate
from app.api.batches_api import router as batches_router
from app.api.batches_api import running_coordinator
from app.api.chat import chat_completions
from app.api.chat import router as chat_router
from app.api.config import HttpSettings
from app.api.conversations_api import router as conversations_router
from app.api.deps import ServicesDep
from app.api.error_ring import ErrorRing, ErrorRingMiddleware
from app.api.errors import install_error_handlers
from app.api.files_api import router as files_router
from app.api.hot_routes import HotRoutes
from app.api.http_guard import RequestGuardMiddleware
from app.api.metrics_api import router as metrics_router
from app.api.middleware import RequestIdMiddleware
from app.api.ollama_api import chat as ollama_chat
from app.api.ollama_api import generate as ollama_generate
from app.api.ollama_api import ollama_root
from app.api.ollama_api import router as ollama_router
from app.api.responses import JSONResponse
from app.api.responses_api import create_response
from app.api.responses_api import router as responses_router
from app.api.sessions_api import router as sessions_router
from app.api.status import router as status_router
from app.api.status import status_page
from app.api.status_auth import StatusAuth
from app.api.tools_api import router as tools_router
from app.batches.config import BatchSettings
from app.batches.store import BatchStore
from app.config import Settings
from app.media.config import MediaSettings
from app.redis_client import redis_client
from app.runtime import RuntimeHealth, SGLangClient
from app.services import open_services

log = structlog.get_logger(__name__)

# Called ahead of FastAPI's router (`app.api.hot_routes`); also registered with it.
HOT_DOORS = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/responses"): create_response,
    ("POST", "/api/chat"): ollama_chat,
    ("POST", "/api/generate"): ollama_generate,
}

# User-Agents of Ollama's own clients (the Python and JavaScript libraries, the CLI).
OLLAMA_AGENTS = ("ollama-python/", "ollama-js/", "ollama/")

# Seconds each readiness probe may take; they run side by side, so /readyz answers within this
# whatever the client timeouts are (a probe that needs longer means "not ready" anyway).
READY_PROBE_TIMEOUT = 1.5


async def redis_state(client: aioredis.Redis | None) -> dict[str, Any]:
    """Whether Redis answers a PING within `READY_PROBE_TIMEOUT` seconds; never raises."""
    if client is None:
        return {"ok": False, "detail": "CASCADE_REDIS_URL is not set"}
    try:
        async with asyncio.timeout(READY_PROBE_TIMEOUT):
            await client.ping()
    except Exception as exc:  # any failure means "not ready"; the type is enough for the log
        log.warning("redis_unreachable", exc_type=type(exc).__name__)
        return {"ok": False, "detail": "not reachable"}
    return {"ok": True, "detail": "ok"}


def chat_body_cap(http: HttpSettings, media: MediaSettings) -> int:
    """The chat body cap: the operator's, or room for a request's images as base64 + 4 MiB."""
    if http.http_max_chat_body is not None:
        return http.http_max_chat_body
    return media.request_max_image_bytes * 4 // 3 + 4 * 1024 * 1024


async def _runtime_health(client: SGLangClient) -> RuntimeHealth:
    try:
        async with asyncio.timeout(READY_PROBE_TIMEOUT):
            return await client.health()
    except TimeoutError:
        return RuntimeHealth(reachable=False, healthy=False, detail="not answering")


def _served_model(app: FastAPI) -> str | None:
    services = getattr(app.state, "services", None)
    return services.runtime_client.served_model if services is not None else None


def create_app(
    settings: Settings,
    *,
    media_settings: MediaSettings | None = None,
    batch_settings: BatchSettings | None = None,
    batch_store_type: type[BatchStore] = BatchStore,
) -> FastAPI:
    """The API. The keyword arguments replace settings read from the environment (and the batch
    store class of the coordinator), for the services the lifespan opens."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = redis_client(settings.redis_url) if settings.redis_url else None
        services = await open_services(
            redis,
            settings,
            media_settings=media_settings,
            batch_settings=batch_settings,
            batch_store_type=batch_store_type,
        )
        app.state.services = services
        if not settings.auth_enabled:
            log.warning(
                "auth_disabled",
                detail="CASCADE_API_KEYS is unset: every caller is accepted as the local owner",
            )
        log.info("api_started", runtime=settings.runtime_display, version=__version__)
        traced = tracing.setup("cascade")
        try:
            async with running_coordinator(services):
                yield
        finally:
            if traced:
                tracing.shutdown()
            await services.aclose()
            if redis is not None:
                await redis.aclose()

    app = FastAPI(
        title="cascade",
        version=__version__,
        lifespan=lifespan,
        default_response_class=JSONResponse,
        docs_url=None,
        redoc_url=None,
    )
    http = HttpSettings.load()
    # Innermost: the hot doors skip FastAPI's router, inside everything below.
    app.add_middleware(HotRoutes, doors=HOT_DOORS)
    app.add_middleware(
        RequestGuardMiddleware,
        settings=http,
        cors_origins=settings.cors_origins,
        chat_body_cap=chat_body_cap(http, MediaSettings.load()),
    )
    # Outside the guard, so its refusals are recorded too; inside the request id, which it reads.
    app.state.error_ring = ErrorRing()
    app.add_middleware(ErrorRingMiddleware, ring=app.state.error_ring)
    # Inside the request id (its line carries it), outside everything that may answer.
    app.add_middleware(AccessLogMiddleware, served_model=lambda: _served_model(app))
    app.add_middleware(RequestIdMiddleware)
    app.state.status_auth = StatusAuth(settings)
    install_error_handlers(app)
    app.include_router(chat_router)
    app.include_router(responses_router)
    app.include_router(sessions_router)
    app.include_router(conversations_router)
    app.include_router(files_router)
    app.include_router(tools_router)
    app.include_router(batches_router)
    app.include_router(ollama_router)
    app.include_router(status_router)
    app.include_router(metrics_router)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root(request: Request, services: ServicesDep) -> Response:
        """Shared by two kinds of caller: an Ollama client probing for a server (its
        User-Agent names it, or it only asks HEAD) gets Ollama's answer; everyone else, a
        browser first, gets the operator's status page."""
        agent = request.headers.get("user-agent", "").lower()
        if request.method == "HEAD" or agent.startswith(OLLAMA_AGENTS):
            return ollama_root()
        return await status_page(request, services)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Says nothing about the runtime or Redis."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(services: ServicesDep) -> JSONResponse:
        """Readiness: the runtime is reachable and Redis answers; 503 names what is missing.

        Both are probed at once, each for at most `READY_PROBE_TIMEOUT` seconds.
        """
        health, redis = await asyncio.gather(
            _runtime_health(services.runtime_client), redis_state(services.redis)
        )
        runtime = {
            "ok": health.reachable,
            "reachable": health.reachable,
            "healthy": health.healthy,
            "url": settings.runtime_display,
            "model": health.model,
            "detail": health.detail,
        }
        if not health.reachable:
            runtime["detail"] = (
                f"the SGLang runtime at {settings.runtime_display} is not reachable; start it with "
                "`cascade runtime` (or `docker compose up sglang`) or set CASCADE_RUNTIME_URL"
            )
        ready = health.reachable and bool(redis["ok"])
        body = {"status": "ready" if ready else "not_ready", "runtime": runtime, "redis": redis}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/v1/models", dependencies=[Depends(authenticate)])
    async def list_models(services: ServicesDep) -> dict[str, Any]:
        """The runtime's model list (OpenAI shape)."""
        return await services.runtime_client.list_models()

    return app
