"""Safe image decoding and normalisation to exactly what the model will see.

`prepare_image(data, limits)` (blocking: call it through `asyncio.to_thread`):
  1. opens the bytes with Pillow restricted to JPEG, PNG, WEBP, GIF (first frame) and BMP —
     no other decoder ever sees the bytes;
  2. treats Pillow's decompression-bomb *warning* as an error, and checks width x height against
     `limits.max_source_pixels` before any pixel is decoded (`Image.open` reads the header only);
  3. bounds the memory of the decode before it starts: `decode_cost` adds up, per source pixel,
     the bytes of every full-size buffer the pipeline will hold (the decoded image in Pillow's
     storage, the codec's own buffers, a mode conversion, the premultiplied copy of an image
     with alpha), after JPEG's `draft` (libjpeg decodes at 1/2, 1/4 or 1/8 scale when the target
     is that small); more than `limits.max_decode_bytes` is refused, so a tiny file declaring
     8192x8192 pixels is a 400 without a single pixel decoded;
  4. decodes (a truncated or corrupt file is an error, never a half-grey image), shrinks by an
     integer factor (`Image.reduce`) while the image is still in a cheap mode, and only then
     applies the EXIF orientation, flattens transparency onto white and converts to RGB, so no
     full-size copy is made beyond those counted in step 3;
  5. resizes (bicubic) to `smart_resize(h, w, factor=32, min_pixels, max_pixels)`, the size
     Qwen's vision processor would pick itself, so the runtime never receives pixels it would
     throw away and never resizes again;
  6. encodes deterministically (same input → same bytes): PNG when the source was lossless
     (PNG, GIF, BMP, lossless WEBP: screenshots and diagrams keep sharp text), JPEG quality 90
     otherwise (photos: several times smaller, no visible loss after the resize). Metadata
     (EXIF with GPS, comments, ICC profiles) is not carried over.
All failures are `ImageError`s (400) with a message for the client.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import IO

import structlog
from PIL import Image, UnidentifiedImageError

from app.media.config import IMAGE_FACTOR, MediaSettings
from app.media.errors import ImageError, human_bytes
from app.media.resize import MAX_RATIO, smart_resize

log = structlog.get_logger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
# Pillow reports multi-picture JPEGs (many phone cameras) as MPO; the first picture is a JPEG.
_FORMAT_NAMES = {
    "JPEG": "JPEG",
    "MPO": "JPEG",
    "PNG": "PNG",
    "WEBP": "WEBP",
    "GIF": "GIF",
    "BMP": "BMP",
}
_LOSSLESS = frozenset({"PNG", "GIF", "BMP"})
SUPPORTED = "JPEG, PNG, WEBP, GIF or BMP"

# EXIF orientation → the transpose that makes the image upright (values 2..8; 1 = upright).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# `warnings.catch_warnings` changes process-wide state; opening (header parsing only, fast) is
# serialised so concurrent decodes cannot restore each other's filters out of order.
_OPEN_LOCK = threading.Lock()


# Bytes per pixel of Pillow's storage by mode: every mode with more than one 8-bit band is held
# in 4 bytes per pixel (RGB included).
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_TWO_BYTE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Modes `Image.reduce` takes as they are; any other is converted at full size first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Buffers a codec holds besides the image, per pixel: Pillow's WebP decoder keeps libwebp's
# RGBA canvas, a copy of it as bytes, and a frame buffer (measured: 16 bytes per pixel in all).
_CODEC_BYTES = {"WEBP": 12}
# After the integer reduction: EXIF transpose, alpha flattening and RGB conversion, resize.
_FINISH_BYTES = 16
# `Image.reduce` keeps at least this multiple of the target size for the final bicubic resize.
_REDUCING_GAP = 2


@dataclass(frozen=True)
class ImageLimits:
    """Pixel and memory limits and encoder settings of the pipeline."""

    min_pixels: int
    max_pixels: int
    max_source_pixels: int
    jpeg_quality: int = 90
    max_decode_bytes: int = 128 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: MediaSettings) -> ImageLimits:
        return cls(
            min_pixels=settings.image_min_pixels,
            max_pixels=settings.image_max_pixels,
            max_source_pixels=settings.image_max_source_pixels,
            jpeg_quality=settings.image_jpeg_quality,
            max_decode_bytes=settings.image_decode_max_bytes,
        )


@dataclass(frozen=True)
class PreparedImage:
    """An encoded image ready for the runtime, and where it came from."""

    data: bytes
    width: int
    height: int
    media_type: str  # "image/png" | "image/jpeg"
    source_format: str
    source_width: int
    source_height: int


def open_image(data: bytes | IO[bytes], *, max_source_pixels: int) -> tuple[Image.Image, str]:
    """Open `data` (header only) and check its format and size; returns (image, format)."""
    cap = max_source_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        cap = min(cap, Image.MAX_IMAGE_PIXELS)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            source = io.BytesIO(data) if isinstance(data, bytes) else data
            image = Image.open(source, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError(
            f"image has more than {cap:,} pixels", code="image_too_many_pixels"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"image is not in a supported format ({SUPPORTED})", code="unsupported_image"
        ) from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        log.info("image_open_failed", error=type(exc).__name__)
        raise ImageError("image could not be decoded (corrupt or truncated)") from None
    fmt = _FORMAT_NAMES.get(image.format or "")
    if fmt is None:
        raise ImageError(
            f"image is not in a supported format ({SUPPORTED})", code="unsupported_image"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    if width * height > cap:
        raise ImageError(
            f"image is {width}x{height} pixels; at most {cap:,} pixels are accepted",
            code="image_too_many_pixels",
        )
    return image, fmt


def target_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int]:
    """(width, height) the model will see for an upright image of this size."""
    try:
        h, w = smart_resize(
            height,
            width,
            factor=IMAGE_FACTOR,
            min_pixels=limits.min_pixels,
            max_pixels=limits.max_pixels,
        )
    except ValueError:
        raise ImageError(
            f"image aspect ratio {max(width, height)}:{min(width, height)} is more extreme "
            f"than {MAX_RATIO}:1"
        ) from None
    if h < IMAGE_FACTOR or w < IMAGE_FACTOR:
        raise ImageError("image aspect ratio is too extreme for the configured pixel limits")
    return w, h


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: treat the image as upright
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION else 1


def _webp_is_lossless(data: bytes) -> bool:
    """Whether a WEBP file's (first) image is VP8L (lossless); walks the RIFF chunks."""
    pos, end = 12, len(data)
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        if fourcc == b"ANMF":
            # An animation frame: 16 bytes of frame header, then the frame's own chunks.
            return _webp_is_lossless(b"\0" * 12 + data[pos + 24 : pos + 8 + size])
        pos += 8 + size + (size & 1)
    return False


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency flattened onto white (as qwen-vl-utils does for RGBA)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: scale to 8 bits rather than clip everything above 255 to white.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def encode(image: Image.Image, *, lossless: bool, jpeg_quality: int) -> tuple[bytes, str]:
    """Deterministic PNG or JPEG bytes of an RGB image, without metadata."""
    clean = image.copy()
    clean.info = {}
    buffer = io.BytesIO()
    if lossless:
        clean.save(buffer, format="PNG", optimize=False, compress_level=6)
        return buffer.getvalue(), "image/png"
    clean.save(
        buffer,
        format="JPEG",
        quality=jpeg_quality,
        subsampling="4:2:0",
        optimize=False,
        progressive=False,
    )
    return buffer.getvalue(), "image/jpeg"


def _finish(
    upright: Image.Image, limits: ImageLimits, *, lossless: bool, source: tuple[str, int, int]
) -> PreparedImage:
    rgb = to_rgb(upright)
    width, height = target_size(rgb.width, rgb.height, limits)
    if (width, height) != rgb.size:
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    data, media_type = encode(rgb, lossless=lossless, jpeg_quality=limits.jpeg_quality)
    fmt, source_width, source_height = source
    return PreparedImage(data, width, height, media_type, fmt, source_width, source_height)


def _storage_bytes(mode: str) -> int:
    if mode in _ONE_BYTE_MODES:
        return 1
    return 2 if mode in _TWO_BYTE_MODES else 4


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _reduce_factor(size: tuple[int, int], target: tuple[int, int]) -> int:
    """The integer shrink that still leaves `_REDUCING_GAP` times the target size."""
    return max(1, min(size[0] // target[0], size[1] // target[1]) // _REDUCING_GAP)


def decode_cost(image: Image.Image, fmt: str, target: tuple[int, int]) -> int:
    """Bytes `_decode_and_shrink` will hold at most for `image` (opened, not loaded; after any
    `draft`), shrunk towards `target` (width, height in the image's own orientation)."""
    pixels = image.width * image.height
    per_pixel = _storage_bytes(image.mode) + _CODEC_BYTES.get(fmt, 0)
    if image.mode not in _REDUCIBLE_MODES:
        per_pixel += 4  # the full-size conversion to a mode `reduce` takes
    factor = _reduce_factor(image.size, target)
    if factor > 1 and _has_alpha(image):
        per_pixel += 4  # `reduce` works on a premultiplied full-size copy
    reduced = -(-image.width // factor) * -(-image.height // factor)
    return pixels * per_pixel + reduced * _FINISH_BYTES


def _reducible(image: Image.Image) -> Image.Image:
    """`image` itself, or converted (full size) to a mode `Image.reduce` accepts."""
    if image.mode in _REDUCIBLE_MODES:
        return image
    if image.mode in _TWO_BYTE_MODES:
        return image.convert("I")
    return image.convert("RGBA" if _has_alpha(image) else "RGB")


def _own_target(width: int, height: int, orientation: int, limits: ImageLimits) -> tuple[int, int]:
    """The target size in the image's own orientation (before the EXIF transpose)."""
    if orientation >= 5:
        th, tw = target_size(height, width, limits)
        return th, tw
    return target_size(width, height, limits)


def _plan(image: Image.Image, fmt: str, limits: ImageLimits) -> None:
    """Check the decode's memory before it happens (after JPEG's `draft`)."""
    if fmt == "JPEG":
        # EXIF comes with the header only in JPEG (Pillow decodes a whole PNG to look for it).
        target = _own_target(image.width, image.height, _orientation(image), limits)
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale when the target is that small.
        image.draft(None, target)
        cost = decode_cost(image, fmt, target)
    else:
        # The orientation is not known before decoding: assume the costlier one.
        cost = max(
            decode_cost(image, fmt, _own_target(image.width, image.height, o, limits))
            for o in (1, 6)
        )
    if cost > limits.max_decode_bytes:
        raise ImageError(
            f"image is {image.width}x{image.height} pixels ({image.mode}); decoding it would "
            f"take about {human_bytes(cost)}, more than the {human_bytes(limits.max_decode_bytes)}"
            " allowed",
            code="image_too_many_pixels",
        )


def check_image(data: bytes | IO[bytes], limits: ImageLimits) -> None:
    """Refuse, from the header alone, an image `prepare_image` would refuse before decoding
    (format, pixel count, aspect ratio, decode memory). Blocking (reads a few KB)."""
    image, fmt = open_image(data, max_source_pixels=limits.max_source_pixels)
    with image:
        _plan(image, fmt, limits)


def prepare_image(data: bytes, limits: ImageLimits) -> PreparedImage:
    """Decode, check, orient, resize and encode `data` (see the module docstring). Blocking."""
    image, fmt = open_image(data, max_source_pixels=limits.max_source_pixels)
    with image:
        source = (fmt, image.width, image.height)
        _plan(image, fmt, limits)
        try:
            image.load()
        except Exception as exc:  # truncated data, bad chunks, decoder errors
            log.info("image_decode_failed", format=fmt, error=type(exc).__name__)
            raise ImageError("image could not be decoded (corrupt or truncated)") from None
        orientation = _orientation(image)
        lossless = fmt in _LOSSLESS or (fmt == "WEBP" and _webp_is_lossless(data))
        try:
            shrunk = _reducible(image)
            target = _own_target(image.width, image.height, orientation, limits)
            factor = _reduce_factor(shrunk.size, target)
            if factor > 1:
                shrunk = shrunk.reduce(factor)
            if orientation != 1:
                shrunk = shrunk.transpose(_ORIENTATION[orientation])
            return _finish(shrunk, limits, lossless=lossless, source=source)
        except ImageError:
            raise
        except (ValueError, OSError) as exc:
            log.info("image_convert_failed", format=fmt, mode=image.mode, error=type(exc).__name__)
            raise ImageError("image uses a colour mode that cannot be converted") from None


def prepare_pil(image: Image.Image, limits: ImageLimits, *, lossless: bool = True) -> PreparedImage:
    """The same normalisation for an image already in memory (a crop, a rendered chart)."""
    if image.width < 1 or image.height < 1:
        raise ImageError("image has no pixels")
    if image.width * image.height > limits.max_source_pixels:
        raise ImageError("image has too many pixels", code="image_too_many_pixels")
    return _finish(image, limits, lossless=lossless, source=("PIL", image.width, image.height))


def decode_stored(data: bytes) -> Image.Image:
    """An RGB image from bytes cascade encoded itself (PNG or JPEG). Blocking."""
    with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
        image.load()
        return to_rgb(image).copy()
