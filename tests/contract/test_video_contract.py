"""The video form cascade sends is what SGLang 0.5.23 reads, and its own sampling keeps it whole.

- A body whose history holds a `video_url` part (a `data:video/mp4` URI, as `app.agent.prompt`
  makes from a `video_ref`) validates as SGLang's `ChatCompletionRequest` with the part parsed
  as `ChatCompletionMessageContentVideoPart`, and SGLang's content processing
  (`process_content_for_template_format`) hands the URI to `video_data` and leaves a `video`
  placeholder for the template.
- SGLang samples the decoded clip again (`multimodal/processors/qwen_vl.py`: `smart_nframes`,
  then `np.linspace`): run from its source, that keeps every frame of clips cascade made, for
  many source lengths and rates, and cascade's frame indices equal `torch.linspace`'s (what
  qwen-vl-utils uses) wherever float32 can hold them exactly, and are never more than one off.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from app.config import load_settings
from app.media.video_frames import (
    encoded_rate,
    frame_indices,
    sample_rate,
    smart_nframes,
)
from app.runtime import RuntimeRequest
from app.runtime.body import build_chat_body, new_rid

URI = "data:video/mp4;base64,AAAAIGZ0eXBpc29t"


def test_a_video_part_validates_as_sglangs_video_part() -> None:
    from sglang.srt.entrypoints.openai.protocol import (
        ChatCompletionMessageContentVideoPart,
        ChatCompletionRequest,
    )
    from sglang.srt.parser.jinja_template_utils import process_content_for_template_format

    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what happens?"},
            {"type": "video_url", "video_url": {"url": URI}},
        ],
    }
    body = build_chat_body(
        RuntimeRequest(messages=[message]), load_settings(), model="m", rid=new_rid(), stream=False
    )
    parsed = ChatCompletionRequest.model_validate(body)
    part = parsed.messages[0].content[1]  # type: ignore[index]
    assert isinstance(part, ChatCompletionMessageContentVideoPart)
    assert part.video_url.url == URI
    images: list[Any] = []
    videos: list[Any] = []
    audios: list[Any] = []
    modalities: list[Any] = []
    processed = process_content_for_template_format(
        parsed.messages[0].model_dump(), "openai", images, videos, audios, modalities
    )
    assert videos == [URI] and images == []
    assert [p["type"] for p in processed["content"]] == ["text", "video"]


def _sglang_smart_nframes() -> Any:
    spec = importlib.util.find_spec("sglang")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "srt/multimodal/processors/qwen_vl.py"
    tree = ast.parse(path.read_text())
    names = {"round_by_factor", "ceil_by_factor", "floor_by_factor", "smart_nframes"}
    constants = {"FRAME_FACTOR", "FPS", "FPS_MIN_FRAMES", "FPS_MAX_FRAMES"}
    keep = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name in names)
        or (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id in constants for t in node.targets)
        )
    ]
    namespace: dict[str, Any] = {"math": math, "logger": logging.getLogger("sglang_ref")}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["smart_nframes"]


@pytest.mark.parametrize("video_fps", [1.0, 10.0, 23.976, 25.0, 29.97, 30.0, 60.0])
@pytest.mark.parametrize("total", [2, 4, 5, 20, 61, 300, 1537, 3000, 9000, 36_000])
def test_sglang_keeps_every_frame_cascade_sends(total: int, video_fps: float) -> None:
    import numpy as np

    sglang_nframes = _sglang_smart_nframes()
    nframes = smart_nframes(total, video_fps, fps=2.0, min_frames=4, max_frames=768)
    rate = float(encoded_rate(sample_rate(nframes, total, video_fps), 2.0))
    kept = sglang_nframes({}, total_frames=nframes, video_fps=rate)
    assert kept == nframes
    idx = np.unique(np.linspace(0, nframes - 1, num=kept, dtype=np.int64))
    assert idx.tolist() == list(range(nframes))


@pytest.mark.parametrize("nframes", [2, 4, 16, 64, 256, 768])
def test_frame_indices_are_torch_linspace_rounded(nframes: int) -> None:
    import torch

    for total in [*range(nframes, nframes + 300), 5000, 9001, 12_000, 20_000, 36_000]:
        ref = torch.linspace(0, total - 1, nframes).round().long().tolist()
        ours = frame_indices(total, nframes)
        if total <= 12_000:
            assert ours == ref, total
        else:
            assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= 1
