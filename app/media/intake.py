"""Image intake: every image a request names becomes a checked, resized, stored `ImageRef`.

Accepted references (the `url` of an `image_url` part):
  - `https://…` / `http://…`: fetched under the SSRF policy (`app.media.fetch`);
  - `data:image/…;base64,…`;
  - `file-…`: a file the caller uploaded through `POST /v1/files` with purpose `vision`;
  - an absolute path or `file://` URL inside one of `CASCADE_LOCAL_IMAGE_DIRS`. The path is
    resolved, must lie inside an allowed directory, and is then opened one component at a time
    with O_NOFOLLOW from that directory, so no link can lead out of it (not even one swapped in
    between the check and the open).
Anything else is a 400. Each image is decoded and normalised (`app.media.decode`), stored by
content hash (`app.media.store`), and replaced in the message by an `image_ref` part. The same
URL or the same source bytes are processed once (aliases), and the same image always yields the
same bytes and the same `data:` URI for the runtime.

Per-request limits (`ImageBudget`): at most `request_max_images` images (400 before anything
is fetched) and `request_max_image_bytes` of input read in total (413); one image may not
exceed `image_max_bytes` (400).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import redis.asyncio as aioredis
import structlog
from PIL import Image

from app.errors import CascadeError, InvalidRequestError, NotFoundError
from app.media.config import MediaSettings
from app.media.decode import ImageLimits, PreparedImage, decode_stored, prepare_image, prepare_pil
from app.media.errors import ImageError, ImagesTooLargeError, human_bytes
from app.media.fetch import Resolver, SafeFetcher
from app.media.files import FileStore
from app.media.sources import (
    MediaKind,
    check_size,
    decode_data_uri,
    expired,
    fetch_within_budget,
    part_reference,
    vision_file,
)
from app.media.ssrf import FetchPolicy
from app.media.store import ImageRef, ImageStore
from app.media.video import VIDEO_PART_TYPES, VideoIntake

__all__ = ["MEDIA_PART_TYPES", "ImageBudget", "ImageIntake", "ImageRef"]

log = structlog.get_logger(__name__)

# Bump when the pipeline's output for the same input changes: old aliases are then ignored.
PIPELINE_VERSION = 2
IMAGE_PART_TYPES = ("image_url", "image_ref")
# Parts intake replaces: images, and videos (`app.media.video`).
MEDIA_PART_TYPES = IMAGE_PART_TYPES + VIDEO_PART_TYPES
ACCEPT_IMAGE = ("image/*", "application/octet-stream", "binary/octet-stream")
_URI_CACHE_CHARS = 64 * 1024 * 1024
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass
class ImageBudget:
    """Per-request image limits; share one across all messages of a request."""

    max_images: int
    max_bytes: int
    images: int = 0
    bytes: int = 0
    videos: int = 0  # counted against `request_max_videos` by the video intake

    @classmethod
    def from_settings(cls, settings: MediaSettings) -> ImageBudget:
        return cls(settings.request_max_images, settings.request_max_image_bytes)

    def add_images(self, count: int) -> None:
        if self.images + count > self.max_images:
            raise ImageError(
                f"too many images in one request: {self.images + count} "
                f"(at most {self.max_images})",
                code="too_many_images",
            )
        self.images += count

    @property
    def remaining_bytes(self) -> int:
        return max(0, self.max_bytes - self.bytes)

    def spend(self, size: int) -> None:
        if self.bytes + size > self.max_bytes:
            raise self.exceeded()
        self.bytes += size

    def exceeded(self) -> ImagesTooLargeError:
        return ImagesTooLargeError(
            f"images in this request are larger than {human_bytes(self.max_bytes)} in total"
        )


class ImageIntake:
    """Turns image references into stored `ImageRef`s and refs back into runtime input."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: MediaSettings,
        *,
        files: FileStore | None = None,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.files = files
        self.store = ImageStore(
            redis, prefix=settings.key_prefix, ttl_seconds=settings.image_ttl_seconds
        )
        self.policy = FetchPolicy(allow=settings.fetch_allow_hosts, deny=settings.fetch_deny_hosts)
        self.fetcher = SafeFetcher(self.policy, resolver=resolver, transport=transport)
        self.videos = VideoIntake(
            redis, settings, fetcher=self.fetcher, policy=self.policy, files=files
        )
        self.limits = ImageLimits.from_settings(settings)
        self.kind = MediaKind(
            "image", "an image", ACCEPT_IMAGE, ImageError, settings.image_max_bytes
        )
        settings_digest = json.dumps(
            [
                PIPELINE_VERSION,
                self.limits.min_pixels,
                self.limits.max_pixels,
                self.limits.jpeg_quality,
            ]
        )
        self.variant = hashlib.sha256(settings_digest.encode()).hexdigest()[:16]
        self._decode_slots = asyncio.Semaphore(settings.image_decode_concurrency)
        self._uris: OrderedDict[str, str] = OrderedDict()
        self._uri_chars = 0

    # --- intake ---
    async def ingest(self, url: str, *, owner: str, budget: ImageBudget | None = None) -> ImageRef:
        """Check, process and store the image `url` names (see the module docstring)."""
        budget = budget or ImageBudget.from_settings(self.settings)
        reference = url.strip()
        lowered = reference[:8].lower()
        if lowered.startswith("data:"):
            return await self._from_data_uri(reference, budget)
        if reference.startswith("file-"):
            return await self._from_file(reference, owner, budget)
        if lowered.startswith("file://") or reference.startswith("/"):
            return await self._from_path(reference, budget)
        if _URL_SCHEME.match(reference):
            # http(s), and any other scheme so that the policy names it in its refusal.
            return await self._from_url(reference, budget)
        raise InvalidRequestError(
            "unsupported image reference: use an http(s) URL, a data: URI, an uploaded file id "
            "(file-…) or a path inside an allowed local directory",
            code="unsupported_image_reference",
        )

    async def ingest_message_parts(
        self,
        parts: Sequence[Mapping[str, Any]],
        *,
        owner: str,
        budget: ImageBudget | None = None,
    ) -> list[dict[str, Any]]:
        """A copy of `parts` with every `image_url` part replaced by an
        `image_ref` part and every `video_url` part by a `video_ref` part
        (`app.media.video`), in order. Existing `image_ref`/`video_ref` parts must still be
        stored. The image and video counts are checked before anything is fetched; errors
        carry the part's index as `param`.
        """
        budget = budget or ImageBudget.from_settings(self.settings)
        budget.add_images(sum(1 for p in parts if p.get("type") in IMAGE_PART_TYPES))
        budget.videos += sum(1 for p in parts if p.get("type") in VIDEO_PART_TYPES)
        self.videos.check_count(budget.videos)
        out: list[dict[str, Any]] = []
        for index, part in enumerate(parts):
            kind = part.get("type")
            try:
                if kind == "image_url":
                    url = part_reference(part, self.kind)
                    ref = await self.ingest(url, owner=owner, budget=budget)
                    out.append(ref.to_part())
                elif kind == "image_ref":
                    ref = ImageRef.from_part(part)
                    if not await self.store.touch(ref.sha256):
                        raise _expired(ref)
                    out.append(ref.to_part())
                elif kind in VIDEO_PART_TYPES:
                    out.append(await self.videos.ingest_part(part, owner=owner, budget=budget))
                else:
                    out.append(dict(part))
            except CascadeError as exc:
                if exc.param is None:
                    exc.param = f"content[{index}]"
                raise
        return out

    async def _from_url(self, url: str, budget: ImageBudget) -> ImageRef:
        what = "image URL"
        self.policy.parse_url(url, what=what)  # form and deny list, even for cached URLs
        cached = await self.store.get_alias("url", self.variant, url)
        if cached is not None:
            return cached
        content = await fetch_within_budget(self.fetcher, url, budget, self.kind, self.settings)
        budget.spend(len(content))
        ref = await self._process(content)
        await self.store.set_alias(
            "url", self.variant, url, ref, ttl_seconds=self.settings.image_url_cache_ttl
        )
        log.info("image_fetched", host=urlsplit(url).hostname, sha256=ref.sha256)
        return ref

    async def _from_data_uri(self, uri: str, budget: ImageBudget) -> ImageRef:
        raw = decode_data_uri(uri, budget, self.kind, urlsafe=True)
        return await self._from_bytes(raw, budget)

    async def _from_file(self, file_id: str, owner: str, budget: ImageBudget) -> ImageRef:
        obj = await vision_file(self.files, owner, file_id, self.kind)
        source = f"file:{file_id}"
        cached = await self.store.get_alias("src", self.variant, source)
        if cached is not None:
            return cached
        check_size(obj.bytes, budget, self.kind)
        assert self.files is not None  # vision_file found it there
        raw = await self.files.read_bytes(owner, file_id)
        ref = await self._from_bytes(raw, budget)
        await self.store.set_alias(
            "src", self.variant, source, ref, ttl_seconds=self.settings.image_ttl_seconds
        )
        return ref

    async def _from_path(self, reference: str, budget: ImageBudget) -> ImageRef:
        if reference[:7].lower() == "file://":
            parts = urlsplit(reference)
            if parts.netloc not in ("", "localhost"):
                raise ImageError("file:// URLs must not name a host", code="path_not_allowed")
            path = unquote(parts.path)
        else:
            path = reference
        if "\x00" in path or not path.startswith("/"):
            raise ImageError("image path must be absolute", code="path_not_allowed")
        if not self.settings.local_image_dirs:
            raise ImageError(
                "local image paths are not enabled (the operator can allow directories with "
                "CASCADE_LOCAL_IMAGE_DIRS)",
                code="path_not_allowed",
            )
        limit = min(self.settings.image_max_bytes, budget.remaining_bytes)
        raw, too_big = await asyncio.to_thread(
            _read_beneath, path, self.settings.local_image_dirs, limit
        )
        if too_big:
            check_size(limit + 1, budget, self.kind)
        return await self._from_bytes(raw, budget)

    async def _from_bytes(self, raw: bytes, budget: ImageBudget) -> ImageRef:
        check_size(len(raw), budget, self.kind)
        source = hashlib.sha256(raw).hexdigest()
        cached = await self.store.get_alias("src", self.variant, source)
        if cached is not None:
            return cached
        budget.spend(len(raw))
        ref = await self._process(raw)
        await self.store.set_alias(
            "src", self.variant, source, ref, ttl_seconds=self.settings.image_ttl_seconds
        )
        return ref

    async def _process(self, raw: bytes) -> ImageRef:
        prepared = await self._prepare(prepare_image, raw, self.limits)
        return await self.store.put(
            prepared.data,
            width=prepared.width,
            height=prepared.height,
            media_type=prepared.media_type,
        )

    async def _prepare(
        self, func: Callable[..., PreparedImage], *args: Any, **kwargs: Any
    ) -> PreparedImage:
        """Run a decode in a thread while holding one of the `image_decode_concurrency` slots.

        A thread cannot be stopped: when the caller is cancelled (a client hangs up), the slot
        stays taken until the thread is done, so abandoned decodes still count.
        """
        await self._decode_slots.acquire()
        try:
            work = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
        except BaseException:
            self._decode_slots.release()
            raise
        work.add_done_callback(self._decode_done)
        return await asyncio.shield(work)

    def _decode_done(self, work: asyncio.Future[PreparedImage]) -> None:
        self._decode_slots.release()
        if not work.cancelled():
            work.exception()  # retrieved here when the caller was cancelled and never will be

    # --- output ---
    async def data_uri(self, ref: ImageRef | Mapping[str, Any]) -> str:
        """`data:<media type>;base64,<bytes>` of a stored image; byte-identical every time.
        Renews the image's TTL; 404 (`image_expired`) if it is no longer stored."""
        ref = ref if isinstance(ref, ImageRef) else ImageRef.from_part(ref)
        cached = self._uris.get(ref.sha256)
        if cached is not None:
            self._uris.move_to_end(ref.sha256)
            if not await self.store.touch(ref.sha256):
                # Evicted from Redis meanwhile: store it again from the cached copy.
                data = base64.b64decode(cached.partition(",")[2])
                await self.store.put(
                    data, width=ref.width, height=ref.height, media_type=ref.media_type
                )
            return cached
        found = await self.store.get(ref.sha256)
        if found is None:
            raise _expired(ref)
        stored, data = found
        uri = f"data:{stored.media_type};base64,{base64.b64encode(data).decode('ascii')}"
        self._remember(ref.sha256, uri)
        return uri

    async def video_data_uri(self, part: Mapping[str, Any]) -> str:
        """`data:video/mp4;base64,…` of a stored `video_ref` (see `VideoIntake.data_uri`)."""
        return await self.videos.data_uri(part)

    def _remember(self, sha256: str, uri: str) -> None:
        self._uris[sha256] = uri
        self._uri_chars += len(uri)
        while self._uri_chars > _URI_CACHE_CHARS and len(self._uris) > 1:
            _, dropped = self._uris.popitem(last=False)
            self._uri_chars -= len(dropped)

    async def load_image(self, ref: ImageRef | Mapping[str, Any]) -> Image.Image:
        """The stored image as an RGB PIL image (for tools such as zooming)."""
        ref = ref if isinstance(ref, ImageRef) else ImageRef.from_part(ref)
        found = await self.store.get(ref.sha256)
        if found is None:
            raise _expired(ref)
        return await asyncio.to_thread(decode_stored, found[1])

    async def put_image(self, image: Image.Image, *, lossless: bool = True) -> ImageRef:
        """Store a new image (a crop, a rendering), resized to what the model will see."""
        prepared = await self._prepare(prepare_pil, image, self.limits, lossless=lossless)
        return await self.store.put(
            prepared.data,
            width=prepared.width,
            height=prepared.height,
            media_type=prepared.media_type,
        )


def _expired(ref: ImageRef) -> NotFoundError:
    return expired("image", ref.sha256)


def _read_beneath(path: str, allowed: Sequence[Path], limit: int) -> tuple[bytes, bool]:
    """Read `path` if it resolves inside one of `allowed`, opening each component without
    following links. Returns (bytes, too_big) where too_big means more than `limit` bytes."""
    real = os.path.realpath(path)
    for directory in allowed:
        base = os.path.realpath(directory)
        if real.startswith(base.rstrip("/") + "/"):
            relative = real[len(base.rstrip("/")) + 1 :].split("/")
            break
    else:
        raise ImageError("image path is outside the allowed directories", code="path_not_allowed")
    try:
        fd = _open_beneath(base, relative)
    except FileNotFoundError:
        raise ImageError("image file not found", code="file_not_found") from None
    except OSError:
        # ELOOP (a link appeared after the check), ENOTDIR, EACCES: refuse, say little.
        raise ImageError("image path cannot be opened", code="path_not_allowed") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("image path is not a regular file", code="path_not_allowed")
        if info.st_size > limit:
            return b"", True
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return (b"", True) if size > limit else (b"".join(chunks), False)


def _open_beneath(base: str, relative: list[str]) -> int:
    flags = os.O_RDONLY | os.O_CLOEXEC
    fd = os.open(base, flags | os.O_DIRECTORY)
    try:
        for part in relative[:-1]:
            next_fd = os.open(part, flags | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        # O_NONBLOCK: opening a FIFO must not hang; it is then refused as not a regular file.
        return os.open(relative[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
