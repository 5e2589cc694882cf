"""Video intake: every `video_url` part becomes a checked, sampled, stored `VideoRef`.

Accepted references (the `url` of a `video_url` part): an `https://`/`http://` URL (fetched
under the same SSRF policy and fetcher as images), a `data:video/…;base64,…` URI, or the id of
a file uploaded with purpose `vision`. The bytes are checked and sampled to the frames Qwen3.6
sees (`app.media.video_decode`), and the resulting MP4 is stored once under its sha256 in Redis
(`{prefix}:media:video:{sha256}`, a hash: data, width, height, frames, fps) with a TTL every
use renews. Sessions keep only the reference part:
`{"type": "video_ref", "sha256", "width", "height", "frames", "fps"}`; the runtime gets
`{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,…"}}` built from the stored
bytes, identical every turn. As for images, a source (URL, or sha256 of the input bytes) is
remembered under a digest of the sampling settings, so it is fetched and decoded once.

Per-request limits: `request_max_videos` videos (400 before anything is fetched), each at most
`video_max_bytes` (400), counted against the request's image byte budget too (413).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import structlog

from app.errors import InvalidRequestError, NotFoundError
from app.media.config import MediaSettings
from app.media.errors import VideoError
from app.media.fetch import SafeFetcher
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
from app.media.video_decode import OUTPUT_MEDIA_TYPE, PreparedVideo, VideoLimits, prepare_video

if TYPE_CHECKING:
    from app.media.intake import ImageBudget

log = structlog.get_logger(__name__)

VIDEO_PART_TYPES = ("video_url", "video_ref")
ACCEPT_VIDEO = ("video/*", "application/octet-stream", "binary/octet-stream")
PIPELINE_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class VideoRef:
    """A sampled video in the store: what a session keeps instead of the video."""

    sha256: str
    width: int
    height: int
    frames: int
    fps: str  # the clip's frame rate as a fraction ("2", "1573/1000")

    def to_part(self) -> dict[str, Any]:
        return {
            "type": "video_ref",
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "fps": self.fps,
        }

    @classmethod
    def from_part(cls, part: Mapping[str, Any]) -> VideoRef:
        """Parse a `video_ref` part (or the same fields); 400 if it is malformed."""
        sha, fps = part.get("sha256"), part.get("fps")
        numbers = [part.get(k) for k in ("width", "height", "frames")]
        try:
            Fraction(str(fps))
        except (ValueError, ZeroDivisionError):
            fps = None
        if (
            not isinstance(sha, str)
            or not _SHA256.fullmatch(sha)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in numbers)
            or not isinstance(fps, str)
        ):
            raise InvalidRequestError("malformed video_ref content part", code="invalid_video_ref")
        width, height, frames = (int(n) for n in numbers if isinstance(n, int))
        return cls(sha, width, height, frames, fps)


class VideoStore:
    """Sampled videos by content hash, and source → video aliases."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def key(self, sha256: str) -> str:
        return f"{self.prefix}:media:video:{sha256}"

    def alias_key(self, variant: str, source: str) -> str:
        digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.prefix}:media:video-src:{variant}:{digest}"

    async def put(self, video: PreparedVideo) -> VideoRef:
        """Store a sampled clip (idempotent: the key is its sha256) and renew its TTL."""
        ref = VideoRef(
            hashlib.sha256(video.data).hexdigest(),
            video.width,
            video.height,
            video.frames,
            str(video.fps),
        )
        key = self.key(ref.sha256)
        fields: dict[str | bytes, bytes | str | int] = {
            "data": video.data,
            "width": ref.width,
            "height": ref.height,
            "frames": ref.frames,
            "fps": ref.fps,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, self.ttl_seconds)
            await pipe.execute()
        return ref

    async def data(self, sha256: str) -> bytes | None:
        """The stored clip's bytes (renewing its TTL), or None if it is gone."""
        key = self.key(sha256)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, "data")
            pipe.expire(key, self.ttl_seconds)
            data, _ = await pipe.execute()
        return bytes(data) if data is not None else None

    async def touch(self, sha256: str) -> bool:
        return bool(await self.redis.expire(self.key(sha256), self.ttl_seconds))

    async def get_alias(self, variant: str, source: str) -> VideoRef | None:
        value = await self.redis.get(self.alias_key(variant, source))
        if value is None:
            return None
        try:
            ref = VideoRef.from_part(json.loads(value))
        except (ValueError, InvalidRequestError):
            return None
        return ref if await self.touch(ref.sha256) else None

    async def set_alias(self, variant: str, source: str, ref: VideoRef, *, ttl: int) -> None:
        if ttl > 0:
            value = json.dumps(ref.to_part(), sort_keys=True)
            await self.redis.set(self.alias_key(variant, source), value, ex=ttl)


class VideoIntake:
    """Turns video references into stored `VideoRef`s and refs back into runtime input."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: MediaSettings,
        *,
        fetcher: SafeFetcher,
        policy: FetchPolicy,
        files: FileStore | None,
    ) -> None:
        self.settings = settings
        self.fetcher = fetcher
        self.policy = policy
        self.files = files
        self.store = VideoStore(
            redis, prefix=settings.key_prefix, ttl_seconds=settings.image_ttl_seconds
        )
        self.limits = VideoLimits.from_settings(settings)
        self.kind = MediaKind(
            "video", "a video", ACCEPT_VIDEO, VideoError, settings.video_max_bytes
        )
        digest = json.dumps([PIPELINE_VERSION, repr(self.limits.sampling)])
        self.variant = hashlib.sha256(digest.encode()).hexdigest()[:16]
        self._slots = asyncio.Semaphore(settings.video_decode_concurrency)

    def check_count(self, count: int) -> None:
        """400 when a request names more videos than `request_max_videos`."""
        if count > self.settings.request_max_videos:
            raise VideoError(
                f"too many videos in one request: {count} "
                f"(at most {self.settings.request_max_videos})",
                code="too_many_videos",
            )

    async def ingest_part(
        self, part: Mapping[str, Any], *, owner: str, budget: ImageBudget
    ) -> dict[str, Any]:
        """The `video_ref` part standing for a `video_url` or (still stored) `video_ref` part."""
        if part.get("type") == "video_ref":
            ref = VideoRef.from_part(part)
            if not await self.store.touch(ref.sha256):
                raise _expired(ref)
            return ref.to_part()
        return (
            await self.ingest(part_reference(part, self.kind), owner=owner, budget=budget)
        ).to_part()

    async def ingest(self, url: str, *, owner: str, budget: ImageBudget) -> VideoRef:
        reference = url.strip()
        lowered = reference[:8].lower()
        if lowered.startswith("data:"):
            return await self._from_bytes(decode_data_uri(reference, budget, self.kind), budget)
        if reference.startswith("file-"):
            return await self._from_file(reference, owner, budget)
        if _URL_SCHEME.match(reference):
            return await self._from_url(reference, budget)
        raise InvalidRequestError(
            "unsupported video reference: use an http(s) URL, a data: URI or an uploaded file "
            "id (file-…)",
            code="unsupported_video_reference",
        )

    async def _from_url(self, url: str, budget: ImageBudget) -> VideoRef:
        what = "video URL"
        self.policy.parse_url(url, what=what)
        cached = await self.store.get_alias(self.variant, "url:" + url)
        if cached is not None:
            return cached
        content = await fetch_within_budget(self.fetcher, url, budget, self.kind, self.settings)
        ref = await self._from_bytes(content, budget)
        await self.store.set_alias(
            self.variant, "url:" + url, ref, ttl=self.settings.image_url_cache_ttl
        )
        return ref

    async def _from_file(self, file_id: str, owner: str, budget: ImageBudget) -> VideoRef:
        obj = await vision_file(self.files, owner, file_id, self.kind)
        check_size(obj.bytes, budget, self.kind)
        assert self.files is not None  # vision_file found it there
        return await self._from_bytes(await self.files.read_bytes(owner, file_id), budget)

    async def _from_bytes(self, raw: bytes, budget: ImageBudget) -> VideoRef:
        check_size(len(raw), budget, self.kind)
        source = "src:" + hashlib.sha256(raw).hexdigest()
        cached = await self.store.get_alias(self.variant, source)
        if cached is not None:
            return cached
        budget.spend(len(raw))
        async with self._slots:
            # A cancelled caller leaves the thread running; the deadline in prepare_video
            # bounds it.
            prepared = await asyncio.to_thread(prepare_video, raw, self.limits)
        ref = await self.store.put(prepared)
        await self.store.set_alias(self.variant, source, ref, ttl=self.settings.image_ttl_seconds)
        log.info("video_stored", sha256=ref.sha256, frames=ref.frames)
        return ref

    async def data_uri(self, part: Mapping[str, Any]) -> str:
        """`data:video/mp4;base64,…` of a stored clip; byte-identical every time. Renews its
        TTL; 404 (`video_expired`) if it is no longer stored."""
        ref = VideoRef.from_part(part)
        data = await self.store.data(ref.sha256)
        if data is None:
            raise _expired(ref)
        return f"data:{OUTPUT_MEDIA_TYPE};base64,{base64.b64encode(data).decode('ascii')}"


def _expired(ref: VideoRef) -> NotFoundError:
    return expired("video", ref.sha256)
