"""Video input end to end: openai SDK / HTTP → cascade → simulator.

A short clip made in the test (20 solid-colour frames, 320x240, 10 fps: 2 s) goes in as a
`data:` URI, as an uploaded `vision` file and by URL (the media server); the simulator records
what it decoded: 4 frames (2 s at 2 fps) of 448x320 (qwen-vl-utils' size for 240x320, grown
to 128 tokens), all kept by the runtime's own sampling. The session keeps a `video_ref`.
Bomb-like videos, sent concurrently to a cascade process, are 4xx within a second with bounded
memory (measured as `test_image_bomb_memory.py` does); without PyAV the answer is a clear 400.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_image_bomb_memory import MAX_PEAK_DELTA, Api, burst, serve
from tests.media_server import MediaServer
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle
from tests.video_clips import clip, colour

KEY = "video-test-key"
EXPECTED = {"frames": 4, "kept": 4, "width": 448, "height": 320, "fps": 2.0}


def data_uri(data: bytes, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def video_message(url: str, text: str = "what happens?") -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "video_url", "video_url": {"url": url}},
        ],
    }


def runtime_videos(sim: SimHandle, index: int = -1) -> list[dict[str, Any]]:
    return sim.sim.requests[index].videos


def sent_parts(sim: SimHandle, index: int = -1) -> list[dict[str, Any]]:
    return [
        part
        for message in sim.sim.requests[index].body["messages"]
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if part["type"] != "text"
    ]


def first_frame_colour(uri: str) -> tuple[int, ...]:
    raw = base64.b64decode(uri.partition(",")[2])
    with av.open(io.BytesIO(raw)) as container:
        frame = next(container.decode(video=0))
        image: Image.Image = frame.to_image()
        return tuple(image.getpixel((10, 10)))  # type: ignore[arg-type]


@pytest.fixture
def media() -> Iterator[MediaServer]:
    with MediaServer() as server:
        yield server


@pytest.fixture
def local(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cascade]:
    """cascade allowed to fetch from the loopback media server."""
    monkeypatch.setenv("CASCADE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def chat(cascade: Cascade, messages: list[dict[str, Any]], **body: Any) -> httpx.Response:
    return httpx.post(
        cascade.url + "/v1/chat/completions",
        json={"model": "m", "messages": messages, **body},
        timeout=60,
    )


def test_a_data_uri_clip_reaches_the_runtime_as_qwens_frames(
    local: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="A colour fade."))
    response = chat(local, [video_message(data_uri(clip()))])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "A colour fade."
    assert runtime_videos(sim) == [EXPECTED]
    [part] = sent_parts(sim)
    assert part["type"] == "video_url"
    assert part["video_url"]["url"].startswith("data:video/mp4;base64,")
    # The first frame kept is the clip's first (solid colour, within H.264's rounding).
    got = first_frame_colour(part["video_url"]["url"])
    assert all(abs(a - b) <= 6 for a, b in zip(got, colour(0), strict=True))
    # 2 temporal patches of 14 x 10 tokens were counted by the runtime.
    assert sim.sim.requests[-1].prompt_tokens > 2 * 14 * 10


def test_an_uploaded_video_file_is_used_by_its_id(local: Cascade, sim: SimHandle) -> None:
    uploaded = httpx.post(
        local.url + "/v1/files",
        files=[("purpose", (None, "vision")), ("file", ("clip.webm", clip(codec="libvpx")))],
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    sim.sim.add_rule(Rule(output="ok"))
    response = chat(local, [video_message(file_id)])
    assert response.status_code == 200, response.text
    assert runtime_videos(sim) == [EXPECTED]


def test_a_video_url_is_fetched_by_cascade_not_by_the_runtime(
    local: Cascade, sim: SimHandle, media: MediaServer
) -> None:
    media.add("/clip.mp4", body=clip(), content_type="video/mp4")
    url = f"http://127.0.0.1:{media.port}/clip.mp4"
    sim.sim.add_rule(Rule(output="ok"))
    for _ in range(2):
        response = chat(local, [video_message(url)])
        assert response.status_code == 200, response.text
        assert runtime_videos(sim) == [EXPECTED]
        assert sent_parts(sim)[0]["video_url"]["url"].startswith("data:video/mp4;base64,")
    assert media.hits["/clip.mp4"] == 1  # remembered by URL


def test_a_private_video_url_is_refused_by_the_fetch_policy(
    cascade: Cascade, sim: SimHandle, media: MediaServer
) -> None:
    media.add("/clip.mp4", body=clip(), content_type="video/mp4")
    response = chat(cascade, [video_message(f"http://127.0.0.1:{media.port}/clip.mp4")])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "content[1]"
    assert media.hits["/clip.mp4"] == 0 and sim.sim.requests == []


def test_the_session_keeps_a_reference_and_resends_the_same_bytes(
    local: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="ok"))
    first = chat(local, [video_message(data_uri(clip()))], store=True)
    assert first.status_code == 200, first.text
    session_id = first.json()["session_id"]
    stored = httpx.get(f"{local.url}/v1/sessions/{session_id}").json()["messages"]
    [ref] = [p for p in stored[0]["content"] if p["type"] != "text"]
    assert ref["type"] == "video_ref"
    assert (ref["width"], ref["height"], ref["frames"], ref["fps"]) == (448, 320, 4, "2")
    assert len(ref["sha256"]) == 64 and "data:" not in str(stored)
    second = chat(local, [{"role": "user", "content": "and then?"}], session_id=session_id)
    assert second.status_code == 200, second.text
    assert sent_parts(sim, 0) == sent_parts(sim, 1)  # byte-identical: the prefix cache holds


def test_conversation_items_store_a_video_as_a_reference(local: Cascade) -> None:
    item = {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "what happens?"},
            {"type": "input_video", "video_url": data_uri(clip())},
        ],
    }
    created = httpx.post(local.url + "/v1/conversations", json={}, timeout=60)
    assert created.status_code == 200, created.text
    conversation_id = created.json()["id"]
    added = httpx.post(
        f"{local.url}/v1/conversations/{conversation_id}/items", json={"items": [item]}, timeout=60
    )
    assert added.status_code == 200, added.text
    stored = httpx.get(f"{local.url}/v1/sessions/{conversation_id}").json()["messages"]
    [ref] = [p for p in stored[0]["content"] if p["type"] != "text"]
    assert ref["type"] == "video_ref"
    assert (ref["width"], ref["height"], ref["frames"], ref["fps"]) == (448, 320, 4, "2")
    assert "data:" not in str(stored)


def test_the_responses_door_takes_cascades_input_video_part(local: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="ok"))
    response = httpx.post(
        local.url + "/v1/responses",
        json={
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what happens?"},
                        {"type": "input_video", "video_url": data_uri(clip())},
                    ],
                }
            ],
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert runtime_videos(sim) == [EXPECTED]


def test_video_parts_outside_user_messages_and_too_many_videos_are_400s(
    cascade: Cascade, sim: SimHandle
) -> None:
    part = {"type": "video_url", "video_url": {"url": data_uri(clip())}}
    response = chat(cascade, [{"role": "system", "content": [part]}])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0].type"
    many = {"role": "user", "content": [part, part, part]}
    response = chat(cascade, [many])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_videos"
    assert sim.sim.requests == []


# --- against a cascade process: bombs and the missing extra ---


def post_video(api: Api, data: bytes, media_type: str = "video/mp4") -> httpx.Response:
    return api.http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [video_message(data_uri(data, media_type))]},
    )


def truncated_fragmented_mp4() -> bytes:
    """An MP4 whose index comes first (fragmented), cut inside its frame data."""
    buffer = io.BytesIO()
    with av.open(
        buffer, "w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"}
    ) as out:
        stream = out.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for index in range(30):
            image = Image.effect_noise((320, 240), 40 + index).convert("RGB")
            frame = av.VideoFrame.from_image(image)
            frame.pts, frame.time_base = index, Fraction(1, 10)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def test_video_bombs_are_refused_fast_and_within_memory(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    bombs: dict[str, bytes] = {
        "huge frames (5120x2880)": clip(frames=2, width=5120, height=2880, fps=1),
        "two hours long": clip(frames=3, width=64, height=64, fps=Fraction(1, 3600)),
        "3000 frames (MP4)": clip(frames=3000, width=16, height=16, fps=100),
        "3000 frames (WebM)": clip(frames=3000, width=16, height=16, fps=100, codec="libvpx"),
        "MPEG-4 part 2 codec": clip(codec="mpeg4"),
        "truncated": truncated_fragmented_mp4(),
        "not a video": b"\x89PNG\r\n\x1a\n" + bytes(4096),
    }
    env = {"CASCADE_VIDEO_MAX_SOURCE_FRAMES": "1000"}
    for api in serve(sim, redis_server, tmp_path, key=KEY, connections=32, env=env):
        sim.sim.add_rule(Rule(output="ok"))
        warm = post_video(api, clip())  # PyAV and the app loaded, one real clip through
        assert warm.status_code == 200, warm.text
        rss_before = api.status("VmRSS")
        api.reset_peak()
        names = [name for name in bombs for _ in range(3)]
        calls: list[Callable[[], httpx.Response]] = [
            (lambda name=name, api=api: post_video(api, bombs[name])) for name in names
        ]
        statuses, seconds = burst(api, calls)
        delta = api.status("VmHWM") - rss_before
        for name, status, took in zip(names[::3], statuses[::3], seconds[::3], strict=True):
            print(f"{name}: {status} in {took:.3f} s")
        print(f"RSS before {rss_before / 2**20:.1f} MB, peak delta {delta / 2**20:.1f} MB")
        assert all(400 <= s < 500 for s in statuses), dict(zip(names, statuses, strict=True))
        assert max(seconds) < 1.0
        assert delta < MAX_PEAK_DELTA
        assert len(sim.sim.requests) == 1  # only the warm-up reached the model


def test_without_the_video_extra_a_video_is_a_clear_400(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    for api in serve(sim, redis_server, tmp_path, key=KEY, connections=32, block_av=True):
        response = post_video(api, clip())
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "video_extra_missing"
        assert "video input needs the video extra" in error["message"]
        assert error["param"] == "content[1]"
        # Images still work on such a server.
        sim.sim.add_rule(Rule(output="ok"))
        text = api.http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert text.status_code == 200
