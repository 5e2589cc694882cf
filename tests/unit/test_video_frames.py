"""Video sampling against qwen-vl-utils' own functions, and the decoder's checks on made clips.

qwen-vl-utils imports torch at module load, so `smart_nframes`, `smart_resize` and the helpers
and constants they use are taken from the installed source file with `ast` and run on their
own (as `test_media_resize.py` does for images). `fetch_video`'s frame-size rule is inline code
there (no function of its own): `reference_frame_size` below is that code, copied line for line.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import math
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from app.errors import CascadeError
from app.media.config import MediaSettings
from app.media.errors import VideoError
from app.media.video_decode import VideoLimits, prepare_video, sniff_container
from app.media.video_frames import (
    VideoSampling,
    encoded_rate,
    frame_indices,
    frame_size,
    sample_rate,
    smart_nframes,
)
from tests.video_clips import clip, decoded_frames

_NEEDED = {"round_by_factor", "ceil_by_factor", "floor_by_factor", "smart_resize", "smart_nframes"}
_CONSTANTS = {
    "MAX_RATIO",
    "FPS",
    "FRAME_FACTOR",
    "FPS_MIN_FRAMES",
    "FPS_MAX_FRAMES",
    "VIDEO_MIN_TOKEN_NUM",
    "VIDEO_MAX_TOKEN_NUM",
}


def _reference() -> dict[str, Any]:
    spec = importlib.util.find_spec("qwen_vl_utils")
    assert spec is not None and spec.origin is not None, "qwen-vl-utils is a dev dependency"
    tree = ast.parse((Path(spec.origin).parent / "vision_process.py").read_text())
    keep = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name in _NEEDED)
        or (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id in _CONSTANTS for t in node.targets)
        )
    ]
    namespace: dict[str, Any] = {
        "math": math,
        "Optional": Any,
        "Tuple": tuple,
        "Dict": dict,
        "Any": Any,
        "Union": Any,
        "logger": logging.getLogger("qwen_vl_utils_ref"),
    }
    exec(compile(ast.Module(body=keep, type_ignores=[]), "qwen_vl_utils_ref", "exec"), namespace)
    assert namespace.keys() >= _NEEDED | _CONSTANTS
    return namespace


REF = _reference()
REF_NFRAMES: Callable[..., int] = REF["smart_nframes"]
REF_RESIZE: Callable[..., tuple[int, int]] = REF["smart_resize"]
FACTOR = 32  # image_patch_size 16 x SPATIAL_MERGE_SIZE 2


def reference_frame_size(
    height: int, width: int, nframes: int, ele: dict[str, Any]
) -> tuple[int, int]:
    """`fetch_video`'s size computation (qwen-vl-utils 0.0.14), with `image_patch_size=16`."""
    image_factor = FACTOR
    VIDEO_FRAME_MIN_PIXELS = REF["VIDEO_MIN_TOKEN_NUM"] * image_factor * image_factor
    VIDEO_FRAME_MAX_PIXELS = REF["VIDEO_MAX_TOKEN_NUM"] * image_factor * image_factor
    min_pixels = ele.get("min_pixels", VIDEO_FRAME_MIN_PIXELS)
    total_pixels = ele["total_pixels"]
    max_pixels = max(
        min(VIDEO_FRAME_MAX_PIXELS, total_pixels / nframes * REF["FRAME_FACTOR"]),
        int(min_pixels * 1.05),
    )
    max_pixels = min(ele.get("max_pixels", max_pixels), max_pixels)
    return REF_RESIZE(
        height, width, factor=image_factor, min_pixels=min_pixels, max_pixels=max_pixels
    )


def test_defaults_follow_qwen_vl_utils() -> None:
    sampling = VideoLimits.from_settings(MediaSettings()).sampling
    assert sampling.fps == REF["FPS"]
    assert sampling.min_frames == REF["FPS_MIN_FRAMES"]
    assert sampling.max_frames == REF["FPS_MAX_FRAMES"]
    assert sampling.min_pixels == REF["VIDEO_MIN_TOKEN_NUM"] * FACTOR**2
    assert sampling.max_pixels == REF["VIDEO_MAX_TOKEN_NUM"] * FACTOR**2
    assert sampling == VideoSampling()


LENGTHS = [2, 3, 4, 5, 7, 8, 9, 16, 31, 60, 61, 100, 241, 300, 900, 1537, 3000, 9000, 36_000]
RATES = [1.0, 5.0, 12.5, 23.976, 24.0, 25.0, 29.97, 30.0, 59.94, 60.0, 120.0]
SAMPLINGS = [
    {},
    {"fps": 1.0},
    {"fps": 4.0, "min_frames": 8, "max_frames": 64},
    {"fps": 0.5, "max_frames": 32},
    {"min_frames": 3, "max_frames": 767},
]


@pytest.mark.parametrize("ele", SAMPLINGS)
@pytest.mark.parametrize("video_fps", RATES)
@pytest.mark.parametrize("total", LENGTHS)
def test_frame_count_matches_qwen_vl_utils(
    total: int, video_fps: float, ele: dict[str, Any]
) -> None:
    knobs = {"fps": 2.0, "min_frames": 4, "max_frames": 768} | ele
    try:
        expected: int | None = REF_NFRAMES(dict(ele), total_frames=total, video_fps=video_fps)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            smart_nframes(total, video_fps, **knobs)
    else:
        assert smart_nframes(total, video_fps, **knobs) == expected


SIZES = [
    (240, 320),
    (480, 640),
    (720, 1280),
    (1080, 1920),
    (2160, 3840),
    (1920, 1080),
    (360, 640),
    (100, 100),
    (17, 3000),
    (4000, 33),
    (576, 720),
    (1, 150),
]
TOTALS = [24_576 * FACTOR**2, 128_000 * FACTOR**2 * 0.9, 4096 * FACTOR**2]


@pytest.mark.parametrize("total_pixels", TOTALS)
@pytest.mark.parametrize("nframes", [2, 4, 16, 64, 200, 768])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_frame_size_matches_qwen_vl_utils(
    height: int, width: int, nframes: int, total_pixels: float
) -> None:
    sampling = VideoSampling(total_pixels=int(total_pixels))
    expected = reference_frame_size(height, width, nframes, {"total_pixels": int(total_pixels)})
    assert frame_size(height, width, nframes, sampling) == expected


def test_frame_indices_spread_from_first_to_last() -> None:
    # torch.linspace(0, 19, 4).round() = [0, 6, 13, 19] (6.33, 12.67 rounded).
    assert frame_indices(20, 4) == [0, 6, 13, 19]
    assert frame_indices(8, 8) == list(range(8))
    for total, n in [(36_000, 768), (1000, 4), (5, 4)]:
        indices = frame_indices(total, n)
        assert len(set(indices)) == n and indices[0] == 0 and indices[-1] == total - 1
        assert indices == sorted(indices)


@pytest.mark.parametrize(
    ("nframes", "total", "fps"),
    [(4, 20, 10.0), (768, 36_000, 60.0), (600, 9000, 29.97), (4, 4, 1.0)],
)
def test_the_encoded_rate_makes_the_runtime_keep_every_frame(
    nframes: int, total: int, fps: float
) -> None:
    """SGLang samples the clip again with the same rules: labelled with `encoded_rate`, the
    clip keeps all its frames (the contract suite checks this with SGLang's own function)."""
    rate = encoded_rate(sample_rate(nframes, total, fps), 2.0)
    assert REF_NFRAMES({}, total_frames=nframes, video_fps=float(rate)) == nframes


LIMITS = VideoLimits.from_settings(MediaSettings(video_max_source_frames=1000))


def test_a_clip_is_sampled_to_qwens_frames_at_qwens_size() -> None:
    # 20 frames at 10 fps: 2 s at 2 fps = 4 frames; 240x320 is below 128 tokens, so it grows
    # to 320x448 (smart_resize with min_pixels 128 x 32 x 32).
    prepared = prepare_video(clip(frames=20, width=320, height=240, fps=10), LIMITS)
    assert (prepared.frames, prepared.width, prepared.height) == (4, 448, 320)
    assert prepared.fps == Fraction(2)
    assert decoded_frames(prepared.data) == (4, 448, 320, Fraction(2))


def test_the_same_clip_gives_the_same_bytes() -> None:
    data = clip(frames=12, codec="libvpx-vp9")
    assert prepare_video(data, LIMITS).data == prepare_video(data, LIMITS).data


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [
        ("wrong codec", lambda: clip(codec="mpeg4"), "invalid_video"),
        (
            "long",
            lambda: clip(frames=3, width=64, height=64, fps=Fraction(1, 3600)),
            "video_too_long",
        ),
        ("many frames", lambda: clip(frames=1500, width=16, height=16, fps=100), "video_too_long"),
        (
            "many frames, WebM",
            lambda: clip(frames=1500, width=16, height=16, fps=100, codec="libvpx"),
            "video_too_long",
        ),
        ("huge", lambda: clip(frames=2, width=5120, height=2880, fps=1), "video_too_large"),
        ("truncated", lambda: clip()[: len(clip()) // 2], "invalid_video"),
        ("not a video", lambda: b"\x89PNG\r\n\x1a\n" + bytes(200), "invalid_video"),
        ("one frame", lambda: clip(frames=1), "invalid_video"),
    ],
)
def test_bad_videos_are_refused_before_decoding(
    name: str, make: Callable[[], bytes], code: str
) -> None:
    data = make()
    start = time.monotonic()
    with pytest.raises(VideoError) as caught:
        prepare_video(data, LIMITS)
    assert time.monotonic() - start < 1.0, name
    assert caught.value.code == code and caught.value.status == 400
    assert "ffmpeg" not in str(caught.value).lower()


def test_containers_are_recognised_from_their_first_bytes() -> None:
    assert sniff_container(clip()[:16]) == "mp4"
    assert sniff_container(clip(codec="libvpx")[:16]) == "matroska"
    assert sniff_container(b"GIF89a" + bytes(10)) is None
    assert isinstance(VideoError("x"), CascadeError)
