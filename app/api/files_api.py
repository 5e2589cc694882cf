"""`/v1/files` in OpenAI's shapes: upload, list, retrieve, download, delete.

Uploads are `multipart/form-data` with fields `purpose` (`vision` or `batch`), `file`, and
optionally `expires_after[anchor]=created_at` / `expires_after[seconds]` (ASCII digits, 3600 to
2592000). The body is parsed as it streams in (python-multipart's push parser): file bytes go
straight into the store's temporary file and the upload fails with a 413 the moment it passes
the purpose's size cap, so a large or endless upload never sits in memory or in a spool file.
A form field is checked as soon as it is complete. Only a body that reaches its closing
boundary is stored: a truncated one is a 400, like any malformed form, and leaves nothing.

The file store is the process's (`Services.files`); the owner of every file is the caller's id
from `app.api.auth.authenticate`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import StreamingResponse

from app.api.deps import Owner, ServicesDep
from app.api.responses import JSONResponse, list_page
from app.errors import CascadeError, InvalidRequestError, PayloadTooLargeError
from app.media.errors import human_bytes
from app.media.files import (
    MAX_EXPIRY_SECONDS,
    MIN_EXPIRY_SECONDS,
    UPLOAD_PURPOSES,
    FileStore,
    FileWriter,
)

router = APIRouter()

_MAX_FIELD_BYTES = 4096
_MAX_FIELDS = 16
_MULTIPART_OVERHEAD = 1 << 20
_ANCHOR, _SECONDS = "expires_after[anchor]", "expires_after[seconds]"
# `str.isdigit` accepts '²' and other digits `int` refuses; only ASCII digits are a number here.
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")


async def get_file_store(services: ServicesDep) -> FileStore:
    """The process's `FileStore` (files need Redis)."""
    if services.files is None:
        raise CascadeError("files need Redis; set CASCADE_REDIS_URL", code="no_file_store")
    return services.files


Store = Annotated[FileStore, Depends(get_file_store)]


class _MultipartUpload:
    """Collects the form fields and streams the `file` part into a `FileWriter`."""

    def __init__(self, store: FileStore, owner: str) -> None:
        self.store = store
        self.owner = owner
        self.fields: dict[str, str] = {}
        self.writer: FileWriter | None = None
        self.pending: list[bytes] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._filename: str | None = None
        self._value = bytearray()
        self._in_file = False
        self.complete = False  # the closing boundary was seen

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._name, self._filename = "", None
        self._value = bytearray()
        self._in_file = False

    def _header_end(self) -> None:
        if bytes(self._header_field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self._filename = filename.decode("utf-8", "replace") if filename is not None else None
        if self._name == "file":
            if self.writer is not None:
                raise InvalidRequestError("only one file per upload", param="file")
            purpose = self.fields.get("purpose")
            self.writer = self.store.writer(
                self.owner,
                self._filename or "upload",
                purpose=purpose if purpose in UPLOAD_PURPOSES else None,
            )
            self._in_file = True
        elif len(self.fields) >= _MAX_FIELDS:
            raise InvalidRequestError("too many form fields")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(bytes(data[start:end]))
            return
        self._value.extend(data[start:end])
        if len(self._value) > _MAX_FIELD_BYTES:
            raise InvalidRequestError(f"form field {self._name!r} is too long")

    def _part_end(self) -> None:
        if self._in_file or not self._name:
            return
        if self._name in self.fields:
            raise InvalidRequestError(f"form field {self._name!r} is given twice", param=self._name)
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(
                f"form field {self._name!r} is not UTF-8 text", param=self._name
            ) from None
        self.fields[self._name] = value
        _check_field(self._name, value)

    def _end(self) -> None:
        self.complete = True

    async def flush(self) -> None:
        if self.pending and self.writer is not None:
            data = b"".join(self.pending)
            self.pending.clear()
            await self.writer.write(data)


def _check_field(name: str, value: str) -> None:
    """Refuse a bad `purpose` or `expires_after[...]` value as soon as it has arrived."""
    if name == "purpose" and value not in UPLOAD_PURPOSES:
        raise InvalidRequestError(
            f"purpose must be one of: {', '.join(UPLOAD_PURPOSES)}", param="purpose"
        )
    if name == _ANCHOR and value != "created_at":
        raise InvalidRequestError(f"{_ANCHOR} must be 'created_at'", param=_ANCHOR)
    if name == _SECONDS:
        if not _ASCII_DIGITS.fullmatch(value):
            raise InvalidRequestError(
                f"{_SECONDS} must be a whole number of seconds", param=_SECONDS
            )
        if not MIN_EXPIRY_SECONDS <= int(value) <= MAX_EXPIRY_SECONDS:
            raise InvalidRequestError(
                f"{_SECONDS} must be between {MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS}",
                param=_SECONDS,
            )


def _expires_after(fields: dict[str, str]) -> int | None:
    """Seconds from `expires_after[...]` (each value already passed `_check_field`), or None."""
    anchor = fields.get(_ANCHOR)
    seconds = fields.get(_SECONDS)
    if anchor is None and seconds is None:
        return None
    if anchor is None:
        raise InvalidRequestError(f"{_ANCHOR} is required with {_SECONDS}", param=_ANCHOR)
    if seconds is None:
        raise InvalidRequestError(f"{_SECONDS} is required with {_ANCHOR}", param=_SECONDS)
    return int(seconds)


@router.post("/v1/files")
async def create_file(
    request: Request,
    owner: Owner,
    store: Store,
) -> JSONResponse:
    """Upload a file (multipart: `file`, `purpose`)."""
    _, options = parse_options_header(request.headers.get("content-type"))
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    boundary = options.get(b"boundary")
    if content_type != "multipart/form-data" or not boundary:
        raise InvalidRequestError("upload must be multipart/form-data with fields file, purpose")
    declared = request.headers.get("content-length", "")
    limit = store.max_upload_bytes()
    if _ASCII_DIGITS.fullmatch(declared) and int(declared) > limit + _MULTIPART_OVERHEAD:
        raise PayloadTooLargeError(f"file larger than {human_bytes(limit)}", code="file_too_large")
    upload = _MultipartUpload(store, owner)
    parser = MultipartParser(boundary, upload.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await upload.flush()
        parser.finalize()
        if not upload.complete:
            raise InvalidRequestError(
                "multipart/form-data body ends before its closing boundary (truncated upload)"
            )
        await upload.flush()
        purpose = upload.fields.get("purpose")
        if upload.writer is None:
            raise InvalidRequestError("missing form field 'file'", param="file")
        if purpose is None:
            raise InvalidRequestError("missing form field 'purpose'", param="purpose")
        obj = await upload.writer.commit(purpose, expires_after=_expires_after(upload.fields))
    except MultipartParseError:
        raise InvalidRequestError("malformed multipart/form-data body") from None
    finally:
        # Idempotent; after a successful commit there is nothing left to drop.
        if upload.writer is not None:
            await upload.writer.abort()
    return JSONResponse(obj.to_openai())


@router.get("/v1/files")
async def list_files(
    owner: Owner,
    store: Store,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> JSONResponse:
    """The caller's files, newest first unless `order=asc`; cursor pagination by `after`."""
    files, has_more = await store.list(
        owner, purpose=purpose, limit=limit, after=after, order=order
    )
    data = [f.to_openai() for f in files]
    return JSONResponse(list_page(data, has_more=has_more))


@router.get("/v1/files/{file_id}")
async def retrieve_file(
    file_id: str,
    owner: Owner,
    store: Store,
) -> JSONResponse:
    return JSONResponse((await store.get(owner, file_id)).to_openai())


@router.get("/v1/files/{file_id}/content")
async def file_content(
    file_id: str,
    owner: Owner,
    store: Store,
) -> StreamingResponse:
    """The file's bytes (opened before the response starts, so a 404 is a real 404)."""
    obj = await store.get(owner, file_id)
    chunks = store.iter_bytes(owner, file_id)
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()

    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={"Content-Length": str(obj.bytes)},
    )


@router.delete("/v1/files/{file_id}")
async def delete_file(
    file_id: str,
    owner: Owner,
    store: Store,
) -> JSONResponse:
    await store.delete(owner, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
