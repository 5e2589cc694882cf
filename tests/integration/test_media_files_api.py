"""`/v1/files` through the official `openai` SDK against a real uvicorn server and Redis, and the
`FileStore` underneath it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from app.api.app import create_app
from app.batches.keys import BatchKeys
from app.config import load_settings
from app.errors import NotFoundError, PayloadTooLargeError
from app.media.config import MediaSettings
from app.media.files import FileStore
from tests.media_server import png_bytes
from tests.redis_server import RedisServer, free_port

VISION_CAP = 50_000


@dataclass
class Running:
    base_url: str
    files_dir: Path
    redis_url: str

    def client(self, key: str = "k1") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=20)


def build_app(redis_url: str, state_dir: Path) -> FastAPI:
    settings = load_settings(redis_url=redis_url, state_dir=state_dir, api_keys="k1,k2")
    return create_app(settings, media_settings=MediaSettings(file_max_bytes_vision=VISION_CAP))


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
        yield Running(f"http://127.0.0.1:{port}/v1", tmp_path / "state" / "files", redis_server.url)
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
    url = api.base_url + "/files"
    headers = {"Authorization": "Bearer k1"}
    not_multipart = httpx.post(url, headers=headers, json={"purpose": "batch"})
    assert not_multipart.status_code == 415  # the media type is checked before the body
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


def stored_state(api: Running) -> tuple[list[bytes], list[str]]:
    """Every Redis key and every name in the files directory: what an upload could leave (the
    batch coordinator's lease, taken by the app in the background whenever it gets to it, is
    not)."""
    lease = BatchKeys("cascade").coordinator_lease().encode()
    client = redis.Redis.from_url(api.redis_url)
    try:
        keys = sorted(key for key in client.keys("*") if key != lease)
    finally:
        client.close()
    return keys, stored_names(api.files_dir)


def post_form(api: Running, fields: list[tuple[str, Any]]) -> httpx.Response:
    return httpx.post(
        api.base_url + "/files", headers={"Authorization": "Bearer k1"}, files=fields, timeout=20
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_after[seconds]", "\u00b2"),  # '²'.isdigit() is true, int('²') fails
        ("expires_after[seconds]", "\u0663\u0666\u0660\u0660"),  # Arabic-Indic 3600
        ("expires_after[seconds]", "\uff13\uff16\uff10\uff10"),  # full-width 3600
        ("expires_after[seconds]", "3599"),
        ("expires_after[seconds]", "2592001"),
        ("expires_after[seconds]", "99999999999999999999999"),
        ("expires_after[seconds]", "-3600"),
        ("expires_after[seconds]", "3600.0"),
        ("expires_after[seconds]", " 3600"),
        ("expires_after[seconds]", ""),
        ("expires_after[anchor]", "last_active_at"),
        ("expires_after[anchor]", "created_at "),
        ("purpose", "fine-tune"),
        ("purpose", "batch_output"),
        ("purpose", "vision "),
        ("purpose", "Batch"),
        ("purpose", "batch\x00"),
    ],
)
def test_bad_form_values_are_400s_naming_the_field_and_store_nothing(
    api: Running, field: str, value: str
) -> None:
    before = stored_state(api)
    form = {
        "purpose": "batch",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "3600",
    }
    form[field] = value
    fields: list[tuple[str, Any]] = [(name, (None, text)) for name, text in form.items()]
    response = post_form(api, [*fields, ("file", ("a.jsonl", b'{"a": 1}\n'))])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert field in error["message"]
    assert stored_state(api) == before
    assert api.client().files.list().data == []


def test_expires_after_bounds_are_accepted(api: Running) -> None:
    for seconds in ("3600", "2592000"):
        response = post_form(
            api,
            [
                ("purpose", (None, "batch")),
                ("expires_after[anchor]", (None, "created_at")),
                ("expires_after[seconds]", (None, seconds)),
                ("file", ("a.jsonl", b"{}\n")),
            ],
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["expires_at"] == body["created_at"] + int(seconds)


@pytest.mark.parametrize(
    "fields",
    [
        [("expires_after[seconds]", "3600")],
        [("expires_after[anchor]", "created_at")],
        [("purpose", "batch")],  # given twice
    ],
    ids=["seconds-without-anchor", "anchor-without-seconds", "purpose-twice"],
)
def test_incomplete_or_repeated_form_fields_are_400s(
    api: Running, fields: list[tuple[str, str]]
) -> None:
    before = stored_state(api)
    parts: list[tuple[str, Any]] = [("purpose", (None, "batch"))]
    parts += [(name, (None, value)) for name, value in fields]
    response = post_form(api, [*parts, ("file", ("a.jsonl", b"{}\n"))])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] in {name for name, _ in fields} | {
        "expires_after[anchor]",
        "expires_after[seconds]",
    }
    assert stored_state(api) == before


def _form(boundary: str, *, file: bytes) -> bytes:
    return (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        "batch\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + file


@pytest.mark.parametrize(
    "tail",
    [
        b"",  # the body stops inside the file part
        b"\r\n",
        b"\r\n--xyz",  # a delimiter, but not the closing one
        b"\r\n--xyz\r\n",  # a new part begins and never ends
        b"\r\n--xyz-",
    ],
    ids=["in-file", "crlf", "delimiter", "next-part", "half-close"],
)
def test_truncated_multipart_body_is_a_400_and_stores_nothing(api: Running, tail: bytes) -> None:
    before = stored_state(api)
    response = httpx.post(
        api.base_url + "/files",
        headers={
            "Authorization": "Bearer k1",
            "Content-Type": "multipart/form-data; boundary=xyz",
        },
        content=_form("xyz", file=b"abc") + tail,
        timeout=20,
    )
    assert response.status_code == 400, response.text
    assert "closing boundary" in response.json()["error"]["message"]
    assert stored_state(api) == before
    assert api.client().files.list().data == []
    # The same body with its closing boundary is stored whole.
    whole = httpx.post(
        api.base_url + "/files",
        headers={
            "Authorization": "Bearer k1",
            "Content-Type": "multipart/form-data; boundary=xyz",
        },
        content=_form("xyz", file=b"abc") + b"\r\n--xyz--\r\n",
        timeout=20,
    )
    assert whole.status_code == 200, whole.text
    assert whole.json()["bytes"] == 3


def test_upload_over_the_cap_is_a_413_before_the_body_is_sent(api: Running) -> None:
    """The server answers while the client is still sending: it stopped reading at the cap."""
    before = stored_state(api)
    host, port = api.base_url.removeprefix("http://").removesuffix("/v1").split(":")
    head = (
        b"--xyz\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        b"vision\r\n"
        b"--xyz\r\n"
        b'Content-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
    ) + b"\x89PNG\r\n\x1a\n"
    declared = len(head) + 10 * VISION_CAP  # announced, never sent in full
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            (
                "POST /v1/files HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                "Authorization: Bearer k1\r\n"
                "Content-Type: multipart/form-data; boundary=xyz\r\n"
                f"Content-Length: {declared}\r\n\r\n"
            ).encode()
            + head
        )
        sent = len(head)
        while sent < 2 * VISION_CAP:  # twice the cap, a fifth of the announced body
            conn.sendall(b"\0" * 4096)
            sent += 4096
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.split()[1] == b"413", reply[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "file_too_large"
    assert stored_state(api) == before


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
