"""What image and video intake share: reading a reference's bytes under the request's budget.

A `MediaKind` names what differs between the two (the word for it, the media types a fetch
accepts, the error class, the per-item byte cap); the functions here are the one way a URL is
fetched, a `data:` URI decoded, an uploaded file looked up and a size checked for either, with
messages that name the kind ("image larger than 20 MB", "video file 'file-…' not found").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.errors import InvalidRequestError, NotFoundError
from app.media.errors import FetchTooLargeError, human_bytes
from app.media.fetch import SafeFetcher
from app.media.files import FILE_ID_RE, FileObject, FileStore

if TYPE_CHECKING:
    from app.media.config import MediaSettings
    from app.media.intake import ImageBudget


@dataclass(frozen=True)
class MediaKind:
    name: str  # "image", "video": in part types, error codes and messages
    a_name: str  # with its article: "an image", "a video"
    accept: tuple[str, ...]  # what a fetch asks for, and what a data: URI may say it is
    error: type[InvalidRequestError]
    max_bytes: int  # one item's cap


def part_reference(part: Mapping[str, Any], kind: MediaKind) -> str:
    """The reference string of an `image_url` / `video_url` part (`{"url": ...}` or a bare
    string)."""
    value: Any = part.get(f"{kind.name}_url")
    if isinstance(value, Mapping):
        value = value.get("url")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{kind.name}_url content part has no {kind.name} URL")
    return value.strip()


def check_size(size: int, budget: ImageBudget, kind: MediaKind) -> None:
    """400 past the kind's cap for one item, 413 past what is left of the request's bytes."""
    if size > kind.max_bytes:
        raise kind.error(
            f"{kind.name} larger than {human_bytes(kind.max_bytes)}",
            code=f"{kind.name}_too_large",
        )
    if size > budget.remaining_bytes:
        raise budget.exceeded()


def decode_data_uri(
    uri: str, budget: ImageBudget, kind: MediaKind, *, urlsafe: bool = False
) -> bytes:
    """The bytes of a base64 `data:` URI of the kind (or an octet stream), its size checked
    (`check_size`) from the payload's length before anything is decoded. `urlsafe` also takes
    the URL-safe alphabet."""
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise kind.error("malformed data: URI (no comma)")
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0]
    if "base64" not in params[1:]:
        raise kind.error(f"data: URI {kind.name}s must be base64-encoded")
    if media_type and not (media_type.startswith(f"{kind.name}/") or media_type in kind.accept):
        raise kind.error(f"data: URI is {media_type}, not {kind.a_name}")
    payload = "".join(payload.split())
    check_size((len(payload) * 3) // 4 - payload[-2:].count("="), budget, kind)
    try:
        if urlsafe and ("-" in payload or "_" in payload):
            return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise kind.error("data: URI is not valid base64") from None


async def vision_file(
    files: FileStore | None, owner: str, file_id: str, kind: MediaKind
) -> FileObject:
    """The caller's uploaded file `file_id`, which must have purpose `vision`."""
    if files is None:
        raise InvalidRequestError(f"file ids are not accepted for {kind.name}s here")
    if not FILE_ID_RE.fullmatch(file_id):
        raise kind.error(f"{kind.name} file {file_id!r} not found", code="file_not_found")
    try:
        obj = await files.get(owner, file_id)
    except NotFoundError:
        raise kind.error(f"{kind.name} file {file_id!r} not found", code="file_not_found") from None
    if obj.purpose != "vision":
        raise kind.error(f"file {file_id} has purpose {obj.purpose!r}, not 'vision'")
    return obj


async def fetch_within_budget(
    fetcher: SafeFetcher, url: str, budget: ImageBudget, kind: MediaKind, settings: MediaSettings
) -> bytes:
    """The body at `url`, capped at the kind's size and what is left of the request's bytes
    (a 413 when it is the request's bytes that run out). Not yet spent from `budget`."""
    cap = min(kind.max_bytes, budget.remaining_bytes)
    if cap <= 0:
        raise budget.exceeded()
    try:
        result = await fetcher.fetch(
            url,
            max_bytes=cap,
            time_limit=settings.fetch_timeout,
            max_redirects=settings.fetch_max_redirects,
            accept=kind.accept,
            what=f"{kind.name} URL",
            body=kind.name,
        )
    except FetchTooLargeError:
        if cap < kind.max_bytes:
            raise budget.exceeded() from None
        raise
    return result.content


def expired(name: str, sha256: str) -> NotFoundError:
    """404 for a stored `name` ("image", "video") that is gone."""
    return NotFoundError(
        f"{name} {sha256[:12]}… is no longer stored (expired); send the {name} again",
        code=f"{name}_expired",
    )
