"""`/v1/files` through the official `openai` SDK against a real uvicorn server and Redis, and the
`FileStore` underneath it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.responses import JSONResponse
from app.config import load_settings
from app.errors import NotFoundError, PayloadTooLargeError
from app.media.config import MediaSettings
from app.media.files import FileStore
from app.media.files_api import router
from tests.media_server import png_bytes
from tests.redis_server import RedisServer, free_port

VISION_CAP = 50_000


@dataclass
class Running:
    base_url: str
    files_dir: Path

    def client(self, key: str = "k1") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=20)


def build_app(redis_url: str, state_dir: Path) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = aioredis.Redis.from_url(redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(lifespan=lifespan, default_response_class=JSONResponse)
    app.state.settings = load_settings(redis_url=redis_url, state_dir=state_dir, api_keys="k1,k2")
    app.state.media_settings = MediaSettings(file_max_bytes_vision=VISION_CAP)
    install_error_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
def api(redis_server: RedisServer, tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    app = build_app(redis_server.url, tmp_path / "state")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.02)
    try:
        yield Running(f"http://127.0.0.1:{port}/v1", tmp_path / "state" / "files")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def stored_names(files_dir: Path) -> list[str]:
    return sorted(p.name for p in files_dir.iterdir()) if files_dir.exists() else []


def test_create_retrieve_content_list_delete_with_the_openai_sdk(api: Running) -> None:
    client = api.client()
    image = png_bytes(80, 60)
    created = client.files.create(file=("cat.png", image, "image/png"), purpose="vision")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (len(image), "cat.png", "vision")
    assert created.status == "processed"
    assert abs(created.created_at - time.time()) < 60

    assert client.files.retrieve(created.id) == created
    assert client.files.content(created.id).content == image
    listed = client.files.list()
    assert [f.id for f in listed.data] == [created.id]
    assert stored_names(api.files_dir) == [created.id]  # written whole, no temporary left

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "file")
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(created.id)
    assert info.value.status_code == 404
    assert info.value.body["code"] == "file_not_found"  # type: ignore[index]
    assert stored_names(api.files_dir) == []


def test_files_are_visible_to_their_owner_only(api: Running) -> None:
    mine = api.client("k1").files.create(file=("a.jsonl", b'{"a": 1}\n'), purpose="batch")
    other = api.client("k2")
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.files.delete(mine.id)
    assert other.files.list().data == []
    assert api.client("k1").files.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.AuthenticationError):
        api.client("wrong").files.list()


def test_list_filters_by_purpose_and_pages_with_after(api: Running) -> None:
    client = api.client()
    batch_ids = []
    for i in range(5):
        batch_ids.append(
            client.files.create(file=(f"{i}.jsonl", f'{{"i": {i}}}\n'.encode()), purpose="batch").id
        )
    vision = client.files.create(file=("x.png", png_bytes()), purpose="vision")
    assert [f.id for f in client.files.list(purpose="vision")] == [vision.id]
    # The SDK follows `has_more` / `after` itself across pages of two.
    newest_first = [f.id for f in client.files.list(purpose="batch", limit=2)]
    assert newest_first == batch_ids[::-1]
    first_page = client.files.list(purpose="batch", limit=2, order="asc")
    assert [f.id for f in first_page.data] == batch_ids[:2]
    assert first_page.has_more is True
    everything = [f.id for f in client.files.list(limit=100, order="asc")]
    assert everything == [*batch_ids, vision.id]


def test_a_large_batch_file_streams_through(api: Running) -> None:
    line = b'{"custom_id": "x", "body": {"messages": [{"role": "user", "content": "hi"}]}}\n'
    data = line * (6 * 1024 * 1024 // len(line))
    client = api.client()
    created = client.files.create(file=("big.jsonl", data), purpose="batch")
    assert created.bytes == len(data)
    assert client.files.content(created.id).content == data


def test_upload_limits_and_validation(api: Running) -> None:
    client = api.client()
    with pytest.raises(openai.APIStatusError) as too_big:
        client.files.create(
            file=("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * VISION_CAP), purpose="vision"
        )
    assert too_big.value.status_code == 413
    assert too_big.value.body["code"] == "file_too_large"  # type: ignore[index]
    assert "vision file larger than 48.8 KB" in too_big.value.message
    with pytest.raises(openai.BadRequestError) as not_image:
        client.files.create(file=("notes.png", b"just text"), purpose="vision")
    assert "not an image" in not_image.value.message
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
    assert "purpose must be one of: vision, batch" in bad_purpose.value.message
    with pytest.raises(openai.BadRequestError, match="file is empty"):
        client.files.create(file=("a.jsonl", b""), purpose="batch")
    assert stored_names(api.files_dir) == []  # nothing half-written left behind


def test_expires_after_sets_expires_at(api: Running) -> None:
    created = api.client().files.create(
        file=("a.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert created.expires_at == created.created_at + 3600


def test_malformed_uploads_are_400s(api: Running) -> None:
    import httpx

    url = api.base_url + "/files"
    headers = {"Authorization": "Bearer k1"}
    not_multipart = httpx.post(url, headers=headers, json={"purpose": "batch"})
    assert not_multipart.status_code == 400
    no_file = httpx.post(url, headers=headers, files={"purpose": (None, "batch")})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]["message"]
    no_purpose = httpx.post(url, headers=headers, files={"file": ("a.jsonl", b"{}\n")})
    assert no_purpose.status_code == 400 and "'purpose'" in no_purpose.json()["error"]["message"]
    two_files = httpx.post(
        url,
        headers=headers,
        files=[("purpose", (None, "batch")), ("file", ("a", b"1")), ("file", ("b", b"2"))],
    )
    assert two_files.status_code == 400
    garbage = httpx.post(
        url,
        headers={**headers, "Content-Type": "multipart/form-data; boundary=xyz"},
        content=b"--xyz\r\nnot a header line at all\r\n\r\n",
    )
    assert garbage.status_code == 400
    assert stored_names(api.files_dir) == []


# --- the store itself ---


@pytest.fixture
async def store(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[FileStore]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield FileStore(client, tmp_path / "files", MediaSettings(file_max_bytes_batch=10_000))
    await client.aclose()


async def test_streamed_upload_over_the_cap_stops_early_and_leaves_nothing(
    store: FileStore,
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 4096
            yield b"x" * 4096

    with pytest.raises(PayloadTooLargeError, match=r"batch file larger than 9\.8 KB"):
        await store.create("o", filename="a.jsonl", purpose="batch", content=endless())
    assert sent <= 12_288
    assert list(store.root.iterdir()) == []


async def test_open_file_survives_delete_and_sweep_cleans_orphans(store: FileStore) -> None:
    obj = await store.create("o", filename="../../etc/passwd", purpose="batch", content=b"abc\n")
    assert obj.filename == "passwd"  # a display name only; bytes live under the id
    handle = await store.open("o", obj.id)
    await store.delete("o", obj.id)
    assert handle.read() == b"abc\n"
    handle.close()
    with pytest.raises(NotFoundError):
        await store.get("o", obj.id)

    kept = await store.create("o", filename="k.jsonl", purpose="batch", content=b"{}\n")
    orphan = store.path("file-" + "0" * 24)
    orphan.write_bytes(b"left by a crash")
    stale_tmp = store.root / ".upload-deadbeef.tmp"
    stale_tmp.write_bytes(b"half")
    old = time.time() - 7200
    for path in (orphan, stale_tmp):
        os.utime(path, (old, old))
    assert await store.sweep(grace_seconds=3600) == 2
    assert sorted(p.name for p in store.root.iterdir()) == [kept.id]


async def test_expired_and_vanished_files_disappear_from_lists(store: FileStore) -> None:
    a = await store.create("o", filename="a", purpose="batch", content=b"1")
    b = await store.create("o", filename="b", purpose="batch", content=b"2")
    await store.redis.delete(store.meta_key(a.id))  # as if it expired in Redis
    files, more = await store.list("o")
    assert [f.id for f in files] == [b.id] and more is False
    assert await store.redis.zcard(store.owner_key("o")) == 1
    with pytest.raises(NotFoundError):
        await store.get("o", "not-an-id")
    assert await store.read_bytes("o", b.id) == b"2"
    chunks = [c async for c in store.iter_bytes("o", b.id)]
    assert chunks == [b"2"]


async def test_concurrent_uploads_do_not_collide(store: FileStore) -> None:
    made = await asyncio.gather(
        *(
            store.create("o", filename=f"{i}", purpose="batch", content=f"{i}\n".encode())
            for i in range(10)
        )
    )
    assert len({m.id for m in made}) == 10
    for m in made:
        assert await store.read_bytes("o", m.id) == f"{m.filename}\n".encode()
