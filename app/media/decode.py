"""Safe image decoding and normalisation to exactly what the model will see.

`prepare_image(data, limits)` (blocking: call it through `asyncio.to_thread`):
  1. opens the bytes with Pillow restricted to JPEG, PNG, WEBP, GIF (first frame) and BMP —
     no other decoder ever sees the bytes;
  2. treats Pillow's decompression-bomb *warning* as an error, and checks width x height against
     `limits.max_source_pixels` before any pixel is decoded (`Image.open` reads the header only);
  3. decodes (a truncated or corrupt file is an error, never a half-grey image), applies the EXIF
     orientation, flattens transparency onto white and converts to RGB;
  4. resizes (bicubic) to `smart_resize(h, w, factor=32, min_pixels, max_pixels)`, the size
     Qwen's vision processor would pick itself, so the runtime never receives pixels it would
     throw away and never resizes again;
  5. encodes deterministically (same input → same bytes): PNG when the source was lossless
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

import structlog
from PIL import Image, UnidentifiedImageError

from app.media.config import IMAGE_FACTOR, MediaSettings
from app.media.errors import ImageError
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


@dataclass(frozen=True)
class ImageLimits:
    """Pixel limits and encoder settings of the pipeline."""

    min_pixels: int
    max_pixels: int
    max_source_pixels: int
    jpeg_quality: int = 90

    @classmethod
    def from_settings(cls, settings: MediaSettings) -> ImageLimits:
        return cls(
            min_pixels=settings.image_min_pixels,
            max_pixels=settings.image_max_pixels,
            max_source_pixels=settings.image_max_source_pixels,
            jpeg_quality=settings.image_jpeg_quality,
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


def open_image(data: bytes, *, max_source_pixels: int) -> tuple[Image.Image, str]:
    """Open `data` (header only) and check its format and size; returns (image, format)."""
    cap = max_source_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        cap = min(cap, Image.MAX_IMAGE_PIXELS)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
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


def prepare_image(data: bytes, limits: ImageLimits) -> PreparedImage:
    """Decode, check, orient, resize and encode `data` (see the module docstring). Blocking."""
    image, fmt = open_image(data, max_source_pixels=limits.max_source_pixels)
    with image:
        source = (fmt, image.width, image.height)
        try:
            if fmt == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is that small.
                orientation = _orientation(image)
                width, height = image.size
                if orientation >= 5:
                    width, height = height, width
                tw, th = target_size(width, height, limits)
                image.draft(None, (th, tw) if orientation >= 5 else (tw, th))
            image.load()
        except ImageError:
            raise
        except Exception as exc:  # truncated data, bad chunks, decoder errors
            log.info("image_decode_failed", format=fmt, error=type(exc).__name__)
            raise ImageError("image could not be decoded (corrupt or truncated)") from None
        orientation = _orientation(image)
        upright: Image.Image = image
        if orientation != 1:
            upright = image.transpose(_ORIENTATION[orientation])
        lossless = fmt in _LOSSLESS or (fmt == "WEBP" and _webp_is_lossless(data))
        try:
            return _finish(upright, limits, lossless=lossless, source=source)
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
