"""`image_zoom`: crop a region of an image in the conversation and show it to the model again.

The crop is taken from the stored image (`ctx.media.load_image`) and handed back as a new image
(`ctx.media.put_image`, which sizes it for the model like any image), so the model sees the
region with up to a whole image's worth of visual tokens instead of a corner of the whole.
Boxes are `[x0, y0, x1, y1]` in one of three units: `relative` (0..1), `thousandths` (0..1000,
the normalised grid Qwen-VL models commonly ground boxes on) or `pixels` of the stored image.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from app.errors import CascadeError
from tools.registry import ToolArgs, ToolContext, ToolError, ToolResult, tool

MIN_CROP_SIDE = 1


class ImageZoomArgs(ToolArgs):
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="Region [x0, y0, x1, y1]: left, top, right, bottom.",
    )
    units: Literal["relative", "thousandths", "pixels"] = Field(
        default="relative",
        description="relative: 0..1 of width/height; thousandths: 0..1000; pixels: image pixels.",
    )
    image_index: int = Field(
        default=-1,
        description="Which image of the conversation: 0 = first, -1 = the latest (default).",
    )


def pixel_box(box: list[float], units: str, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop box in pixels (left, top, right, bottom), clamped to the image.

    Edges are widened outward to whole pixels (floor the start, ceil the end) so the crop always
    contains the region asked for.
    """
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise ToolError("box values must be finite numbers")
    if x1 <= x0 or y1 <= y0:
        raise ToolError("box must have x1 > x0 and y1 > y0 ([left, top, right, bottom])")
    if units == "relative":
        scale_x, scale_y, limit = float(width), float(height), 1.0
    elif units == "thousandths":
        scale_x, scale_y, limit = width / 1000, height / 1000, 1000.0
    else:
        scale_x, scale_y, limit = 1.0, 1.0, float("inf")
    if units != "pixels" and (min(box) < 0 or max(box) > limit):
        raise ToolError(f"{units} box values must be between 0 and {limit:g}")
    left = max(0, math.floor(x0 * scale_x + 1e-9))
    top = max(0, math.floor(y0 * scale_y + 1e-9))
    right = min(width, math.ceil(x1 * scale_x - 1e-9))
    bottom = min(height, math.ceil(y1 * scale_y - 1e-9))
    if right - left < MIN_CROP_SIDE or bottom - top < MIN_CROP_SIDE:
        raise ToolError(f"the box lies outside the {width}x{height} image or is empty")
    return left, top, right, bottom


@tool(name="image_zoom", timeout=30.0, needs=["images"])
async def image_zoom(args: ImageZoomArgs, ctx: ToolContext) -> ToolResult:
    """Zoom into a region of an image from this conversation to see small details (text, faces,
    far objects). Returns the cropped region as a new image at full resolution."""
    if ctx.media is None:
        raise ToolError("images are not available in this conversation")
    images = ctx.conversation_images
    if not images:
        raise ToolError("there is no image in this conversation")
    if not -len(images) <= args.image_index < len(images):
        raise ToolError(
            f"image_index {args.image_index} is out of range: the conversation has "
            f"{len(images)} image(s) (0..{len(images) - 1}, or -1 for the latest)"
        )
    index = args.image_index % len(images)
    try:
        source = await ctx.media.load_image(images[index])
        width, height = source.size
        left, top, right, bottom = pixel_box(args.box, args.units, width, height)
        crop = source.crop((left, top, right, bottom))
        crop.load()
        ref = await ctx.media.put_image(crop)
    except CascadeError as exc:  # expired image, unusable crop: messages written for users
        raise ToolError(exc.message) from None
    part: dict[str, Any] = ref.to_part()
    shown = f"{part.get('width', right - left)}x{part.get('height', bottom - top)}"
    return ToolResult(
        text=(
            f"Region [{left}, {top}, {right}, {bottom}] (pixels) of image {index} "
            f"({width}x{height}): {right - left}x{bottom - top} pixels, shown as a new "
            f"{shown} image."
        ),
        images=[part],
    )
