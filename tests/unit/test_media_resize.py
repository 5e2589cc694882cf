"""`smart_resize` against qwen-vl-utils' own function.

qwen-vl-utils imports torch at module load, so its `smart_resize` (and the helpers and constants
it uses) are taken from the installed source file with `ast` and run on their own.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.media.config import MediaSettings
from app.media.resize import smart_resize

_NEEDED = {"round_by_factor", "ceil_by_factor", "floor_by_factor", "smart_resize"}
_CONSTANTS = {"MAX_RATIO", "IMAGE_MIN_TOKEN_NUM", "IMAGE_MAX_TOKEN_NUM"}


def _reference() -> tuple[Callable[..., tuple[int, int]], dict[str, Any]]:
    spec = importlib.util.find_spec("qwen_vl_utils")
    assert spec is not None and spec.origin is not None, "qwen-vl-utils is a dependency"
    source = (Path(spec.origin).parent / "vision_process.py").read_text()
    tree = ast.parse(source)
    keep: list[ast.stmt] = []
    for node in tree.body:
        if (isinstance(node, ast.FunctionDef) and node.name in _NEEDED) or (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id in _CONSTANTS for t in node.targets)
        ):
            keep.append(node)
    namespace: dict[str, Any] = {"math": math, "Optional": Any, "Tuple": tuple}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "qwen_vl_utils_ref", "exec"), namespace)
    assert namespace.keys() >= _NEEDED
    return namespace["smart_resize"], namespace


REFERENCE, REF_NS = _reference()
FACTOR = 32
SIZES = [
    (1, 1),
    (3, 5),
    (31, 33),
    (32, 32),
    (48, 64),
    (100, 20_000),
    (20_000, 100),
    (224, 224),
    (480, 640),
    (720, 1280),
    (1080, 1920),
    (1024, 1024),
    (1200, 1600),
    (3000, 4000),
    (4000, 3000),
    (2160, 3840),
    (6000, 8000),
    (4032, 3024),
    (777, 1333),
    (10_000, 51),
    (1, 200),
    (513, 511),
    (1313, 17),
]
LIMITS = [(4 * 32 * 32, 1280 * 32 * 32), (256 * 32 * 32, 1280 * 32 * 32), (4096, 16384 * 1024)]


def test_defaults_follow_qwen_vl_utils() -> None:
    settings = MediaSettings()
    # qwen-vl-utils' defaults are per token; one token is FACTOR x FACTOR pixels here.
    assert settings.image_min_pixels == REF_NS["IMAGE_MIN_TOKEN_NUM"] * FACTOR**2
    assert settings.image_max_pixels == 1280 * FACTOR**2
    assert settings.image_max_pixels <= REF_NS["IMAGE_MAX_TOKEN_NUM"] * FACTOR**2


@pytest.mark.parametrize(("min_pixels", "max_pixels"), LIMITS)
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_matches_qwen_vl_utils(height: int, width: int, min_pixels: int, max_pixels: int) -> None:
    expected = REFERENCE(height, width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    assert smart_resize(height, width, FACTOR, min_pixels, max_pixels) == expected


def test_a_4000x3000_photo_becomes_1312x960() -> None:
    # By hand: 3008x4000 (rounded) is over 1280*32*32 pixels, so the scale is
    # sqrt(3000*4000 / 1310720) = 3.0258; 3000/3.0258 = 991.5 -> 960, 4000/3.0258 = 1322 -> 1312.
    h, w = smart_resize(3000, 4000, 32, 4 * 32 * 32, 1280 * 32 * 32)
    assert (w, h) == (1312, 960)
    assert (h // 32) * (w // 32) <= 1280


@pytest.mark.parametrize(("height", "width"), [(1, 201), (10_000, 49)])
def test_extreme_aspect_ratio_is_refused_like_the_reference(height: int, width: int) -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(height, width, FACTOR, 4096, 1310720)
    with pytest.raises(ValueError, match="aspect ratio"):
        REFERENCE(height, width, factor=FACTOR, min_pixels=4096, max_pixels=1310720)
