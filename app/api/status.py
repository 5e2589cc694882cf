"""The operator's status page (`/`) and its data (`/status.json`).

The page is server-rendered from `templates/status.html.jinja`; a few lines of inline script
poll `/status.json` every 2 s and move its figures and progress bars. Both routes show the same
`StatusReport`: the runtime (reachable, healthy, version, model, the load gauges of its
`/metrics`), Redis (ping, memory), the batch workers, the caller's latest batches with their
progress, and this process's recent errors (`app.api.error_ring`). Who may see them:
`app.api.status_auth` (the API's keys; a login form sets a cookie for browsers).

Contracts:
- Gathering never raises for an unreachable runtime or Redis: each probe has at most
  `PROBE_TIMEOUT` seconds (they run side by side) and a failed one is reported as such.
- Batches are the caller's own, newest first (at most `BATCH_LIMIT`), as the Batch API lists
  them; another owner's batches are not shown.
- Nothing secret is shown: the runtime URL is masked (`runtime_display`), no keys, no bodies.
- `/status/batches/{id}/report` is the batch's HTML report (as `cascade batch report`: the
  first `REPORT_LIMIT` items, thumbnails of the first `REPORT_THUMBNAILS` images) for the
  caller's final batches; another owner's batch is a 404, one still running a 409.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import jinja2
import orjson
import structlog
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import HTMLResponse, Response

from app import __version__
from app.api.auth import owner_for_key
from app.api.batches_api import thumbnail_jpeg
from app.api.deps import ServicesDep
from app.api.error_ring import ErrorEvent, ErrorRing
from app.api.responses import JSONResponse
from app.api.status_auth import StatusAuth, status_owner
from app.batches.models import BatchObject
from app.batches.report import collect_results, render_report, report_data
from app.errors import AuthenticationError, CascadeError, ConflictError, NotFoundError
from app.media.files import FileStore
from app.media.store import ImageRef
from app.runtime.metrics import RuntimeMetrics
from app.services import Services
from templates import TEMPLATES_DIR

log = structlog.get_logger(__name__)

PROBE_TIMEOUT = 1.5
BATCH_LIMIT = 20
WORKER_LIMIT = 50
POLL_SECONDS = 2.0
REPORT_LIMIT = 500  # input lines a report shows
REPORT_THUMBNAILS = 100
REPORT_MAX_BYTES = 64 * 1024 * 1024  # an output or error file a report reads whole
TEMPLATE = "status.html.jinja"

T = TypeVar("T")


class RuntimeStatus(BaseModel):
    url: str
    reachable: bool
    healthy: bool
    detail: str
    model: str | None = None
    model_path: str | None = None
    version: str | None = None
    metrics: RuntimeMetrics | None = None


class RedisStatus(BaseModel):
    ok: bool
    detail: str
    used_memory_bytes: int | None = None
    used_memory_human: str | None = None
    maxmemory_bytes: int | None = None


class WorkerStatus(BaseModel):
    name: str
    alive: bool
    pending: int
    idle_seconds: float | None


class BatchProgress(BaseModel):
    id: str
    status: str
    created_at: int
    total: int
    completed: int
    failed: int
    done: int = Field(description="completed + failed")
    final: bool
    report_url: str


class StatusReport(BaseModel):
    version: str
    generated_at: float
    poll_seconds: float
    runtime: RuntimeStatus
    redis: RedisStatus
    workers: list[WorkerStatus]
    batches: list[BatchProgress]
    recent_errors: list[ErrorEvent]


class LoginRequest(BaseModel):
    key: str = Field(min_length=1, max_length=4096)


async def _probe(what: str, call: Awaitable[T]) -> T | None:
    """`call`'s result, or None when it fails or takes over `PROBE_TIMEOUT` seconds."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            return await call
    except Exception as exc:  # a status page reports a failing part; it does not fail
        log.info("status_probe_failed", what=what, exc_type=type(exc).__name__)
        return None


async def _runtime(services: Services) -> RuntimeStatus:
    client = services.runtime_client
    health, info, metrics = await asyncio.gather(
        _probe("runtime_health", client.health()),
        _probe("runtime_server_info", client.server_info()),
        _probe("runtime_metrics", client.metrics()),
    )
    url = services.settings.runtime_display
    if health is None:
        return RuntimeStatus(url=url, reachable=False, healthy=False, detail="not answering")
    version = info.get("version") if info is not None else None
    return RuntimeStatus(
        url=url,
        reachable=health.reachable,
        healthy=health.healthy,
        detail=health.detail,
        model=health.model,
        model_path=health.model_path,
        version=version if isinstance(version, str) else None,
        metrics=metrics,
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


async def _redis(services: Services) -> RedisStatus:
    if services.redis is None:
        return RedisStatus(ok=False, detail="CASCADE_REDIS_URL is not set")
    ping = await _probe("redis_ping", services.redis.ping())
    if not ping:
        return RedisStatus(ok=False, detail="not reachable")
    info = await _probe("redis_info", services.redis.info("memory")) or {}
    human = info.get("used_memory_human")
    return RedisStatus(
        ok=True,
        detail="ok",
        used_memory_bytes=_int(info.get("used_memory")),
        used_memory_human=str(human) if human is not None else None,
        maxmemory_bytes=_int(info.get("maxmemory")),
    )


async def _workers(services: Services) -> list[WorkerStatus]:
    store = services.batch_store
    if store is None:
        return []
    found = await _probe("workers", store.workers(limit=WORKER_LIMIT)) or []
    return [
        WorkerStatus(name=w.name, alive=w.alive, pending=w.pending, idle_seconds=w.idle_seconds)
        for w in found
    ]


def _progress(batch: BatchObject) -> BatchProgress:
    counts = batch.request_counts
    return BatchProgress(
        id=batch.id,
        status=batch.status,
        created_at=batch.created_at,
        total=counts.total,
        completed=counts.completed,
        failed=counts.failed,
        done=counts.completed + counts.failed,
        final=batch.is_final,
        report_url=f"/status/batches/{batch.id}/report",
    )


async def _batches(services: Services, owner: str) -> list[BatchProgress]:
    store = services.batch_store
    if store is None:
        return []
    page = await _probe("batches", store.list_batches(owner, limit=BATCH_LIMIT))
    return [_progress(b) for b in page[0]] if page is not None else []


async def gather_status(services: Services, ring: ErrorRing, owner: str) -> StatusReport:
    """Everything the page shows, probed side by side (see the module's contracts)."""
    runtime, redis, workers, batches = await asyncio.gather(
        _runtime(services), _redis(services), _workers(services), _batches(services, owner)
    )
    return StatusReport(
        version=__version__,
        generated_at=time.time(),
        poll_seconds=POLL_SECONDS,
        runtime=runtime,
        redis=redis,
        workers=workers,
        batches=batches,
        recent_errors=ring.latest(),
    )


_environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render_page(report: StatusReport | None, *, auth_enabled: bool) -> str:
    """The page: the report, or (with `report` None) the login form."""
    metrics = (report.runtime.metrics if report is not None else None) or RuntimeMetrics()
    return _environment.get_template(TEMPLATE).render(
        report=report.model_dump(mode="json") if report is not None else None,
        metrics=metrics.model_dump(mode="json"),
        auth_enabled=auth_enabled,
    )


def _ring(request: Request) -> ErrorRing:
    ring: ErrorRing = request.app.state.error_ring
    return ring


StatusOwner = Annotated[str, Depends(status_owner)]
router = APIRouter()

# The page and its data must never be cached: they are live, and they are behind a login.
_NO_STORE = {"cache-control": "no-store"}


async def status_page(request: Request, services: ServicesDep) -> HTMLResponse:
    """The status page; the login form (401) when auth is on and the caller is not in (served
    at `/` to browsers by `app.api.app`'s root route)."""
    auth_enabled = services.settings.auth_enabled
    try:
        owner = await status_owner(request)
    except AuthenticationError:
        html = render_page(None, auth_enabled=auth_enabled)
        return HTMLResponse(html, status_code=401, headers=_NO_STORE)
    report = await gather_status(services, _ring(request), owner)
    return HTMLResponse(render_page(report, auth_enabled=auth_enabled), headers=_NO_STORE)


@router.get("/status.json")
async def status_json(request: Request, services: ServicesDep, owner: StatusOwner) -> JSONResponse:
    report = await gather_status(services, _ring(request), owner)
    return JSONResponse(report.model_dump(mode="json"), headers=_NO_STORE)


@router.post("/status/login", status_code=204)
async def status_login(body: LoginRequest, request: Request, services: ServicesDep) -> Response:
    """Check a key (one of `CASCADE_API_KEYS`) and set the login cookie."""
    if not services.settings.auth_enabled:
        return Response(status_code=204)
    owner = owner_for_key(services.settings, body.key.strip())
    if owner is None:
        raise AuthenticationError("invalid API key")
    response = Response(status_code=204)
    auth: StatusAuth = request.app.state.status_auth
    auth.set_cookie(response, request, owner)
    log.info("status_login", owner=owner)
    return response


@router.post("/status/logout", status_code=204)
async def status_logout() -> Response:
    response = Response(status_code=204)
    StatusAuth.clear_cookie(response)
    return response


async def _file_lines(files: FileStore, owner: str, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    data = await files.read_bytes(owner, file_id, max_bytes=REPORT_MAX_BYTES)
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


async def _input_lines(files: FileStore, owner: str, file_id: str) -> list[dict[str, Any]]:
    """The input file's first `REPORT_LIMIT` lines that parse (the report shows no more)."""
    found: list[dict[str, Any]] = []
    rest = b""
    async for chunk in files.iter_bytes(owner, file_id):
        *whole, rest = (rest + chunk).split(b"\n")
        for line in whole:
            if len(found) >= REPORT_LIMIT:
                return found
            try:
                parsed = orjson.loads(line) if line.strip() else None
            except orjson.JSONDecodeError:
                continue  # an unreadable line is among the report's loose errors
            if isinstance(parsed, dict):
                found.append(parsed)
    if rest.strip() and len(found) < REPORT_LIMIT:
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(rest)
            if isinstance(parsed, dict):
                found.append(parsed)
    return found


async def _thumbnails(services: Services, shas: list[str]) -> dict[str, str | None]:
    media = services.media
    out: dict[str, str | None] = {}
    for sha in shas[:REPORT_THUMBNAILS]:
        if media is None:
            break
        try:
            image = await media.load_image(ImageRef(sha, 1, 1, "image/jpeg"))
        except CascadeError:
            continue
        data = await asyncio.to_thread(thumbnail_jpeg, image)
        out[sha] = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return out


@router.get("/status/batches/{batch_id}/report", response_class=HTMLResponse)
async def batch_report(batch_id: str, services: ServicesDep, owner: StatusOwner) -> HTMLResponse:
    """The batch's HTML report (see the module's contracts)."""
    store, files = services.batch_store, services.files
    if store is None or files is None:
        raise NotFoundError("no batches without Redis", code="batch_not_found")
    batch = await store.get(owner, batch_id)
    if not batch.is_final:
        raise ConflictError("the report is ready once the batch has finished", code="batch_running")
    results, loose = collect_results(
        await _file_lines(files, owner, batch.output_file_id),
        await _file_lines(files, owner, batch.error_file_id),
    )
    inputs = await _input_lines(files, owner, batch.input_file_id)
    wanted: list[str] = []

    def note(sha: str) -> None:
        wanted.append(sha)
        return None

    # Twice: first to learn which images the cards show, then with their thumbnails loaded
    # (the builder asks synchronously; the image store is read asynchronously).
    report_data(batch.to_openai(), inputs, results, loose, limit=REPORT_LIMIT, thumbnail=note)
    thumbnails = await _thumbnails(services, wanted)
    data = report_data(
        batch.to_openai(), inputs, results, loose, limit=REPORT_LIMIT, thumbnail=thumbnails.get
    )
    return HTMLResponse(render_report(data), headers=_NO_STORE)
