"""Image-question jobs: images × questions expanded into a batch, run, and reported."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from tests.integration.test_batch_support import (
    BatchApp,
    await_final,
    batch_api,
    read_lines,
    running_worker,
    upload_jsonl,
)
from tests.media_server import MediaServer
from tests.redis_server import RedisServer
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle


def png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png((200, 30, 30)))
    (folder / "b.png").write_bytes(png((200, 30, 30)))  # the same picture again
    (folder / "c.PNG").write_bytes(png((30, 30, 200), (64, 64)))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub" / "d.png").write_bytes(png((30, 200, 30)))
    monkeypatch.setenv("CASCADE_LOCAL_IMAGE_DIRS", str(folder))
    return folder


@pytest.fixture
def api(sim: SimHandle, redis_server: RedisServer, tmp_path: Path, photos: Path) -> BatchApp:
    with batch_api(sim, redis_server, tmp_path / "state") as app:
        yield app  # type: ignore[misc]


def post_job(api: BatchApp, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(api.url + "/v1/jobs/image-questions", json=body, timeout=30)


def user_text(body: dict[str, Any]) -> str:
    parts = body["messages"][-1]["content"]
    return " ".join(p["text"] for p in parts if p.get("type") == "text")


async def test_folder_job_with_questions_schema_and_budget(
    api: BatchApp, sim: SimHandle, photos: Path, redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(match="colour", output='Thinking.\n</think>\n\n{"answer": "red"}'))
    sim.sim.add_rule(Rule(match=None, output='Thinking.\n</think>\n\n{"answer": "a square"}'))
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    response = post_job(
        api,
        {
            "folder": str(photos),
            "questions": ["What is shown?", "Which colour dominates?"],
            "thinking_budget": 64,
            "response_schema": schema,
            "metadata": {"album": "test"},
        },
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "batch" and job["status"] == "validating"
    assert job["job"]["images"] == 3 and job["metadata"] == {"album": "test"}
    client = api.client()
    async with running_worker(api.settings, api.config):
        done = await await_final(client, job["id"])
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (6, 6)
    output = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [
        "img1-q1",
        "img1-q2",
        "img2-q1",
        "img2-q2",
        "img3-q1",
        "img3-q2",
    ]
    bodies = {line["custom_id"]: line["response"]["body"] for line in output}
    assert json.loads(bodies["img1-q2"]["choices"][0]["message"]["content"]) == {"answer": "red"}
    assert bodies["img1-q2"]["choices"][0]["message"]["reasoning_content"] == "Thinking.\n"
    shas = {cid: body["cascade"]["images"][0]["sha256"] for cid, body in bodies.items()}
    # a.png and b.png hold the same picture: one stored image; c.PNG is another.
    assert shas["img1-q1"] == shas["img2-q1"] == shas["img1-q2"]
    assert shas["img3-q1"] != shas["img1-q1"]
    with redis.Redis.from_url(redis_server.url) as probe:
        assert len(probe.keys("cascade:media:image:*")) == 2
    # What reached the runtime: image first, then the question; schema and budget applied.
    seen = [r.body for r in sim.sim.requests]
    assert len(seen) == 6
    first = seen[0]
    content = first["messages"][-1]["content"]
    assert content[0]["type"] == "image_url"
    assert content[0]["image_url"]["url"].startswith("data:image/")
    assert first["response_format"]["type"] == "json_schema"
    assert first["response_format"]["json_schema"]["schema"] == schema
    assert first["chat_template_kwargs"]["enable_thinking"] is True
    assert first["custom_params"]["thinking_budget"] <= 64
    assert sorted(user_text(b) for b in seen).count("Which colour dominates?") == 3
    # The report's thumbnails.
    base = f"{api.url}/v1/batches/{done.id}/images/"
    thumb = await asyncio.to_thread(httpx.get, base + shas["img3-q1"], timeout=10)
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    missing = await asyncio.to_thread(httpx.get, base + "0" * 64, timeout=10)
    assert missing.status_code == 404


async def test_template_job_with_listed_images(api: BatchApp, sim: SimHandle, photos: Path) -> None:
    sim.sim.add_rule(Rule(match=None, output="Une photo."))
    inline = "data:image/png;base64," + base64.b64encode(png((10, 10, 10))).decode()
    response = post_job(
        api,
        {
            "images": [inline, str(photos / "sub" / "d.png")],
            "template": "describe.jinja",
            "variables": {"language": "French"},
            "system": "You describe photos.",
        },
    )
    assert response.status_code == 200, response.text
    client = api.client()
    async with running_worker(api.settings, api.config):
        done = await await_final(client, response.json()["id"])
    assert done.status == "completed"
    output = read_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["img1-q1", "img2-q1"]
    texts = [user_text(r.body) for r in sim.sim.requests]
    assert all("Describe this photo" in t and "Answer in French." in t for t in texts)
    assert all(
        r.body["messages"][0] == {"role": "system", "content": "You describe photos."}
        for r in sim.sim.requests
    )


async def test_bad_images_fail_their_items_only(api: BatchApp, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=None, output="fine"))
    good = "data:image/png;base64," + base64.b64encode(png((1, 2, 3))).decode()
    response = post_job(
        api,
        {
            "images": [good, "data:image/png;base64,bm90IGFuIGltYWdl", "/etc/passwd"],
            "questions": ["What is it?"],
        },
    )
    assert response.status_code == 200, response.text
    client = api.client()
    async with running_worker(api.settings, api.config):
        done = await await_final(client, response.json()["id"])
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 2)
    errors = read_lines(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["img2-q1", "img3-q1"]
    assert all(e["response"]["status_code"] == 400 for e in errors)
    assert errors[1]["response"]["body"]["error"]["code"] == "path_not_allowed"
    assert len(sim.sim.requests) == 1  # refused images never reach the runtime


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"folder": "/etc", "questions": ["q"]}, "outside the allowed"),
        ({"folder": "relative/dir", "questions": ["q"]}, "absolute"),
        ({"images": ["x"], "template": "../secret.jinja"}, "template"),
        ({"images": ["x"], "template": "missing.jinja"}, "no prompt template"),
        ({"images": ["x"]}, "questions"),
        ({"questions": ["q"]}, "images"),
        ({"images": ["x"], "questions": ["q"], "completion_window": "forever"}, "window"),
    ],
)
def test_job_requests_are_checked(api: BatchApp, body: dict[str, Any], fragment: str) -> None:
    response = post_job(api, body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]


async def test_one_url_asked_many_questions_is_fetched_once(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    sim.sim.add_rule(Rule(match=None, output="seen"))
    with MediaServer() as media, batch_api(sim, redis_server, tmp_path / "state") as api:
        # Slow enough that the items asking about it run at the same time.
        media.add("/photo.png", body=png((5, 5, 5)), chunk_size=64, chunk_delay=0.01)
        url = f"http://127.0.0.1:{media.port}/photo.png"
        questions = [f"Question {n}?" for n in range(6)]
        response = await asyncio.to_thread(post_job, api, {"images": [url], "questions": questions})
        assert response.status_code == 200, response.text
        client = api.client()
        async with running_worker(api.settings, api.config):
            done = await await_final(client, response.json()["id"])
        assert done.status == "completed"
        assert done.request_counts is not None and done.request_counts.completed == 6
        assert media.hits["/photo.png"] == 1
        shas = {
            line["response"]["body"]["cascade"]["images"][0]["sha256"]
            for line in read_lines(client, done.output_file_id)
        }
        assert len(shas) == 1


def image_line(custom_id: str, image: bytes) -> dict[str, Any]:
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "what?"}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": content}]},
    }


async def test_thumbnails_are_served_only_for_the_images_a_batch_used(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASCADE_API_KEYS", "key-a,key-b")
    sim.sim.add_rule(Rule(match=None, output="a square"))
    with batch_api(sim, redis_server, tmp_path / "state") as api:
        alice, bob = api.client("key-a"), api.client("key-b")
        batches = {}
        for name, client, colour in (("a", alice, (250, 0, 0)), ("b", bob, (0, 0, 250))):
            file_id = upload_jsonl(client, [image_line(f"{name}-1", png(colour))])
            batches[name] = client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ).id
        shas = {}
        async with running_worker(api.settings, api.config):
            for name, client in (("a", alice), ("b", bob)):
                done = await await_final(client, batches[name])
                assert done.status == "completed"
                [line] = read_lines(client, done.output_file_id)
                shas[name] = line["response"]["body"]["cascade"]["images"][0]["sha256"]
        assert shas["a"] != shas["b"]

        def thumbnail(key: str, batch: str, sha: str) -> httpx.Response:
            url = f"{api.url}/v1/batches/{batches[batch]}/images/{sha}"
            return httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)

        unknown = await asyncio.to_thread(thumbnail, "key-b", "b", "0" * 64)
        assert unknown.status_code == 404
        # Each owner gets the images of their own batch ...
        for key, name in (("key-a", "a"), ("key-b", "b")):
            own = await asyncio.to_thread(thumbnail, key, name, shas[name])
            assert own.status_code == 200 and own.headers["content-type"] == "image/jpeg"
        # ... and never another's, through a batch they own: a 404 like an unknown image.
        for key, name, other in (("key-b", "b", "a"), ("key-a", "a", "b")):
            leaked = await asyncio.to_thread(thumbnail, key, name, shas[other])
            assert leaked.status_code == 404
            assert leaked.json() == unknown.json()
        # Nor through the other's batch, which answers as a missing batch.
        foreign = await asyncio.to_thread(thumbnail, "key-b", "a", shas["a"])
        assert foreign.status_code == 404
