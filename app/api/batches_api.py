"""`/v1/batches` (OpenAI's Batch API) and `/v1/jobs/image-questions`.

The app's lifespan runs the batch coordinator (`app.batches.coordinator`) in this process
with `running_coordinator`, next to the files it reads and writes, restarted if it dies
(`app.batches.supervise`). Another owner's batch answers exactly like a missing one (404).

Besides OpenAI's endpoints: `POST /v1/jobs/image-questions` (a job expanded into a batch) and
`GET /v1/batches/{id}/images/{sha256}` (a JPEG thumbnail of an image the batch's items used,
for reports) and `GET /v1/batches/{id}/results?format=jsonl|csv` (the results as a table,
`app.batches.tabular`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query, Request
from PIL import Image
from redis.exceptions import RedisError
from starlette.responses import Response

from app.api.deps import Owner, ServicesDep
from app.api.responses import JSONResponse, list_page
from app.batches.coordinator import Coordinator
from app.batches.jobs import (
    ImageQuestionsJob,
    job_images,
    job_lines,
    load_template,
    prompt_environment,
)
from app.batches.models import CreateBatchRequest
from app.batches.store import BatchStore
from app.batches.supervise import supervise
from app.batches.tabular import ResultFormat, build_table, csv_rows, jsonl_rows, parse_lines
from app.errors import (
    CascadeError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    RuntimeUnavailableError,
)
from app.media.files import FileStore
from app.media.store import ImageRef
from app.services import Services

log = structlog.get_logger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
THUMBNAIL_SIZE = 256


def _file_store(services: Services) -> FileStore:
    if services.files is None:
        raise CascadeError("batches need Redis; set CASCADE_REDIS_URL", code="no_batch_store")
    return services.files


@asynccontextmanager
async def running_coordinator(services: Services) -> AsyncIterator[None]:
    """Run the batch coordinator (supervised) for the `with` block; nothing without Redis."""
    if services.redis is None or services.batch_store is None or services.files is None:
        yield
        return
    coordinator = Coordinator(
        services.redis,
        services.files,
        services.settings,
        services.batch_settings,
        services.registry,
        services.policy,  # the policy chat requests run under
        store=services.batch_store,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(supervise("batch_coordinator", coordinator.run, stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _redis_errors(request: Request) -> AsyncIterator[None]:
    """A Redis outage is a 503 with Retry-After (clients poll again), not a 500."""
    try:
        yield
    except RedisError as exc:
        log.warning("batch_store_unavailable", exc_type=type(exc).__name__, path=request.url.path)
        raise RuntimeUnavailableError(
            "batch storage (Redis) is not reachable; retry shortly",
            retry_after=2,
            code="storage_unavailable",
        ) from None


router = APIRouter(dependencies=[Depends(_redis_errors)])


def _store(services: Services) -> BatchStore:
    if services.batch_store is None:
        raise CascadeError("batches need Redis; set CASCADE_REDIS_URL", code="no_batch_store")
    return services.batch_store


async def _model(services: Services) -> str | None:
    """The served model's name for the batch object (None while the runtime is away)."""
    try:
        name: str = await services.runtime.model_name()
    except CascadeError:
        return None
    return name


async def _check_input(files: FileStore, owner: str, file_id: str) -> None:
    try:
        obj = await files.get(owner, file_id)
    except NotFoundError:
        raise InvalidRequestError(
            f"no file with id {file_id!r}", param="input_file_id", code="file_not_found"
        ) from None
    if obj.purpose != "batch":
        raise InvalidRequestError(
            f"file {file_id} has purpose {obj.purpose!r}; batch input needs purpose 'batch'",
            param="input_file_id",
        )


@router.post("/v1/batches")
async def create_batch(
    body: CreateBatchRequest, services: ServicesDep, owner: Owner
) -> JSONResponse:
    store = _store(services)
    await _check_input(_file_store(services), owner, body.input_file_id)
    batch = await store.create(owner, body, model=await _model(services))
    log.info("batch_created", batch_id=batch.id, input_file_id=body.input_file_id)
    return JSONResponse(batch.to_openai())


@router.get("/v1/batches")
async def list_batches(
    services: ServicesDep,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> JSONResponse:
    batches, has_more = await _store(services).list_batches(owner, limit=limit, after=after)
    data = [b.to_openai() for b in batches]
    return JSONResponse(list_page(data, has_more=has_more))


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, services: ServicesDep, owner: Owner) -> JSONResponse:
    return JSONResponse((await _store(services).get(owner, batch_id)).to_openai())


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, services: ServicesDep, owner: Owner) -> JSONResponse:
    """Once this answers, no further item of the batch starts; running ones finish."""
    batch = await _store(services).cancel(owner, batch_id)
    log.info("batch_cancel_requested", batch_id=batch_id, status=batch.status)
    return JSONResponse(batch.to_openai())


@router.post("/v1/jobs/image-questions")
async def create_image_questions_job(
    job: ImageQuestionsJob, services: ServicesDep, owner: Owner
) -> JSONResponse:
    """Expand a job into a batch input file (streamed) and create the batch over it."""
    store = _store(services)
    config = services.batch_settings
    media = services.media_settings
    if len(job.questions) > config.job_max_questions:
        raise InvalidRequestError(
            f"a job may ask at most {config.job_max_questions} questions", param="questions"
        )
    template = None
    if job.template is not None:
        template = load_template(prompt_environment(config.templates_dir), job.template)
    images = await job_images(job, media.local_image_dirs, config.job_max_images)
    files = _file_store(services)
    input_file = await files.create(
        owner,
        filename="image-questions.jsonl",
        purpose="batch",
        content=job_lines(job, images, template),
    )
    create = CreateBatchRequest(
        input_file_id=input_file.id,
        endpoint="/v1/chat/completions",
        completion_window=job.completion_window,
        metadata=job.metadata,
    )
    batch = await store.create(
        owner, create, job=job.summary(len(images)), model=job.model or await _model(services)
    )
    log.info(
        "image_questions_job_created",
        batch_id=batch.id,
        images=len(images),
        questions=len(job.questions),
    )
    return JSONResponse(batch.to_openai())


def thumbnail_jpeg(image: Image.Image) -> bytes:
    """A JPEG of at most `THUMBNAIL_SIZE` pixels a side (the image is shrunk in place)."""
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=75)
    return out.getvalue()


@router.get("/v1/batches/{batch_id}/images/{sha256}")
async def batch_image_thumbnail(
    batch_id: str, sha256: str, services: ServicesDep, owner: Owner
) -> Response:
    """A small JPEG of a processed image (by content hash) for the batch's report.

    Only an image one of the caller's batch's results used: the image store is shared by every
    owner, so a hash alone proves nothing; any other hash is 404 like an unknown one.
    """
    store = _store(services)
    await store.get(owner, batch_id)
    media = services.media
    if (
        media is None
        or not _SHA256.fullmatch(sha256)
        or not await store.references_image(batch_id, sha256)
    ):
        raise NotFoundError("no such image", code="image_not_found")
    image = await media.load_image(ImageRef(sha256, 1, 1, "image/jpeg"))
    data = await asyncio.to_thread(thumbnail_jpeg, image)
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.get("/v1/batches/{batch_id}/results")
async def batch_results(
    batch_id: str,
    services: ServicesDep,
    owner: Owner,
    format: ResultFormat = "jsonl",
) -> Response:
    """The finished batch's results as data: one row per input line, one column per schema
    field, plus custom_id, image and error (`app.batches.tabular`). 409 while it runs."""
    batch = await _store(services).get(owner, batch_id)
    if not batch.is_final:
        raise ConflictError(
            f"batch {batch_id} has no results yet (status {batch.status})", code="batch_not_done"
        )
    files = _file_store(services)
    results: dict[str, dict[str, object]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id is not None:
            for line in parse_lines(await files.read_bytes(owner, file_id)):
                if isinstance(line.get("custom_id"), str):
                    results.setdefault(line["custom_id"], line)
    requests = parse_lines(await files.read_bytes(owner, batch.input_file_id))
    table = await asyncio.to_thread(build_table, requests, results)
    if format == "csv":
        body = "".join(csv_rows(table)).encode()
        media, suffix = "text/csv; charset=utf-8", "csv"
    else:
        body = b"".join(jsonl_rows(table))
        media, suffix = "application/x-ndjson", "jsonl"
    disposition = f'attachment; filename="{batch_id}-results.{suffix}"'
    return Response(body, media_type=media, headers={"Content-Disposition": disposition})
