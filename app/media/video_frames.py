"""How many frames of a video Qwen3.6 sees, which ones, and at what size: qwen-vl-utils' rules.

qwen-vl-utils (`qwen_vl_utils.vision_process`: `smart_nframes`, `fetch_video`) imports torch
and torchvision at module load, so this is the same arithmetic on its own, checked against the
installed qwen-vl-utils source by `tests/unit/test_video_frames.py`:

- frames: `fps` frames per second of the video (2 by default), at least `min_frames` and at
  most `max_frames` (and never more than the video has), rounded down to a multiple of
  `FRAME_FACTOR` (2: the vision encoder merges frames in pairs);
- which: `nframes` indices spread evenly from the first frame to the last (`linspace`, rounded);
- size: `smart_resize` with factor 32 (patch 16, merge 2), each frame's area within
  [`min_pixels`, `max_pixels`], where `max_pixels` also shrinks so that all frames together stay
  near `total_pixels` (`total_pixels / nframes * FRAME_FACTOR`, never below 1.05 x `min_pixels`).
  Two frames make one temporal patch, so a video costs about `nframes / 2 x h x w / 32²`
  visual tokens, at most about `total_pixels / 32²`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from app.media.resize import ceil_by_factor, floor_by_factor, round_by_factor, smart_resize

FRAME_FACTOR = 2
VIDEO_FACTOR = 32


@dataclass(frozen=True)
class VideoSampling:
    """The sampling settings (`CASCADE_VIDEO_*`); defaults are qwen-vl-utils' own except
    `total_pixels` (theirs fills a 128k context with one video)."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * VIDEO_FACTOR * VIDEO_FACTOR
    max_pixels: int = 768 * VIDEO_FACTOR * VIDEO_FACTOR
    total_pixels: int = 24_576 * VIDEO_FACTOR * VIDEO_FACTOR
    factor: int = VIDEO_FACTOR


def smart_nframes(
    total_frames: int, video_fps: float, *, fps: float, min_frames: int, max_frames: int
) -> int:
    """The number of frames the model gets from a video of `total_frames` at `video_fps`.

    Raises ValueError when that is not within [FRAME_FACTOR, total_frames] (a video of one
    frame, as in qwen-vl-utils).
    """
    low = ceil_by_factor(min_frames, FRAME_FACTOR)
    high = floor_by_factor(min(max_frames, total_frames), FRAME_FACTOR)
    wanted = total_frames / video_fps * fps
    nframes = floor_by_factor(min(min(max(wanted, low), high), total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= nframes <= total_frames:
        raise ValueError(f"nframes should be in [{FRAME_FACTOR}, {total_frames}], got {nframes}")
    return nframes


def frame_indices(total_frames: int, nframes: int) -> list[int]:
    """`nframes` indices from 0 to `total_frames - 1`, evenly spaced and rounded (ties to even),
    as `torch.linspace(0, total_frames - 1, nframes).round()` gives them."""
    if nframes == 1:
        return [0]
    last = total_frames - 1
    return [round(Fraction(last * i, nframes - 1)) for i in range(nframes)]


def frame_size(height: int, width: int, nframes: int, sampling: VideoSampling) -> tuple[int, int]:
    """(height, width) of every sampled frame (`fetch_video`'s `max_pixels` rule)."""
    max_pixels = max(
        min(sampling.max_pixels, sampling.total_pixels / nframes * FRAME_FACTOR),
        int(sampling.min_pixels * 1.05),
    )
    return smart_resize(height, width, sampling.factor, sampling.min_pixels, int(max_pixels))


def sample_rate(nframes: int, total_frames: int, video_fps: float) -> float:
    """Frames per second of the sampled frames in the video's time (qwen-vl-utils'
    `sample_fps`): what the model is told about the frames' spacing."""
    return nframes / max(total_frames, 1e-6) * video_fps


def encoded_rate(rate: float, fps: float) -> Fraction:
    """The frame rate to label the sampled clip with, so that SGLang's own sampling (the same
    `smart_nframes`, run again on what cascade sends) keeps every frame: `fps` itself when the
    frames are that dense or denser (a short clip raised to `min_frames`), else the sampling
    rate as a fraction just below it (a long clip capped at `max_frames`). The float product
    `n / rate * fps` is then never a hair below `n`, which would drop the last pair of frames.
    """
    target = Fraction(fps).limit_denominator(1000)
    if rate >= float(target) * 0.995:
        return target
    return Fraction(math.floor(rate * 1000), 1000) or Fraction(1, 1000)


__all__ = [
    "FRAME_FACTOR",
    "VIDEO_FACTOR",
    "VideoSampling",
    "encoded_rate",
    "frame_indices",
    "frame_size",
    "round_by_factor",
    "sample_rate",
    "smart_nframes",
]
