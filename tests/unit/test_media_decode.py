"""Safe decoding and normalisation of images (`app.media.decode`), on images made with Pillow."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image, features

from app.media.decode import (
    ImageLimits,
    check_image,
    decode_cost,
    decode_stored,
    prepare_image,
    prepare_pil,
)
from app.media.errors import ImageError
from app.media.resize import smart_resize
from tests.media_server import encode, gradient, jpeg_bytes, png_bytes, with_png_size

LIMITS = ImageLimits(min_pixels=4 * 32 * 32, max_pixels=1280 * 32 * 32, max_source_pixels=8192**2)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def photo(width: int, height: int) -> Image.Image:
    """A large smooth RGB image, built without a per-pixel Python loop."""
    x = Image.linear_gradient("L").resize((width, height))
    y = Image.linear_gradient("L").rotate(90).resize((width, height))
    return Image.merge("RGB", (x, y, Image.new("L", (width, height), 100)))


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def close(pixel: object, expected: tuple[int, ...], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(p - q) <= tolerance for p, q in zip(pixel, expected, strict=True))


def test_a_4000x3000_photo_is_resized_to_the_smart_resize_size() -> None:
    data = encode(photo(4000, 3000), "JPEG", quality=92)
    out = prepare_image(data, LIMITS)
    h, w = smart_resize(3000, 4000, 32, LIMITS.min_pixels, LIMITS.max_pixels)
    assert (out.width, out.height) == (w, h) == (1312, 960)
    assert out.media_type == "image/jpeg"
    assert (out.source_width, out.source_height, out.source_format) == (4000, 3000, "JPEG")
    image = opened(out.data)
    assert image.format == "JPEG" and image.size == (1312, 960) and image.mode == "RGB"


def test_lossless_sources_stay_png_and_sizes_are_multiples_of_32() -> None:
    out = prepare_image(png_bytes(64, 48), LIMITS)
    assert out.media_type == "image/png"
    assert (out.width, out.height) == (64, 64)  # 48 rounds to 64 (ties to even: 1.5 -> 2)
    assert opened(out.data).getpixel((10, 10)) == (200, 30, 30)


def test_tiny_images_are_scaled_up_to_min_pixels() -> None:
    out = prepare_image(png_bytes(1, 1), LIMITS)
    assert (out.width, out.height) == (64, 64)
    assert out.width * out.height >= LIMITS.min_pixels


def test_exif_rotated_photo_arrives_upright() -> None:
    # Stored 128 wide x 64 high: left half red, right half blue. EXIF orientation 6 says the
    # stored left side is the visual top, so upright it is 64 wide x 128 high, red on top.
    stored = Image.new("RGB", (128, 64), BLUE)
    stored.paste(RED, (0, 0, 64, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = prepare_image(data, LIMITS)
    assert (out.width, out.height) == (64, 128)
    image = opened(out.data)
    assert close(image.getpixel((32, 16)), RED)
    assert close(image.getpixel((32, 112)), BLUE)
    assert 0x0112 not in image.getexif()  # no orientation left for anyone to apply twice


@pytest.mark.parametrize("orientation", [3, 8])
def test_other_orientations_match_pillows_exif_transpose(orientation: int) -> None:
    from PIL import ImageOps

    stored = gradient(96, 64)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "PNG", exif=exif.tobytes())
    expected = ImageOps.exif_transpose(opened(data))
    out = opened(prepare_image(data, LIMITS).data)
    assert out.size == expected.size
    assert out.tobytes() == expected.convert("RGB").tobytes()


def test_decompression_bomb_header_fails_fast() -> None:
    bomb = with_png_size(png_bytes(8, 8), 100_000, 100_000)
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        prepare_image(bomb, LIMITS)
    assert time.monotonic() - started < 1.0
    assert info.value.status == 400
    assert info.value.code == "image_too_many_pixels"


def test_pillow_bomb_warning_is_an_error_not_a_warning() -> None:
    # 10000 x 10000 = 1e8 pixels: above Pillow's MAX_IMAGE_PIXELS (~8.9e7), so Image.open warns.
    # The settings allow more, so only Pillow's check stands in the way here.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10_000**2
    data = encode(Image.new("1", (10_000, 10_000)), "PNG")
    generous = ImageLimits(LIMITS.min_pixels, LIMITS.max_pixels, max_source_pixels=10**9)
    with pytest.raises(ImageError) as info:
        prepare_image(data, generous)
    assert info.value.code == "image_too_many_pixels"


def test_dimensions_are_checked_before_decoding() -> None:
    # A header claiming 9000x9000 with almost no data: the size check must fire, not the decoder.
    data = with_png_size(png_bytes(8, 8), 9000, 9000)
    small = ImageLimits(LIMITS.min_pixels, LIMITS.max_pixels, max_source_pixels=1_000_000)
    with pytest.raises(ImageError, match=r"image is 9000x9000 pixels; at most 1,000,000"):
        prepare_image(data, small)


def test_truncated_jpeg_is_a_400() -> None:
    data = encode(photo(640, 480), "JPEG", quality=90)
    with pytest.raises(ImageError) as info:
        prepare_image(data[: len(data) // 2], LIMITS)
    assert info.value.status == 400
    assert "corrupt or truncated" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, not an image",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        encode(Image.new("RGB", (8, 8)), "TIFF"),
        encode(Image.new("RGB", (8, 8)), "PPM"),
    ],
    ids=["empty", "text", "svg", "tiff", "ppm"],
)
def test_formats_outside_the_allow_list_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        prepare_image(data, LIMITS)
    assert info.value.code == "unsupported_image"
    assert "JPEG, PNG, WEBP, GIF or BMP" in info.value.message


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    out = prepare_image(buffer.getvalue(), LIMITS)
    assert out.media_type == "image/png"
    assert close(opened(out.data).getpixel((5, 5)), RED, tolerance=8)


def test_bmp_is_accepted() -> None:
    out = prepare_image(encode(Image.new("RGB", (64, 64), BLUE), "BMP"), LIMITS)
    assert out.source_format == "BMP" and out.media_type == "image/png"


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    image.paste((0, 128, 0, 255), (0, 0, 32, 64))
    out = opened(prepare_image(encode(image, "PNG"), LIMITS).data)
    assert out.mode == "RGB"
    assert out.getpixel((48, 10)) == (255, 255, 255)
    assert out.getpixel((10, 10)) == (0, 128, 0)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    image = Image.new("I;16", (64, 64), 30_000)
    out = opened(prepare_image(encode(image, "PNG"), LIMITS).data)
    value = out.getpixel((5, 5))
    assert isinstance(value, tuple)
    assert abs(value[0] - 30_000 // 256) <= 1


def test_webp_lossless_stays_lossless_and_lossy_becomes_jpeg() -> None:
    assert features.check("webp")
    source = gradient(64, 64)
    lossless = prepare_image(encode(source, "WEBP", lossless=True), LIMITS)
    lossy = prepare_image(encode(source, "WEBP", quality=80), LIMITS)
    assert lossless.media_type == "image/png"
    assert opened(lossless.data).tobytes() == source.tobytes()
    assert lossy.media_type == "image/jpeg"


def test_extreme_aspect_ratio_is_a_400() -> None:
    with pytest.raises(ImageError, match=r"aspect ratio 300:1 is more extreme than 200:1"):
        prepare_image(png_bytes(300, 1), LIMITS)


def test_output_is_deterministic_and_carries_no_metadata() -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    source = encode(photo(900, 700), "JPEG", quality=90, exif=exif.tobytes(), comment=b"hi")
    first = prepare_image(source, LIMITS)
    second = prepare_image(source, LIMITS)
    assert first.data == second.data
    assert b"SecretCam" not in first.data
    assert len(opened(first.data).getexif()) == 0
    png = png_bytes(100, 100)
    assert prepare_image(png, LIMITS).data == prepare_image(png, LIMITS).data


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")
    out = opened(prepare_image(data, LIMITS).data)
    assert out.mode == "RGB"
    assert close(out.getpixel((5, 5)), RED)


def test_prepare_pil_and_decode_stored_round_trip() -> None:
    # 40x30 rounds to 32x32 = 1024 < 4096 pixels, so it grows by sqrt(4096 / 1200) = 1.85:
    # 40 * 1.85 = 73.9 -> 96 and 30 * 1.85 = 55.4 -> 64 (rounded up to multiples of 32).
    out = prepare_pil(gradient(40, 30), LIMITS)
    assert (out.width, out.height) == (96, 64)
    back = decode_stored(out.data)
    assert back.size == (96, 64) and back.mode == "RGB"
    jpeg = prepare_pil(photo(320, 320), LIMITS, lossless=False)
    assert jpeg.media_type == "image/jpeg"
    assert decode_stored(jpeg.data).size == (320, 320)


def test_source_pixel_cap_comes_from_the_limits() -> None:
    small = ImageLimits(LIMITS.min_pixels, LIMITS.max_pixels, max_source_pixels=100 * 100)
    with pytest.raises(ImageError, match="101x100"):
        prepare_image(jpeg_bytes(101, 100), small)


# --- the memory of a decode ---

MB = 1024 * 1024


def _palette_png(width: int, height: int, *, transparent: bool = False) -> bytes:
    image = Image.new("P", (width, height))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.paste(1, (0, 0, width // 2, height))  # left half red, right half index 0
    params: dict[str, object] = {"transparency": 0} if transparent else {}
    return encode(image, "PNG", **params)


@pytest.mark.parametrize(
    ("name", "make", "mode"),
    [
        ("palette PNG", lambda: encode(Image.new("P", (8192, 8192)), "PNG"), "P"),
        (
            "lossless WebP",
            lambda: encode(Image.new("RGB", (8192, 8192)), "WEBP", lossless=True, method=0),
            "RGB",
        ),
    ],
)
def test_small_files_declaring_8192x8192_are_refused_before_decoding(
    name: str, make: object, mode: str
) -> None:
    data = make()  # type: ignore[operator]
    assert len(data) < 100_000  # a few KB at most: a decompression bomb
    # 8192x8192 is not above the pixel cap (it *is* the cap): the memory bound refuses them.
    assert LIMITS.max_source_pixels >= 8192 * 8192
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        check_image(data, LIMITS)
    with pytest.raises(ImageError):
        prepare_image(data, LIMITS)
    assert time.monotonic() - started < 0.5
    assert info.value.code == "image_too_many_pixels"
    assert f"8192x8192 pixels ({mode})" in info.value.message
    assert "more than the 128 MB allowed" in info.value.message


def test_decode_cost_counts_every_full_size_copy() -> None:
    target = (1024, 1024)
    rgb, palette, rgba = (Image.new(m, (4096, 4096)) for m in ("RGB", "P", "RGBA"))
    pixels = 4096 * 4096
    finish = 2048 * 2048 * 16  # reduced by 2, then flattened and resized
    assert decode_cost(rgb, "PNG", target) == pixels * 4 + finish
    assert decode_cost(palette, "PNG", target) == pixels * (1 + 4) + finish  # + RGB conversion
    assert decode_cost(rgba, "PNG", target) == pixels * (4 + 4) + finish  # + premultiplied copy
    assert decode_cost(rgb, "WEBP", target) == pixels * (4 + 12) + finish  # + libwebp's buffers


def test_the_memory_cap_is_configurable() -> None:
    data = encode(photo(2000, 2000), "PNG")  # 16 MB decoded
    tight = ImageLimits(LIMITS.min_pixels, LIMITS.max_pixels, 8192**2, max_decode_bytes=8 * MB)
    with pytest.raises(ImageError, match="more than the 8 MB allowed"):
        prepare_image(data, tight)
    assert prepare_image(data, LIMITS).source_width == 2000


def test_jpeg_draft_makes_a_large_photo_cheap_to_decode() -> None:
    # 6000x6000 RGB is 137 MB decoded at full size, over the cap; libjpeg's 1/4 scale is not.
    data = encode(photo(6000, 6000), "JPEG", quality=80)
    out = prepare_image(data, LIMITS)
    assert (out.source_width, out.source_height) == (6000, 6000)
    assert out.width * out.height <= LIMITS.max_pixels


@pytest.mark.parametrize("transparent", [False, True])
def test_large_palette_image_is_reduced_then_converted(transparent: bool) -> None:
    out = opened(prepare_image(_palette_png(3000, 2000, transparent=transparent), LIMITS).data)
    expected_h, expected_w = smart_resize(
        2000, 3000, factor=32, min_pixels=LIMITS.min_pixels, max_pixels=LIMITS.max_pixels
    )
    assert out.size == (expected_w, expected_h)
    assert out.mode == "RGB"
    assert close(out.getpixel((10, 10)), RED)
    right = out.getpixel((out.width - 10, 10))
    assert close(right, (255, 255, 255) if transparent else (0, 0, 0))
