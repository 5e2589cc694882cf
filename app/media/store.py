"""Content-addressed storage of processed images in Redis.

An image is stored once under the sha256 of its processed bytes, with a TTL that every use
renews, so the same picture in later turns or in many batch items is the same key and is sent
byte-identical (which keeps the runtime's prefix cache warm). Sessions keep `ImageRef`s
(`{"type": "image_ref", "sha256": …}`), never copies.

Aliases map a source to the processed image so it is fetched and encoded once: `url` aliases
(an http(s) URL, expiring after `image_url_cache_ttl`) and `src` aliases (sha256 of the raw
input bytes of a data URI, an uploaded file or a local file). Alias keys carry a digest of the
processing settings, so changing the pixel limits never serves images made under the old ones.

Keys: `{prefix}:media:image:{sha256}` (hash: data, width, height, media_type) and
`{prefix}:media:{url|src}:{settings digest}:{sha256 of the source}` (string: the ref as JSON).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis

from app.errors import InvalidRequestError

T = TypeVar("T")

_SHA256 = re.compile(r"[0-9a-f]{64}")
MEDIA_TYPES = frozenset({"image/png", "image/jpeg"})


async def _done(value: Awaitable[T] | T) -> T:
    """redis-py types async commands as `X | Awaitable[X]`; this awaits the awaitable case."""
    if isinstance(value, Awaitable):
        return await value
    return value


@dataclass(frozen=True)
class ImageRef:
    """A processed image in the store: what a session keeps instead of the image."""

    sha256: str
    width: int
    height: int
    media_type: str

    def to_part(self) -> dict[str, Any]:
        """The message content part that stands for this image."""
        return {
            "type": "image_ref",
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
            "media_type": self.media_type,
        }

    @classmethod
    def from_part(cls, part: Mapping[str, Any]) -> ImageRef:
        """Parse an `image_ref` part (or the same fields); 400 if it is malformed."""
        sha = part.get("sha256")
        width, height = part.get("width"), part.get("height")
        media_type = part.get("media_type", "image/png")
        if (
            not isinstance(sha, str)
            or not _SHA256.fullmatch(sha)
            or not isinstance(width, int)
            or not isinstance(height, int)
            or width < 1
            or height < 1
            or media_type not in MEDIA_TYPES
        ):
            raise InvalidRequestError("malformed image_ref content part", code="invalid_image_ref")
        return cls(sha, width, height, str(media_type))


AliasKind = Literal["url", "src"]


class ImageStore:
    """Processed images by content hash, and source → image aliases."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def image_key(self, sha256: str) -> str:
        return f"{self.prefix}:media:image:{sha256}"

    def alias_key(self, kind: AliasKind, variant: str, source: str) -> str:
        digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.prefix}:media:{kind}:{variant}:{digest}"

    async def put(self, data: bytes, *, width: int, height: int, media_type: str) -> ImageRef:
        """Store encoded image bytes (idempotent: the key is their sha256) and renew the TTL."""
        ref = ImageRef(hashlib.sha256(data).hexdigest(), width, height, media_type)
        key = self.image_key(ref.sha256)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "data": data,
                    "width": width,
                    "height": height,
                    "media_type": media_type,
                },
            )
            pipe.expire(key, self.ttl_seconds)
            await pipe.execute()
        return ref

    async def get(self, sha256: str) -> tuple[ImageRef, bytes] | None:
        """The stored image and its bytes (renewing its TTL), or None if it is gone."""
        key = self.image_key(sha256)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, self.ttl_seconds)
            fields, _ = await pipe.execute()
        if not fields:
            return None
        raw: dict[bytes | str, Any] = fields

        def field(name: str) -> Any:
            return raw.get(name.encode(), raw.get(name))

        data = field("data")
        media_type = field("media_type")
        if isinstance(data, str):
            data = data.encode("latin-1")
        if isinstance(media_type, bytes):
            media_type = media_type.decode()
        ref = ImageRef(sha256, int(field("width")), int(field("height")), str(media_type))
        return ref, bytes(data)

    async def touch(self, sha256: str) -> bool:
        """Renew the image's TTL; False if it is no longer stored."""
        return bool(await _done(self.redis.expire(self.image_key(sha256), self.ttl_seconds)))

    async def get_alias(self, kind: AliasKind, variant: str, source: str) -> ImageRef | None:
        """The image a source was processed into, if both the alias and the image still exist."""
        value = await self.redis.get(self.alias_key(kind, variant, source))
        if value is None:
            return None
        try:
            ref = ImageRef.from_part(json.loads(value))
        except (ValueError, InvalidRequestError):
            return None
        return ref if await self.touch(ref.sha256) else None

    async def set_alias(
        self, kind: AliasKind, variant: str, source: str, ref: ImageRef, *, ttl_seconds: int
    ) -> None:
        if ttl_seconds <= 0:
            return
        value = json.dumps(ref.to_part(), sort_keys=True)
        await self.redis.set(self.alias_key(kind, variant, source), value, ex=ttl_seconds)
