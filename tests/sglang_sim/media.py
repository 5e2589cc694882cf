"""Images in a simulated prompt: how many tokens each one costs, and a cache identity.

The runtime expands each `<|image_pad|>` placeholder into one token per 32x32 pixel patch of
the resized image (patch 16, spatial merge 2). Here the size comes from the image header of a
`data:` URI (Pillow, no full decode) and is resized the way Qwen's `smart_resize` does:
dimensions rounded to multiples of 32 and the area kept within [MIN_PIXELS, MAX_PIXELS].
The pixel limits are the processor defaults as far as known (unconfirmed for Qwen3.6).
Images given by URL are not fetched: they count a fixed `URL_IMAGE_TOKENS`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

__all__ = ["FACTOR", "MAX_PIXELS", "MIN_PIXELS", "URL_IMAGE_TOKENS", "ImageInfo", "prompt_images"]

FACTOR = 32
MIN_PIXELS = 65_536
MAX_PIXELS = 16_777_216
URL_IMAGE_TOKENS = 256


class ImageError(ValueError):
    """An image the runtime could not load (SGLang answers 500)."""


@dataclass(frozen=True)
class ImageInfo:
    """One image of the prompt: its token count and a digest standing for its pad values."""

    tokens: int
    digest: str


def _resized(height: int, width: int) -> tuple[int, int]:
    h = max(FACTOR, round(height / FACTOR) * FACTOR)
    w = max(FACTOR, round(width / FACTOR) * FACTOR)
    if h * w > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h * w < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h = math.ceil(height * beta / FACTOR) * FACTOR
        w = math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def image_info(url: str) -> ImageInfo:
    """Token count and identity of the image at `url` (a `data:` URI is measured)."""
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    if not url.startswith("data:"):
        return ImageInfo(tokens=URL_IMAGE_TOKENS, digest=digest)
    _, _, payload = url.partition(",")
    try:
        raw = base64.b64decode(payload, validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"Failed to load image: {exc}") from exc
    if width < 1 or height < 1:
        raise ImageError("Failed to load image: empty image")
    h, w = _resized(height, width)
    return ImageInfo(tokens=(h // FACTOR) * (w // FACTOR), digest=digest)


def prompt_images(messages: Sequence[Mapping[str, Any]]) -> list[ImageInfo]:
    """The images of the conversation, in prompt order."""
    found: list[ImageInfo] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, Mapping) else None
                if isinstance(url, str):
                    found.append(image_info(url))
    return found


# --- videos ---
# SGLang 0.5.23 (`multimodal/processors/qwen_vl.py`, `utils/common.py:load_video`): a
# `video_url` part's URL (a `data:` URI here; cascade never sends anything else) is decoded
# (torchcodec or decord), sampled again with qwen-vl-utils' rules at `VIDEO_FPS` (the server's
# `video_config` can change it), and each kept pair of frames costs (h/32) x (w/32) tokens.
# A video that cannot be decoded raises ValueError("Could not decode video: …") there; like an
# undecodable image it ends the request with a 500 here.
VIDEO_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 768
URL_VIDEO_TOKENS = 1024


@dataclass(frozen=True)
class VideoInfo:
    """One video of the prompt: what the runtime decoded and kept, and its token cost."""

    frames: int  # frames in the clip sent
    kept: int  # frames SGLang's own sampling keeps of them
    width: int
    height: int
    fps: float
    tokens: int
    digest: str


def _floor2(value: float) -> int:
    return math.floor(value / 2) * 2


def _kept_frames(total: int, fps: float) -> int:
    """SGLang's `smart_nframes` with the default video config."""
    low = math.ceil(VIDEO_MIN_FRAMES / 2) * 2
    high = _floor2(min(VIDEO_MAX_FRAMES, total))
    nframes = _floor2(min(min(max(total / fps * VIDEO_FPS, low), high), total))
    if not 2 <= nframes <= total:
        raise ImageError(f"nframes should in interval [2, {total}], but got {nframes}.")
    return nframes


def video_info(url: str) -> VideoInfo:
    """Decode the video at `url` (a `data:` URI) as the runtime would, and count its tokens."""
    import av  # the video extra, installed for the tests

    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    if not url.startswith("data:"):
        return VideoInfo(0, 0, 0, 0, 0.0, URL_VIDEO_TOKENS, digest)
    _, _, payload = url.partition(",")
    try:
        raw = base64.b64decode(payload, validate=True)
        with av.open(io.BytesIO(raw)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            width, height = stream.codec_context.width, stream.codec_context.height
            fps = float(stream.average_rate or 0)
    except (binascii.Error, av.FFmpegError, IndexError, ValueError) as exc:
        raise ImageError(f"Could not decode video: {type(exc).__name__}") from exc
    if frames < 1 or fps <= 0:
        raise ImageError("Could not decode video: no frames")
    kept = _kept_frames(frames, fps)
    h, w = _resized(height, width)
    tokens = kept // 2 * (h // FACTOR) * (w // FACTOR)
    return VideoInfo(frames, kept, width, height, fps, tokens, digest)


def prompt_videos(messages: Sequence[Mapping[str, Any]]) -> list[VideoInfo]:
    """The videos of the conversation, in prompt order."""
    found: list[VideoInfo] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "video_url":
                video = part.get("video_url")
                url = video.get("url") if isinstance(video, Mapping) else None
                if isinstance(url, str):
                    found.append(video_info(url))
    return found
