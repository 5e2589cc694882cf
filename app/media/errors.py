"""Errors of image intake and URL fetching: 400s and 413s whose messages name the problem.

Every message is written for the client (which URL rule was broken, which limit was passed);
exception text from Pillow, httpx or the OS never appears in one.
"""

from __future__ import annotations

from app.errors import InvalidRequestError, PayloadTooLargeError


class FetchError(InvalidRequestError):
    """A URL could not be fetched (unreachable, bad status, wrong type, too slow)."""

    code = "fetch_failed"


class URLNotAllowedError(FetchError):
    """The URL or an address it resolves to is outside the fetch policy."""

    code = "url_not_allowed"


class FetchTooLargeError(FetchError):
    """The response body is larger than the cap the caller set."""

    code = "fetch_too_large"

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class ImageError(InvalidRequestError):
    """An image input that cannot be used: unsupported, corrupt, too large, too many."""

    code = "invalid_image"


class ImagesTooLargeError(PayloadTooLargeError):
    """The images of one request add up to more bytes than allowed."""

    code = "images_too_large"


def human_bytes(count: int) -> str:
    """`20971520` → `"20 MB"`, `1536` → `"1.5 KB"` (binary units, short names)."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} bytes"


class VideoError(InvalidRequestError):
    """A video input that cannot be used: not a video, an unsupported codec, over a limit,
    truncated or corrupt."""

    code = "invalid_video"


class VideoExtraMissingError(InvalidRequestError):
    """Video input arrived, but this installation has no video decoder (`cascade[video]`)."""

    code = "video_extra_missing"

    def __init__(self) -> None:
        super().__init__(
            "video input needs the video extra: install cascade[video] (PyAV) on the server"
        )
