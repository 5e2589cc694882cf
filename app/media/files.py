"""Files (`/v1/files`): bytes on disk, metadata in Redis, each file visible to its owner only.

Bytes live in `root/<file id>` (root is `CASCADE_STATE_DIR/files/` in the service). An upload
streams into a temporary file in the same directory, counted against the purpose's size cap as
it arrives, and is renamed into place only when complete (fsync'd first), so a file id never
names a partial file. Metadata is an OpenAI file object in the Redis hash
`{prefix}:file:{id}` (plus the owner), indexed per owner in the sorted set
`{prefix}:owner:{owner}:files` (score: creation time in microseconds). The two are in different
Redis Cluster slots, so they are written one after the other: the record, then the index entry
(created); the record, then the entry (deleted). `list` skips and drops entries without a record.

Purposes: `vision` (images for chat messages; checked from their header as image intake
would check them, so an image that could never be used, a decompression bomb, is refused with
a 400 and not stored; videos, recognised by their container, are checked when a message uses
them, as `app.media.video_decode` checks every video), `batch` (JSONL input of the batch API), and
`batch_output` (written by cascade's batch workers, never uploaded by clients).
A crash between the rename and the metadata write leaves an orphan file; `sweep()` removes
orphans and expired files and can run at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from typing import IO, Any, Literal

import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ConfigDict

from app.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from app.media.config import MediaSettings
from app.media.decode import ImageLimits, check_image
from app.media.errors import human_bytes
from app.media.video_decode import sniff_container

log = structlog.get_logger(__name__)

FilePurpose = Literal["vision", "batch", "batch_output"]
PURPOSES: tuple[str, ...] = ("vision", "batch", "batch_output")
UPLOAD_PURPOSES: tuple[str, ...] = ("vision", "batch")
FILE_ID_RE = re.compile(r"file-[0-9a-f]{24}")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_FLUSH_AT = 1 << 20
# `expires_after[seconds]` bounds, as OpenAI's: one hour to thirty days.
MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS = 3600, 30 * 86_400


class FileObject(BaseModel):
    """The OpenAI file object."""

    model_config = ConfigDict(frozen=True)

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    def to_openai(self) -> dict[str, Any]:
        return self.model_dump()


def clean_filename(name: str | None) -> str:
    """A display name: the last path component, no control characters, at most 255 chars.

    It is metadata only: file bytes are stored under the file id, never under this name.
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return base[:255] or "upload"


def _looks_like_image(head: bytes) -> bool:
    if head.startswith(_IMAGE_MAGIC):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileWriter:
    """One upload in progress. `write` chunks, then `commit` (or `abort` on any failure)."""

    def __init__(
        self,
        store: FileStore,
        owner: str,
        filename: str,
        max_bytes: int,
        purpose: str | None = None,
    ) -> None:
        self.store = store
        self.purpose = purpose
        self.owner = owner
        self.filename = clean_filename(filename)
        self.max_bytes = max_bytes
        self.size = 0
        self.head = b""
        self._buffer: list[bytes] = []
        self._buffered = 0
        store.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._tmp = store.root / f".upload-{secrets.token_hex(8)}.tmp"
        self._fh: IO[bytes] | None = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort

    async def write(self, chunk: bytes) -> None:
        """Append bytes; 413 as soon as the upload passes `max_bytes`."""
        if self._fh is None:
            raise RuntimeError("upload already finished")
        self.size += len(chunk)
        if self.size > self.max_bytes:
            await self.abort()
            what = f"{self.purpose} file" if self.purpose else "file"
            raise PayloadTooLargeError(
                f"{what} larger than {human_bytes(self.max_bytes)}", code="file_too_large"
            )
        if len(self.head) < 16:
            self.head = (self.head + chunk)[:16]
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= _FLUSH_AT:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer and self._fh is not None:
            data = b"".join(self._buffer)
            self._buffer, self._buffered = [], 0
            await asyncio.to_thread(self._fh.write, data)

    async def commit(self, purpose: str, *, expires_after: int | None = None) -> FileObject:
        """Check the finished upload against `purpose`, move it into place, record it."""
        try:
            if purpose not in PURPOSES:
                raise InvalidRequestError(f"unknown file purpose {purpose!r}", param="purpose")
            limit = self.store.settings.file_max_bytes(purpose)
            if self.size > limit:
                raise PayloadTooLargeError(
                    f"{purpose} file larger than {human_bytes(limit)}", code="file_too_large"
                )
            if self.size == 0:
                raise InvalidRequestError("file is empty", param="file")
            video = purpose == "vision" and sniff_container(self.head[:16]) is not None
            if purpose == "vision" and not video and not _looks_like_image(self.head):
                raise InvalidRequestError(
                    "vision file is not an image (JPEG, PNG, WEBP, GIF or BMP) or a video "
                    "(MP4/MOV, WebM/Matroska)",
                    param="file",
                )
            await self._flush()
            fh, self._fh = self._fh, None
            if fh is None:
                raise RuntimeError("upload already finished")
            await asyncio.to_thread(_close_synced, fh)
            if purpose == "vision" and not video:
                limits = ImageLimits.from_settings(self.store.settings)
                await asyncio.to_thread(_check_image_file, self._tmp, limits)
            file_id = "file-" + secrets.token_hex(12)
            final = self.store.path(file_id)
            await asyncio.to_thread(os.replace, self._tmp, final)
            await asyncio.to_thread(_fsync_dir, self.store.root)
        except BaseException:
            await self.abort()
            raise
        try:
            return await self.store._record(
                file_id,
                owner=self.owner,
                size=self.size,
                filename=self.filename,
                purpose=purpose,
                expires_after=expires_after,
            )
        except BaseException:
            with contextlib.suppress(OSError):
                final.unlink()
            raise

    async def abort(self) -> None:
        """Drop the upload (idempotent)."""
        fh, self._fh = self._fh, None
        self._buffer, self._buffered = [], 0
        if fh is not None:
            fh.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


def _check_image_file(path: Path, limits: ImageLimits) -> None:
    """Refuse a vision file that image intake would refuse from its header (format, pixels,
    decode memory), so that a decompression bomb is never stored."""
    with path.open("rb") as fh:
        check_image(fh, limits)


def _close_synced(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


class FileStore:
    """Owner-scoped files: create, get, list, open, read, delete."""

    def __init__(self, redis: aioredis.Redis, root: Path, settings: MediaSettings) -> None:
        self.redis = redis
        self.root = root
        self.settings = settings
        self.prefix = settings.key_prefix

    # --- keys and paths ---
    def meta_key(self, file_id: str) -> str:
        return f"{self.prefix}:file:{file_id}"

    def owner_key(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:files"

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def max_upload_bytes(self) -> int:
        """The largest upload any client purpose allows."""
        return max(self.settings.file_max_bytes(p) for p in UPLOAD_PURPOSES)

    # --- writing ---
    def writer(self, owner: str, filename: str, *, purpose: str | None = None) -> FileWriter:
        """Start an upload. Its size cap is the purpose's, or the largest any upload purpose
        allows while the purpose is not known yet (multipart field order); `commit` checks the
        purpose's cap again."""
        limit = (
            self.settings.file_max_bytes(purpose)
            if purpose in PURPOSES
            else self.max_upload_bytes()
        )
        return FileWriter(self, owner, filename, limit, purpose if purpose in PURPOSES else None)

    async def create(
        self,
        owner: str,
        *,
        filename: str,
        purpose: str,
        content: bytes | AsyncIterable[bytes],
        expires_after: int | None = None,
    ) -> FileObject:
        """Store a whole file from bytes or an async byte stream."""
        if purpose not in PURPOSES:
            raise InvalidRequestError(f"unknown file purpose {purpose!r}", param="purpose")
        writer = self.writer(owner, filename, purpose=purpose)
        try:
            if isinstance(content, bytes):
                await writer.write(content)
            else:
                async for chunk in content:
                    await writer.write(chunk)
        except BaseException:
            await writer.abort()
            raise
        return await writer.commit(purpose, expires_after=expires_after)

    async def _record(
        self,
        file_id: str,
        *,
        owner: str,
        size: int,
        filename: str,
        purpose: str,
        expires_after: int | None,
    ) -> FileObject:
        now = time.time()
        created_at = int(now)
        expires_at = None
        if expires_after is not None:
            if not MIN_EXPIRY_SECONDS <= expires_after <= MAX_EXPIRY_SECONDS:
                raise InvalidRequestError(
                    f"expires_after seconds must be between {MIN_EXPIRY_SECONDS} and "
                    f"{MAX_EXPIRY_SECONDS}",
                    param="expires_after",
                )
            expires_at = created_at + expires_after
        obj = FileObject(
            id=file_id,
            bytes=size,
            created_at=created_at,
            filename=filename,
            purpose=purpose,
            expires_at=expires_at,
        )
        key = self.meta_key(file_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "id": file_id,
                    "owner": owner,
                    "bytes": size,
                    "created_at": created_at,
                    "filename": filename,
                    "purpose": purpose,
                    "expires_at": "" if expires_at is None else expires_at,
                },
            )
            if expires_at is not None:
                pipe.expireat(key, expires_at)
            await pipe.execute()
        # Then the index (another cluster slot). Not before: `list` drops an indexed id without
        # a record, so it could drop this one meanwhile. If this fails, the caller gets the
        # error, never the id: the file stays, unlisted, until it expires (or for good when it
        # has no expiry; a Redis error in this one-command window is the price of two slots).
        await self.redis.zadd(self.owner_key(owner), {file_id: int(now * 1_000_000)})
        log.info("file_created", file_id=file_id, purpose=purpose, bytes=size)
        return obj

    # --- reading ---
    @staticmethod
    def _parse(fields: dict[Any, Any]) -> tuple[str, FileObject] | None:
        if not fields:
            return None
        text = {
            (k.decode() if isinstance(k, bytes) else k): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in fields.items()
        }
        expires = text.get("expires_at") or None
        obj = FileObject(
            id=text["id"],
            bytes=int(text["bytes"]),
            created_at=int(text["created_at"]),
            filename=text["filename"],
            purpose=text["purpose"],
            expires_at=int(expires) if expires else None,
        )
        return text["owner"], obj

    async def get(self, owner: str, file_id: str) -> FileObject:
        """The owner's file; 404 if it does not exist, expired, or belongs to someone else."""
        if FILE_ID_RE.fullmatch(file_id):
            parsed = self._parse(await self.redis.hgetall(self.meta_key(file_id)))
            if parsed is not None and parsed[0] == owner and not _expired(parsed[1]):
                return parsed[1]
        raise NotFoundError(f"no file with id {file_id!r}", code="file_not_found", param="file_id")

    async def list(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> tuple[list[FileObject], bool]:
        """A page of the owner's files by creation time and whether more follow."""
        index = self.owner_key(owner)
        start = 0
        if after is not None:
            if order == "desc":
                rank: Any = await self.redis.zrevrank(index, after)
            else:
                rank = await self.redis.zrank(index, after)
            if rank is None:
                raise InvalidRequestError(f"unknown cursor {after!r}", param="after")
            start = int(rank) + 1
        found: list[FileObject] = []
        batch = min(max(limit + 1, 32), 1000)
        while len(found) <= limit:
            stop = start + batch - 1
            raw_ids: list[Any] = await (
                self.redis.zrevrange(index, start, stop)
                if order == "desc"
                else self.redis.zrange(index, start, stop)
            )
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw_ids]
            if not ids:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                for fid in ids:
                    pipe.hgetall(self.meta_key(fid))
                rows = await pipe.execute()
            stale: list[str] = []
            for fid, fields in zip(ids, rows, strict=True):
                parsed = self._parse(fields)
                if parsed is None or _expired(parsed[1]):
                    stale.append(fid)
                    continue
                if purpose is None or parsed[1].purpose == purpose:
                    found.append(parsed[1])
            if stale:
                await self.redis.zrem(index, *stale)
                start -= len(stale)
            start += len(ids)
        return found[:limit], len(found) > limit

    async def open(self, owner: str, file_id: str) -> IO[bytes]:
        """The file opened for binary reading (the caller closes it). The open file stays
        readable even if the file is deleted meanwhile."""
        await self.get(owner, file_id)
        try:
            return await asyncio.to_thread(open, self.path(file_id), "rb")
        except FileNotFoundError:
            raise NotFoundError(
                f"no file with id {file_id!r}", code="file_not_found", param="file_id"
            ) from None

    async def read_bytes(self, owner: str, file_id: str, *, max_bytes: int | None = None) -> bytes:
        """The whole file; `PayloadTooLargeError` if it is larger than `max_bytes`."""
        obj = await self.get(owner, file_id)
        if max_bytes is not None and obj.bytes > max_bytes:
            raise PayloadTooLargeError(f"file larger than {human_bytes(max_bytes)}")
        fh = await self.open(owner, file_id)
        try:
            return await asyncio.to_thread(fh.read)
        finally:
            fh.close()

    async def iter_bytes(
        self, owner: str, file_id: str, *, chunk_size: int = 1 << 16
    ) -> AsyncGenerator[bytes, None]:
        """The file's bytes in chunks, read off the event loop."""
        fh = await self.open(owner, file_id)
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    # --- deleting ---
    async def delete(self, owner: str, file_id: str) -> None:
        """Delete the owner's file (404 if it is not theirs or does not exist)."""
        await self.get(owner, file_id)
        # The record, then the index entry (two cluster slots; `list` drops an entry left over).
        await self.redis.delete(self.meta_key(file_id))
        await self.redis.zrem(self.owner_key(owner), file_id)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(file_id).unlink)
        log.info("file_deleted", file_id=file_id)

    async def sweep(self, *, grace_seconds: float = 3600.0) -> int:
        """Remove files without live metadata (expired, orphaned by a crash) and stale
        temporary uploads older than `grace_seconds`. Returns how many files were removed."""
        if not self.root.is_dir():
            return 0
        removed = 0
        now = time.time()
        for entry in await asyncio.to_thread(lambda: list(self.root.iterdir())):
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if entry.name.startswith(".upload-"):
                stale = age > grace_seconds
            elif FILE_ID_RE.fullmatch(entry.name):
                parsed = self._parse(await self.redis.hgetall(self.meta_key(entry.name)))
                gone = parsed is None or _expired(parsed[1])
                stale = gone and age > grace_seconds if parsed is None else gone
            else:
                continue
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                removed += 1
        return removed


def _expired(obj: FileObject) -> bool:
    return obj.expires_at is not None and obj.expires_at <= time.time()
