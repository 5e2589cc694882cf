"""Settings of image intake, URL fetching and file storage, read from `CASCADE_*` variables.

Kept apart from `app.config.Settings` so the media code can be built and tested on its own; the
variable names share the `CASCADE_` prefix so one environment configures everything. List
settings are comma-separated (`CASCADE_FETCH_ALLOW_HOSTS=nas.lan,192.168.1.0/24`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from app.media.ssrf import HostRules
from app.settings_base import CascadeSettings, split_csv

MB = 1024 * 1024

# One visual token per 32x32 pixels (patch 16, spatial merge 2).
IMAGE_FACTOR = 32


class MediaSettings(CascadeSettings):
    """Field `x` is read from env `CASCADE_X`."""

    key_prefix: str = Field(
        default="cascade", min_length=1, description="Namespace of every Redis key written."
    )

    # --- what the model sees ---
    image_min_pixels: int = Field(
        default=4 * IMAGE_FACTOR * IMAGE_FACTOR,
        ge=IMAGE_FACTOR * IMAGE_FACTOR,
        description="Smallest image area sent to the runtime (qwen-vl-utils' default: 4 tokens).",
    )
    image_max_pixels: int = Field(
        default=1280 * IMAGE_FACTOR * IMAGE_FACTOR,
        ge=IMAGE_FACTOR * IMAGE_FACTOR,
        description="Largest image area sent to the runtime (1280 visual tokens by default).",
    )
    image_max_source_pixels: int = Field(
        default=8192 * 8192,
        ge=1,
        description="Largest image (width x height) cascade agrees to decode at all.",
    )
    image_jpeg_quality: int = Field(
        default=90, ge=50, le=100, description="JPEG quality of re-encoded photos."
    )
    image_decode_concurrency: int = Field(
        default=2, ge=1, description="Images decoded at the same time in one process."
    )
    image_decode_max_bytes: int = Field(
        default=128 * MB,
        ge=1 * MB,
        description=(
            "Memory one image decode may take (decoded pixels and every full-size copy); "
            "larger images are refused from their header, before decoding."
        ),
    )

    # --- limits ---
    image_max_bytes: int = Field(default=20 * MB, ge=1, description="Largest single image input.")
    request_max_images: int = Field(default=16, ge=1, description="Images in one request.")
    request_max_image_bytes: int = Field(
        default=64 * MB, ge=1, description="Image input bytes read for one request in total."
    )

    # --- video (needs the `video` extra) ---
    video_max_bytes: int = Field(default=64 * MB, ge=1, description="Largest single video input.")
    request_max_videos: int = Field(default=2, ge=0, description="Videos in one request.")
    video_codecs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["h264", "vp8", "vp9", "av1"],
        description=(
            "Video codecs accepted (FFmpeg names), in MP4/MOV or WebM/Matroska; anything else "
            "is refused before a frame is decoded."
        ),
    )
    video_max_source_pixels: int = Field(
        default=3840 * 2160, ge=1, description="Largest frame (width x height) decoded at all."
    )
    video_max_seconds: float = Field(default=600.0, gt=0, description="Longest video accepted.")
    video_max_source_frames: int = Field(
        default=36_000, ge=2, description="Most frames a video may have (counted before decoding)."
    )
    video_max_decode_pixels: int = Field(
        default=1920 * 1080 * 9000,
        ge=1,
        description=(
            "Pixels one video may make cascade decode in total (frames x width x height, all "
            "frames: sampling must decode the frames between the ones it keeps)."
        ),
    )
    video_decode_timeout: float = Field(
        default=60.0, gt=0, description="Seconds one video's decode and re-encode may take."
    )
    video_decode_concurrency: int = Field(
        default=1, ge=1, description="Videos decoded at the same time in one process."
    )
    video_fps: float = Field(
        default=2.0, gt=0, le=60, description="Frames per second sampled (qwen-vl-utils' FPS)."
    )
    video_min_frames: int = Field(default=4, ge=2, description="Fewest frames sampled.")
    video_max_frames: int = Field(default=768, ge=2, description="Most frames sampled.")
    video_min_pixels: int = Field(
        default=128 * IMAGE_FACTOR * IMAGE_FACTOR,
        ge=IMAGE_FACTOR * IMAGE_FACTOR,
        description="Smallest frame area sent (qwen-vl-utils' VIDEO_MIN_TOKEN_NUM: 128 tokens).",
    )
    video_max_pixels: int = Field(
        default=768 * IMAGE_FACTOR * IMAGE_FACTOR,
        ge=IMAGE_FACTOR * IMAGE_FACTOR,
        description="Largest frame area sent (qwen-vl-utils' VIDEO_MAX_TOKEN_NUM: 768 tokens).",
    )
    video_total_pixels: int = Field(
        default=24_576 * IMAGE_FACTOR * IMAGE_FACTOR,
        ge=IMAGE_FACTOR * IMAGE_FACTOR,
        description=(
            "Frame area of all sampled frames together, halved (two frames make one temporal "
            "patch): about the visual tokens one video costs, times 32x32."
        ),
    )

    # --- URL fetching ---
    fetch_timeout: float = Field(
        default=15.0, gt=0, description="Seconds one URL fetch may take in total."
    )
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Hosts that may be fetched even if they resolve to private addresses: names "
            "(`nas.lan`), suffixes (`*.lan`), addresses or networks (`192.168.1.0/24`)."
        ),
    )
    fetch_deny_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts never fetched, in the same forms; the deny list wins.",
    )

    # --- local files and storage ---
    local_image_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Directories whose images may be named by absolute path or file:// URL.",
    )
    image_ttl_days: int = Field(
        default=30, ge=1, description="Days a processed image is kept after its last use."
    )
    image_url_cache_ttl: int = Field(
        default=86_400, ge=0, description="Seconds a fetched URL is remembered (0 = never)."
    )
    file_max_bytes_vision: int = Field(default=20 * MB, ge=1)
    file_max_bytes_batch: int = Field(default=200 * MB, ge=1)
    file_max_bytes_batch_output: int = Field(default=1024 * MB, ge=1)

    @field_validator(
        "fetch_allow_hosts", "fetch_deny_hosts", "local_image_dirs", "video_codecs", mode="before"
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("fetch_allow_hosts", "fetch_deny_hosts")
    @classmethod
    def _valid_host_rules(cls, value: list[str]) -> list[str]:
        HostRules.parse(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("local_image_dirs")
    @classmethod
    def _absolute_dirs(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.is_absolute():
                raise ValueError(f"must be absolute paths, got {str(path)!r}")
        return value

    @model_validator(mode="after")
    def _check_pixels(self) -> MediaSettings:
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("CASCADE_IMAGE_MIN_PIXELS must not exceed CASCADE_IMAGE_MAX_PIXELS")
        if self.video_min_pixels > self.video_max_pixels:
            raise ValueError("CASCADE_VIDEO_MIN_PIXELS must not exceed CASCADE_VIDEO_MAX_PIXELS")
        if self.video_min_frames > self.video_max_frames:
            raise ValueError("CASCADE_VIDEO_MIN_FRAMES must not exceed CASCADE_VIDEO_MAX_FRAMES")
        return self

    @property
    def image_ttl_seconds(self) -> int:
        return self.image_ttl_days * 86_400

    def file_max_bytes(self, purpose: str) -> int:
        """The size cap of a stored file of `purpose`."""
        if purpose == "vision":
            return self.file_max_bytes_vision
        if purpose == "batch_output":
            return self.file_max_bytes_batch_output
        return self.file_max_bytes_batch
