"""Safe video decoding: checked from the container before any frame is decoded, sampled the way
Qwen3.6 samples (`app.media.video_frames`), re-encoded as a small MP4 of just those frames.

`prepare_video(data, limits)` (blocking: call it through `asyncio.to_thread`), in this order:
  1. the container is recognised from its first bytes (MP4/MOV: an `ftyp` box; WebM/Matroska:
     the EBML magic) and FFmpeg is told to use that demuxer only, so no other demuxer (HLS,
     concat, image sequences: ones that can open further files or URLs) ever sees the bytes,
     and anything else is refused as not a video;
  2. the header is read: a video stream whose codec is in `limits.codecs`, width x height within
     `limits.max_source_pixels`, a duration within `limits.max_seconds`, a declared frame count
     within `limits.max_source_frames`, and frames x pixels within `limits.max_decode_pixels`;
  3. the packets are counted without decoding them (a demux pass costs microseconds per frame):
     the real frame count and duration must pass the same caps, and a file with fewer packets
     than its header declares is refused as truncated;
  4. only then are frames decoded, one at a time, single-threaded, with FFmpeg's own
     `max_pixels` guard on the decoder (a stream that switches to a larger size mid-way fails
     inside FFmpeg, before the buffer is allocated) and every frame's size checked against the
     header. The `nframes` frames Qwen's sampling picks are scaled (swscale, bicubic) to the
     size it picks and encoded straight into the output (H.264, one thread, deterministic:
     same input, same bytes), so memory holds one source frame and the encoder's state, never
     the clip; `limits.timeout` bounds the whole pass;
  5. the clip is labelled with the sampling rate (`encoded_rate`), so SGLang's processor, which
     samples again with the same rules, keeps every frame and times them as in the source.
All failures are `VideoError`s (400) whose messages name the problem; FFmpeg's text never
reaches the client. PyAV (`av`, the `video` extra) is imported on first use: without it every
video is a `VideoExtraMissingError` (400).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any

import structlog

from app.media.config import MediaSettings
from app.media.errors import VideoError, VideoExtraMissingError
from app.media.resize import MAX_RATIO
from app.media.video_frames import (
    VideoSampling,
    encoded_rate,
    frame_indices,
    frame_size,
    sample_rate,
    smart_nframes,
)

log = structlog.get_logger(__name__)

CONTAINERS = "MP4/MOV or WebM/Matroska"
OUTPUT_MEDIA_TYPE = "video/mp4"
_CHECK_EVERY = 64  # packets or frames between two deadline checks
_X264 = {"crf": "23", "preset": "veryfast", "threads": "1"}


@dataclass(frozen=True)
class VideoLimits:
    codecs: frozenset[str]
    max_source_pixels: int
    max_seconds: float
    max_source_frames: int
    max_decode_pixels: int
    timeout: float
    sampling: VideoSampling

    @classmethod
    def from_settings(cls, settings: MediaSettings) -> VideoLimits:
        return cls(
            codecs=frozenset(c.lower() for c in settings.video_codecs),
            max_source_pixels=settings.video_max_source_pixels,
            max_seconds=settings.video_max_seconds,
            max_source_frames=settings.video_max_source_frames,
            max_decode_pixels=settings.video_max_decode_pixels,
            timeout=settings.video_decode_timeout,
            sampling=VideoSampling(
                fps=settings.video_fps,
                min_frames=settings.video_min_frames,
                max_frames=settings.video_max_frames,
                min_pixels=settings.video_min_pixels,
                max_pixels=settings.video_max_pixels,
                total_pixels=settings.video_total_pixels,
            ),
        )


@dataclass(frozen=True)
class PreparedVideo:
    """The sampled clip: MP4 bytes, frame size, frame count and the rate it is labelled with."""

    data: bytes
    width: int
    height: int
    frames: int
    fps: Fraction
    media_type: str = OUTPUT_MEDIA_TYPE


def sniff_container(head: bytes) -> str | None:
    """FFmpeg's demuxer for these first bytes: `mp4` (an ISO-BMFF `ftyp` box: MP4, MOV, M4V)
    or `matroska` (the EBML magic: WebM, MKV); None for anything else."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    return None


def load_av() -> ModuleType:
    """The PyAV module, or `VideoExtraMissingError` when the `video` extra is not installed."""
    try:
        import av
    except ImportError:
        raise VideoExtraMissingError() from None
    return av


@dataclass(frozen=True)
class _Probe:
    codec: str
    width: int
    height: int
    frames: int
    seconds: float
    fps: float


def prepare_video(data: bytes, limits: VideoLimits) -> PreparedVideo:
    """Check, sample and re-encode one video (see the module docstring)."""
    container_format = sniff_container(data[:16])
    if container_format is None:
        raise VideoError(f"not a video this server accepts ({CONTAINERS})")
    av = load_av()
    deadline = time.monotonic() + limits.timeout
    try:
        probe = _probe(av, data, container_format, limits, deadline)
        return _sample(av, data, container_format, probe, limits, deadline)
    except av.FFmpegError:
        raise VideoError("video cannot be decoded (corrupt or truncated)") from None


def _open(av: ModuleType, data: bytes, container_format: str) -> Any:
    # enable_drefs off (the default, said out loud): a MOV may not point at other files.
    options = {"enable_drefs": "0"} if container_format == "mp4" else {}
    try:
        return av.open(io.BytesIO(data), mode="r", format=container_format, options=options)
    except av.FFmpegError:
        raise VideoError("video cannot be read (corrupt or truncated)") from None


def _video_stream(container: Any, limits: VideoLimits) -> Any:
    if not container.streams.video:
        raise VideoError("the file has no video stream")
    stream = container.streams.video[0]
    codec = str(stream.codec_context.codec.name).lower()
    if codec not in limits.codecs:
        allowed = ", ".join(sorted(limits.codecs))
        raise VideoError(f"video codec {codec!r} is not accepted (accepted: {allowed})")
    return stream


def _check_geometry(width: int, height: int, limits: VideoLimits) -> None:
    if width < 1 or height < 1:
        raise VideoError("video has no frame size")
    if width * height > limits.max_source_pixels:
        raise VideoError(
            f"video frames are {width}x{height}, more than the "
            f"{limits.max_source_pixels} pixels accepted",
            code="video_too_large",
        )
    if max(width, height) / min(width, height) > MAX_RATIO:
        raise VideoError(f"video aspect ratio is more extreme than {MAX_RATIO}:1")


def _check_length(frames: int, seconds: float, pixels: int, limits: VideoLimits) -> None:
    if seconds > limits.max_seconds:
        raise VideoError(
            f"video is longer than {limits.max_seconds:g} seconds", code="video_too_long"
        )
    if frames > limits.max_source_frames:
        raise VideoError(
            f"video has more than {limits.max_source_frames} frames", code="video_too_long"
        )
    if frames * pixels > limits.max_decode_pixels:
        raise VideoError(
            "video has too many pixels to decode (frames x width x height over "
            f"{limits.max_decode_pixels})",
            code="video_too_large",
        )


def _probe(
    av: ModuleType, data: bytes, container_format: str, limits: VideoLimits, deadline: float
) -> _Probe:
    with _open(av, data, container_format) as container:
        stream = _video_stream(container, limits)
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        _check_geometry(width, height, limits)
        declared = max(int(stream.frames or 0), 0)
        if stream.duration is not None and stream.time_base is not None:
            declared_seconds = float(stream.duration * stream.time_base)
        else:
            declared_seconds = (container.duration or 0) / 1_000_000
        _check_length(declared, declared_seconds, width * height, limits)
        # The demux pass: packets are counted and timed, never decoded.
        count, end = 0, 0.0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            count += 1
            if packet.pts is not None and packet.time_base is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
            if count % _CHECK_EVERY == 0:
                _check_length(count, end, width * height, limits)
                _check_deadline(deadline)
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        seconds = max(end - start, 0.0)
        _check_length(count, seconds, width * height, limits)
        if count < declared:
            raise VideoError("video is truncated (fewer frames than its header declares)")
        if count < 2:
            raise VideoError("video needs at least two frames")
        rate = stream.average_rate
        fps = float(rate) if rate else (count / seconds if seconds > 0 else 0.0)
        if fps <= 0:
            raise VideoError("video has no frame rate")
        return _Probe(str(stream.codec_context.codec.name), width, height, count, seconds, fps)


def _sample(
    av: ModuleType,
    data: bytes,
    container_format: str,
    probe: _Probe,
    limits: VideoLimits,
    deadline: float,
) -> PreparedVideo:
    sampling = limits.sampling
    try:
        nframes = smart_nframes(
            probe.frames,
            probe.fps,
            fps=sampling.fps,
            min_frames=sampling.min_frames,
            max_frames=sampling.max_frames,
        )
        height, width = frame_size(probe.height, probe.width, nframes, sampling)
    except ValueError:
        raise VideoError("video cannot be sampled (too few frames or an extreme shape)") from None
    wanted = frame_indices(probe.frames, nframes)
    rate = encoded_rate(sample_rate(nframes, probe.frames, probe.fps), sampling.fps)
    output = io.BytesIO()
    written = 0
    with (
        _open(av, data, container_format) as container,
        av.open(output, mode="w", format="mp4") as out,
    ):
        stream = _video_stream(container, limits)
        stream.codec_context.thread_count = 1
        # FFmpeg refuses to allocate a frame larger than this, whatever the stream says later.
        stream.codec_context.options = {"max_pixels": str(probe.width * probe.height)}
        encoder = out.add_stream("libx264", rate=rate, options=dict(_X264))
        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
        time_base = Fraction(1) / rate
        targets = iter(wanted)
        target = next(targets)
        for index, frame in enumerate(container.decode(stream)):
            if (frame.width, frame.height) != (probe.width, probe.height):
                raise VideoError("video changes its frame size mid-stream")
            if index % _CHECK_EVERY == 0:
                _check_deadline(deadline)
            if index < target:
                continue
            scaled = frame.reformat(
                width=width, height=height, format="yuv420p", interpolation="BICUBIC"
            )
            scaled.pts, scaled.time_base = written, time_base
            for packet in encoder.encode(scaled):
                out.mux(packet)
            written += 1
            target = next(targets, -1)
            if target < 0:
                break
        if written < nframes:
            raise VideoError("video is truncated or corrupt (frames could not be decoded)")
        for packet in encoder.encode(None):
            out.mux(packet)
    log.info(
        "video_prepared",
        codec=probe.codec,
        source=f"{probe.width}x{probe.height}",
        source_frames=probe.frames,
        frames=nframes,
        size=f"{width}x{height}",
    )
    return PreparedVideo(output.getvalue(), width, height, nframes, rate)


def _check_deadline(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise VideoError("video took too long to decode", code="video_decode_timeout")
