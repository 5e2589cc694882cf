"""Test videos made with PyAV from Pillow frames: ordinary clips and bomb-like ones.

Every clip is generated in the test that uses it (nothing binary is checked in). Frames are
solid colours that change each frame, so an encoder cannot collapse them and a test can tell
which frames were kept.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
from PIL import Image

CODEC_FORMATS = {"libx264": "mp4", "libvpx": "webm", "libvpx-vp9": "webm", "mpeg4": "mp4"}


def colour(index: int) -> tuple[int, int, int]:
    return ((index * 37) % 256, (index * 11) % 256, (255 - index * 5) % 256)


def clip(
    frames: int = 20,
    width: int = 320,
    height: int = 240,
    fps: Fraction | int = 10,
    *,
    codec: str = "libx264",
    container: str | None = None,
) -> bytes:
    """An encoded clip of `frames` solid-colour frames of `width` x `height` at `fps`."""
    buffer = io.BytesIO()
    options = {"preset": "ultrafast"} if codec == "libx264" else {}
    with av.open(buffer, "w", format=container or CODEC_FORMATS[codec]) as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = Image.new("RGB", (width, height), colour(index))
            frame = av.VideoFrame.from_image(image)
            frame.pts, frame.time_base = index, Fraction(1) / Fraction(fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def decoded_frames(data: bytes) -> tuple[int, int, int, Fraction]:
    """(frames, width, height, average rate) of an encoded clip, every frame decoded."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, stream.codec_context.width, stream.codec_context.height, stream.average_rate
