"""Images and files coming in: SSRF-safe fetching, safe decoding, resizing to what the model
sees, content-addressed storage, and the `/v1/files` store.

The agent loop uses `ImageIntake`; tools that fetch URLs use `safe_fetch` / `SafeFetcher`.
"""

from app.media.config import MediaSettings
from app.media.errors import FetchError, ImageError, URLNotAllowedError
from app.media.fetch import FetchResult, SafeFetcher, safe_fetch
from app.media.files import FileObject, FileStore
from app.media.intake import ImageBudget, ImageIntake
from app.media.ssrf import FetchPolicy
from app.media.store import ImageRef

__all__ = [
    "FetchError",
    "FetchPolicy",
    "FetchResult",
    "FileObject",
    "FileStore",
    "ImageBudget",
    "ImageError",
    "ImageIntake",
    "ImageRef",
    "MediaSettings",
    "SafeFetcher",
    "URLNotAllowedError",
    "safe_fetch",
]
