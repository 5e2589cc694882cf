"""image_zoom through the registry, with the real image intake on a real redis-server."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from PIL import Image

from app.media.config import MediaSettings
from app.media.intake import ImageIntake
from tests.redis_server import RedisServer
from tools.builtin.image_zoom import image_zoom
from tools.registry import ToolContext, ToolPolicy, ToolRegistry, ToolResult

REGISTRY = ToolRegistry([image_zoom])


@pytest.fixture
async def intake(redis_server: RedisServer) -> AsyncIterator[ImageIntake]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield ImageIntake(client, MediaSettings())
    finally:
        await client.aclose()


def pattern(width: int, height: int, seed: int = 0) -> Image.Image:
    """Every pixel different from its neighbours, so a shifted crop cannot match by accident."""
    img = Image.new("RGB", (width, height))
    img.putdata(
        [
            ((x * 7 + seed) % 256, (y * 13) % 256, (x * y + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    return img


def data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def zoom(intake: ImageIntake | None, images: list[dict[str, Any]], **args: Any) -> ToolResult:
    ctx = ToolContext(owner="o", media=intake, conversation_images=images, call_id="call_1")
    return await REGISTRY.execute("image_zoom", json.dumps(args), ctx, ToolPolicy())


async def stored(intake: ImageIntake, img: Image.Image) -> dict[str, Any]:
    ref = await intake.ingest(data_uri(img), owner="o")
    part: dict[str, Any] = ref.to_part()
    return part


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


@pytest.mark.parametrize(
    ("box", "units"),
    [
        ([0.25, 0.5, 0.5, 5 / 6], "relative"),
        ([250, 500, 500, 833.333], "thousandths"),
        ([64, 96, 128, 160], "pixels"),
    ],
)
async def test_crop_pixels_match_the_source_region(
    intake: ImageIntake, box: list[float], units: str
) -> None:
    source = pattern(256, 192)
    part = await stored(intake, source)
    assert (part["width"], part["height"]) == (256, 192)  # stored as is (32-aligned, small)
    result = await zoom(intake, [part], box=box, units=units)
    assert not result.is_error, result.text
    assert result.text == (
        "Region [64, 96, 128, 160] (pixels) of image 0 (256x192): 64x64 pixels, shown as a new "
        "64x64 image."
    )
    (crop_part,) = result.images
    assert crop_part["type"] == "image_ref" and crop_part["sha256"] != part["sha256"]
    crop = await intake.load_image(crop_part)
    assert same_pixels(crop, source.crop((64, 96, 128, 160)))


async def test_small_crop_is_enlarged_for_the_model(intake: ImageIntake) -> None:
    source = pattern(256, 192)
    part = await stored(intake, source)
    result = await zoom(intake, [part], box=[10, 10, 30, 26], units="pixels")
    assert not result.is_error, result.text
    (crop_part,) = result.images
    # 20x16 pixels are fewer than the model's minimum (4 visual tokens): scaled up, not refused.
    assert crop_part["width"] * crop_part["height"] >= MediaSettings().image_min_pixels
    assert "20x16 pixels, shown as a new" in result.text


async def test_image_index_selects_the_image(intake: ImageIntake) -> None:
    first, second = pattern(128, 128, seed=1), pattern(128, 128, seed=2)
    parts = [await stored(intake, first), await stored(intake, second)]
    box = {"box": [0, 0, 64, 64], "units": "pixels"}
    latest = await zoom(intake, parts, **box)
    assert same_pixels(await intake.load_image(latest.images[0]), second.crop((0, 0, 64, 64)))
    assert "of image 1 " in latest.text
    chosen = await zoom(intake, parts, image_index=0, **box)
    assert same_pixels(await intake.load_image(chosen.images[0]), first.crop((0, 0, 64, 64)))
    negative = await zoom(intake, parts, image_index=-2, **box)
    assert "of image 0 " in negative.text
    out_of_range = await zoom(intake, parts, image_index=2, **box)
    assert out_of_range.is_error
    assert "image_index 2 is out of range: the conversation has 2 image(s)" in out_of_range.text


async def test_pixel_box_is_clamped_to_the_image(intake: ImageIntake) -> None:
    source = pattern(128, 96)
    part = await stored(intake, source)
    result = await zoom(intake, [part], box=[64, 32, 500, 500], units="pixels")
    assert "Region [64, 32, 128, 96]" in result.text
    assert same_pixels(await intake.load_image(result.images[0]), source.crop((64, 32, 128, 96)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"box": [0.5, 0.5, 0.2, 0.9]}, "x1 > x0 and y1 > y0"),
        ({"box": [0, 0, 1.5, 1]}, "relative box values must be between 0 and 1"),
        ({"box": [0, 0, 1]}, "box: List should have at least 4 items"),
        ({"box": [300, 300, 400, 400], "units": "pixels"}, "lies outside the 128x96 image"),
        ({"box": [0, 0, 1, 1], "units": "inches"}, "units: Input should be"),
    ],
)
async def test_bad_boxes(intake: ImageIntake, args: dict[str, Any], message: str) -> None:
    part = await stored(intake, pattern(128, 96))
    result = await zoom(intake, [part], **args)
    assert result.is_error
    assert message in result.text


async def test_no_image_no_media_expired(intake: ImageIntake) -> None:
    none = await zoom(intake, [], box=[0, 0, 1, 1])
    assert none.is_error and "there is no image in this conversation" in none.text
    part = await stored(intake, pattern(64, 64))
    no_media = await zoom(None, [part], box=[0, 0, 1, 1])
    assert no_media.is_error and "images are not available" in no_media.text
    gone = dict(part, sha256="f" * 64)
    expired = await zoom(intake, [gone], box=[0, 0, 1, 1])
    assert expired.is_error and "is no longer stored (expired)" in expired.text
