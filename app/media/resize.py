"""The image size Qwen's vision encoder works at: `smart_resize` as qwen-vl-utils computes it.

qwen-vl-utils (`qwen_vl_utils.vision_process.smart_resize`) imports torch and torchvision at
module load, which a gateway should not carry; this is the same arithmetic (SGLang 0.5.23 has
an identical copy in `sglang/srt/multimodal/processors/qwen_vl.py`), checked against the
installed qwen-vl-utils source by the unit tests.
"""

from __future__ import annotations

import math

MAX_RATIO = 200


def round_by_factor(number: float, factor: int) -> int:
    """The multiple of `factor` closest to `number` (Python's round: ties to even)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width) scaled so both are multiples of `factor`, the area lies within
    [min_pixels, max_pixels] and the aspect ratio is kept as well as possible.

    Raises ValueError when the aspect ratio exceeds 200:1 (the model's processor refuses those).
    """
    if min_pixels > max_pixels:
        raise ValueError("min_pixels must not exceed max_pixels")
    if min(height, width) < 1:
        raise ValueError("image has no pixels")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_RATIO}")
    h = max(factor, round_by_factor(height, factor))
    w = max(factor, round_by_factor(width, factor))
    if h * w > max_pixels:
        shrink = math.sqrt((height * width) / max_pixels)
        h = floor_by_factor(height / shrink, factor)
        w = floor_by_factor(width / shrink, factor)
    elif h * w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        h = ceil_by_factor(height * grow, factor)
        w = ceil_by_factor(width * grow, factor)
    return h, w
