"""Image intake end to end: references in messages → checked, resized, stored image refs, with a
real Redis and a local HTTP server standing in for image hosts."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from PIL import Image

from app.errors import CascadeError, NotFoundError
from app.media.config import MediaSettings
from app.media.errors import ImageError, ImagesTooLargeError
from app.media.files import FileStore
from app.media.intake import ImageBudget, ImageIntake, ImageRef
from tests.media_server import (
    SCENARIOS,
    SSRF_CASES,
    MediaServer,
    StaticResolver,
    encode,
    gradient,
    jpeg_bytes,
    png_bytes,
    server_scenario,
    with_png_size,
)
from tests.redis_server import RedisServer

OWNER = "key_owner1"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def server() -> Iterator[MediaServer]:
    with MediaServer() as running:
        yield running


def settings(**overrides: Any) -> MediaSettings:
    values: dict[str, Any] = {
        "fetch_allow_hosts": ["origin.test"],
        "image_max_bytes": 100_000,
        "fetch_timeout": 1.0,
    }
    values.update(overrides)
    return MediaSettings(**values)


def resolver() -> StaticResolver:
    return StaticResolver({"origin.test": ["127.0.0.1"], "evil.test": ["10.0.0.5"]})


def intake(redis: aioredis.Redis, **overrides: Any) -> ImageIntake:
    files = overrides.pop("files", None)
    return ImageIntake(redis, settings(**overrides), files=files, resolver=resolver())


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def noise_png(width: int, height: int) -> bytes:
    """An incompressible PNG of about width*height*3 bytes."""
    return encode(Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)), "PNG")


def photo(width: int, height: int) -> Image.Image:
    x = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (x, x.transpose(Image.Transpose.ROTATE_180), x))


def decoded(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    image.load()
    return image


# --- SSRF: every refusal reaches the client as a clear 400 ---

_INTAKE_FRAGMENT = {"file-scheme": "local image paths are not enabled"}


@pytest.mark.parametrize(
    ("case", "url", "table", "fragment"), SSRF_CASES, ids=[c[0] for c in SSRF_CASES]
)
async def test_ssrf_case_is_a_400_through_image_intake(
    case: str, url: str, table: dict[str, list[str]], fragment: str, redis: aioredis.Redis
) -> None:
    subject = ImageIntake(redis, MediaSettings(), resolver=StaticResolver(table))
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    with pytest.raises(CascadeError) as info:
        await subject.ingest_message_parts(parts, owner=OWNER)
    assert info.value.status == 400
    assert _INTAKE_FRAGMENT.get(case, fragment) in info.value.message
    assert info.value.param == "content[1]"
    assert "Traceback" not in info.value.message


@pytest.mark.parametrize("name", SCENARIOS)
async def test_server_scenario_is_a_400_through_image_intake(
    name: str, redis: aioredis.Redis, server: MediaServer
) -> None:
    url, fragment = server_scenario(server, name)
    started = time.monotonic()
    with pytest.raises(CascadeError) as info:
        await intake(redis).ingest(url, owner=OWNER)
    assert time.monotonic() - started < 3.0
    assert info.value.status == 400
    assert fragment in info.value.message
    assert server.hits["/secret"] == 0


# --- fetching, caching, many images ---


async def test_same_url_is_fetched_once_and_sent_byte_identical(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    server.add("/cat.png", body=png_bytes(300, 200))
    url = f"http://origin.test:{server.port}/cat.png"
    first_turn = intake(redis)
    ref1 = await first_turn.ingest(url, owner=OWNER)
    # A later turn, another process: a fresh intake on the same Redis.
    later = intake(redis)
    ref2 = await later.ingest(url, owner=OWNER)
    assert server.hits["/cat.png"] == 1
    assert ref1 == ref2
    uri1, uri2 = await first_turn.data_uri(ref1), await later.data_uri(ref2.to_part())
    assert uri1 == uri2
    raw = base64.b64decode(uri1.partition(",")[2])
    assert hashlib.sha256(raw).hexdigest() == ref1.sha256


async def test_every_image_in_a_message_becomes_a_ref_in_order(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for i, color in enumerate(colors[:2]):
        server.add(f"/{i}.png", body=png_bytes(64, 64, color))
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "compare these"},
        {"type": "image_url", "image_url": {"url": f"http://origin.test:{server.port}/0.png"}},
        {"type": "image_url", "image_url": f"http://origin.test:{server.port}/1.png"},
        {"type": "image_url", "image_url": {"url": data_uri(png_bytes(64, 64, colors[2]))}},
        {"type": "image_url", "image_url": data_uri(jpeg_bytes(64, 64, colors[3]), "image/jpeg")},
        {"type": "text", "text": "thanks"},
    ]
    subject = intake(redis)
    out = await subject.ingest_message_parts(parts, owner=OWNER)
    assert [p["type"] for p in out] == [
        "text",
        "image_ref",
        "image_ref",
        "image_ref",
        "image_ref",
        "text",
    ]
    assert out[0] == parts[0] and out[5] == parts[5]
    assert len({p["sha256"] for p in out[1:5]}) == 4
    # What the runtime is sent for each stored image: its data: URI.
    images = [await subject.data_uri(p) for p in out if p["type"] == "image_ref"]
    assert len(images) == 4
    for uri, color in zip(images, colors, strict=True):
        pixel = decoded(uri).convert("RGB").getpixel((10, 10))
        assert isinstance(pixel, tuple)
        assert all(abs(a - b) <= 8 for a, b in zip(pixel, color, strict=True))


async def test_a_4000x3000_photo_is_resized_to_the_smart_resize_size(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    body = encode(photo(4000, 3000), "JPEG", quality=85)
    server.add("/big.jpg", body=body, content_type="image/jpeg")
    subject = intake(redis, image_max_bytes=len(body) + 1)
    ref = await subject.ingest(f"http://origin.test:{server.port}/big.jpg", owner=OWNER)
    # smart_resize(3000, 4000, 32, 4096, 1310720): scale sqrt(1.2e7 / 1310720) = 3.0258,
    # 3000 / 3.0258 -> 960 and 4000 / 3.0258 -> 1312 (floored to multiples of 32).
    assert (ref.width, ref.height, ref.media_type) == (1312, 960, "image/jpeg")
    assert decoded(await subject.data_uri(ref)).size == (1312, 960)


async def test_exif_rotated_photo_arrives_upright(redis: aioredis.Redis) -> None:
    stored = Image.new("RGB", (128, 64), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 64, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored left side is the visual top
    subject = intake(redis)
    ref = await subject.ingest(data_uri(encode(stored, "JPEG", exif=exif.tobytes())), owner=OWNER)
    assert (ref.width, ref.height) == (64, 128)
    upright = await subject.load_image(ref)
    top, bottom = upright.getpixel((32, 10)), upright.getpixel((32, 118))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


async def test_decompression_bomb_fails_fast_with_a_400(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    server.add("/bomb.png", body=with_png_size(png_bytes(8, 8), 60_000, 60_000))
    started = time.monotonic()
    with pytest.raises(ImageError) as info:
        await intake(redis).ingest(f"http://origin.test:{server.port}/bomb.png", owner=OWNER)
    assert time.monotonic() - started < 1.5
    assert info.value.status == 400 and info.value.code == "image_too_many_pixels"


async def test_truncated_jpeg_is_a_400(redis: aioredis.Redis) -> None:
    data = encode(photo(400, 300), "JPEG", quality=90)
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        await intake(redis).ingest(data_uri(data[: len(data) // 2], "image/jpeg"), owner=OWNER)
    assert info.value.status == 400


async def test_an_expired_url_image_is_fetched_again(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    server.add("/cat.png", body=png_bytes(64, 64))
    subject = intake(redis)
    url = f"http://origin.test:{server.port}/cat.png"
    ref = await subject.ingest(url, owner=OWNER)
    await redis.delete(subject.store.image_key(ref.sha256))
    assert await subject.ingest(url, owner=OWNER) == ref
    assert server.hits["/cat.png"] == 2


async def test_the_same_picture_from_different_sources_is_one_stored_image(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    body = png_bytes(100, 70, (10, 120, 200))
    server.add("/a.png", body=body)
    subject = intake(redis)
    by_url = await subject.ingest(f"http://origin.test:{server.port}/a.png", owner=OWNER)
    by_data = await subject.ingest(data_uri(body), owner=OWNER)
    assert by_url == by_data
    assert await redis.keys(subject.store.image_key("*")) == [
        subject.store.image_key(by_url.sha256).encode()
    ]


# --- limits ---


async def test_too_many_images_is_a_400_before_anything_is_fetched(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    server.add("/cat.png", body=png_bytes())
    url = f"http://origin.test:{server.port}/cat.png"
    parts = [{"type": "image_url", "image_url": {"url": url}} for _ in range(5)]
    with pytest.raises(ImageError) as info:
        await intake(redis, request_max_images=4).ingest_message_parts(parts, owner=OWNER)
    assert info.value.status == 400 and info.value.code == "too_many_images"
    assert "5 (at most 4)" in info.value.message
    assert server.hits["/cat.png"] == 0


async def test_image_count_is_shared_across_messages_of_a_request(redis: aioredis.Redis) -> None:
    subject = intake(redis, request_max_images=2)
    budget = ImageBudget.from_settings(subject.settings)
    part = {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}
    await subject.ingest_message_parts([part, part], owner=OWNER, budget=budget)
    with pytest.raises(ImageError, match="too many images"):
        await subject.ingest_message_parts([part], owner=OWNER, budget=budget)


async def test_total_image_bytes_of_a_request_is_a_413(
    redis: aioredis.Redis, server: MediaServer
) -> None:
    one, two = noise_png(120, 120), noise_png(121, 120)  # ~43 KB each, incompressible
    server.add("/1.png", body=one)
    server.add("/2.png", body=two)
    subject = intake(redis, request_max_image_bytes=60_000)
    parts = [
        {"type": "image_url", "image_url": {"url": f"http://origin.test:{server.port}/1.png"}},
        {"type": "image_url", "image_url": {"url": f"http://origin.test:{server.port}/2.png"}},
    ]
    with pytest.raises(ImagesTooLargeError) as info:
        await subject.ingest_message_parts(parts, owner=OWNER)
    assert info.value.status == 413
    assert info.value.message == "images in this request are larger than 58.6 KB in total"
    assert info.value.param == "content[1]"


async def test_one_image_over_the_cap_is_a_400(redis: aioredis.Redis, server: MediaServer) -> None:
    big = noise_png(200, 200)  # ~120 KB > 100_000
    server.add("/big.png", body=big, chunk_size=8192)
    subject = intake(redis)
    with pytest.raises(CascadeError) as info:
        await subject.ingest(f"http://origin.test:{server.port}/big.png", owner=OWNER)
    assert (info.value.status, info.value.message) == (400, "image larger than 97.7 KB")
    with pytest.raises(ImageError) as data_info:
        await subject.ingest(data_uri(big), owner=OWNER)
    assert (data_info.value.status, data_info.value.message) == (400, "image larger than 97.7 KB")


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ("data:image/png;base64,@@@notbase64@@@", "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "data: URI is text/plain, not an image"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/png;base64", "malformed data: URI"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "not in a supported format"),
        ("cat.png", "unsupported image reference"),
        ("javascript:alert(1)", "unsupported image reference"),
        ("file-000000000000000000000000", "file ids are not accepted"),
    ],
)
async def test_bad_references_are_400s(
    reference: str, fragment: str, redis: aioredis.Redis
) -> None:
    with pytest.raises(CascadeError) as info:
        await intake(redis).ingest(reference, owner=OWNER)
    assert info.value.status == 400
    assert fragment in info.value.message


# --- local files ---


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "2024").mkdir(parents=True)
    (root / "2024" / "beach.png").write_bytes(png_bytes(64, 64, (0, 200, 0)))
    (tmp_path / "private.png").write_bytes(png_bytes(64, 64, (200, 0, 0)))
    return root


async def test_local_paths_inside_allowed_dirs_are_read(
    redis: aioredis.Redis, photos: Path
) -> None:
    subject = intake(redis, local_image_dirs=[photos])
    by_path = await subject.ingest(str(photos / "2024" / "beach.png"), owner=OWNER)
    by_url = await subject.ingest((photos / "2024" / "beach.png").as_uri(), owner=OWNER)
    (photos / "link.png").symlink_to(photos / "2024" / "beach.png")  # a link that stays inside
    by_link = await subject.ingest(str(photos / "link.png"), owner=OWNER)
    assert by_path == by_url == by_link
    pixel = (await subject.load_image(by_path)).getpixel((5, 5))
    assert pixel == (0, 200, 0)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda root: root.parent / "private.png", "outside the allowed directories"),
        (lambda root: root / ".." / "private.png", "outside the allowed directories"),
        (lambda root: Path("/etc/passwd"), "outside the allowed directories"),
        (lambda root: root / "2024" / "missing.png", "image file not found"),
        (lambda root: root / "2024", "not a regular file"),
    ],
    ids=["sibling", "dotdot", "etc-passwd", "missing", "directory"],
)
async def test_local_paths_are_confined(
    make: Any, fragment: str, redis: aioredis.Redis, photos: Path
) -> None:
    with pytest.raises(ImageError, match=fragment):
        await intake(redis, local_image_dirs=[photos]).ingest(str(make(photos)), owner=OWNER)


async def test_a_symlink_pointing_outside_is_refused(redis: aioredis.Redis, photos: Path) -> None:
    (photos / "escape.png").symlink_to(photos.parent / "private.png")
    (photos / "escape-dir").symlink_to(photos.parent)
    subject = intake(redis, local_image_dirs=[photos])
    for path in (photos / "escape.png", photos / "escape-dir" / "private.png"):
        with pytest.raises(ImageError, match="outside the allowed directories") as info:
            await subject.ingest(str(path), owner=OWNER)
        assert info.value.status == 400


async def test_a_fifo_is_refused_without_hanging(redis: aioredis.Redis, photos: Path) -> None:
    os.mkfifo(photos / "pipe.png")
    with pytest.raises(ImageError, match="not a regular file"):
        await intake(redis, local_image_dirs=[photos]).ingest(str(photos / "pipe.png"), owner=OWNER)


async def test_local_paths_need_the_operator(redis: aioredis.Redis, photos: Path) -> None:
    with pytest.raises(ImageError, match="CASCADE_LOCAL_IMAGE_DIRS"):
        await intake(redis).ingest(str(photos / "2024" / "beach.png"), owner=OWNER)
    with pytest.raises(ImageError, match="must not name a host"):
        await intake(redis, local_image_dirs=[photos]).ingest(
            "file://nas/photos/2024/beach.png", owner=OWNER
        )


# --- uploaded files ---


async def test_uploaded_vision_files_are_owner_scoped(
    redis: aioredis.Redis, tmp_path: Path
) -> None:
    media = settings()
    files = FileStore(redis, tmp_path / "files", media)
    upload = await files.create(
        OWNER, filename="dog.png", purpose="vision", content=png_bytes(64, 64, (9, 9, 9))
    )
    batch = await files.create(OWNER, filename="b.jsonl", purpose="batch", content=b"{}\n")
    subject = ImageIntake(redis, media, files=files, resolver=resolver())
    parts = [
        {"type": "image_url", "image_url": {"url": upload.id}},
        {"type": "image_url", "image_url": upload.id},
    ]
    out = await subject.ingest_message_parts(parts, owner=OWNER)
    assert out[0] == out[1] and out[0]["type"] == "image_ref"
    with pytest.raises(ImageError, match="not found"):
        await subject.ingest(upload.id, owner="key_someone_else")
    with pytest.raises(ImageError, match="purpose 'batch', not 'vision'"):
        await subject.ingest(batch.id, owner=OWNER)


# --- refs, output, tools ---


async def test_image_refs_pass_through_and_expired_ones_are_named(redis: aioredis.Redis) -> None:
    subject = intake(redis)
    ref = await subject.ingest(data_uri(png_bytes()), owner=OWNER)
    again = await subject.ingest_message_parts([ref.to_part()], owner=OWNER)
    assert again == [ref.to_part()]
    await redis.delete(subject.store.image_key(ref.sha256))
    with pytest.raises(NotFoundError) as info:
        await subject.ingest_message_parts([ref.to_part()], owner=OWNER)
    assert info.value.code == "image_expired"
    with pytest.raises(NotFoundError):
        await intake(redis).data_uri(ref)
    with pytest.raises(CascadeError, match="malformed image_ref"):
        await subject.ingest_message_parts([{"type": "image_ref", "sha256": "x"}], owner=OWNER)


async def test_data_uri_restores_an_evicted_image_from_its_cache(redis: aioredis.Redis) -> None:
    subject = intake(redis)
    ref = await subject.ingest(data_uri(png_bytes(50, 50)), owner=OWNER)
    uri = await subject.data_uri(ref)
    await redis.delete(subject.store.image_key(ref.sha256))
    assert await subject.data_uri(ref) == uri
    assert await redis.exists(subject.store.image_key(ref.sha256)) == 1


async def test_put_image_and_load_image_for_tools(redis: aioredis.Redis) -> None:
    subject = intake(redis)
    ref = await subject.ingest(data_uri(encode(gradient(256, 128), "PNG")), owner=OWNER)
    image = await subject.load_image(ref)
    assert image.size == (256, 128) and image.mode == "RGB"
    crop = image.crop((0, 0, 64, 64))
    crop_ref = await subject.put_image(crop)
    assert crop_ref == await subject.put_image(crop)  # deterministic: one stored image
    assert (crop_ref.width, crop_ref.height) == (64, 64)
    assert (await subject.load_image(crop_ref.to_part())).tobytes() == crop.tobytes()
    assert await redis.ttl(subject.store.image_key(crop_ref.sha256)) > 29 * 86_400


async def test_image_ref_shape() -> None:
    ref = ImageRef("a" * 64, 32, 64, "image/png")
    assert ref.to_part() == {
        "type": "image_ref",
        "sha256": "a" * 64,
        "width": 32,
        "height": 64,
        "media_type": "image/png",
    }
    assert ImageRef.from_part(ref.to_part()) == ref


async def test_a_cancelled_decode_keeps_its_slot_until_its_thread_ends(
    redis: aioredis.Redis,
) -> None:
    # A thread cannot be stopped: a request that hangs up must not free its decode slot early,
    # or abandoned decodes would pile up past `image_decode_concurrency`.
    images = intake(redis, image_decode_concurrency=1)
    started, release = threading.Event(), threading.Event()

    def slow_decode() -> str:
        started.set()
        release.wait(10)
        return "first"

    first = asyncio.create_task(images._prepare(slow_decode))  # type: ignore[arg-type]
    assert await asyncio.to_thread(started.wait, 10)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(images._prepare(lambda: "second"))  # type: ignore[arg-type]
    done, _ = await asyncio.wait({second}, timeout=0.2)
    assert not done  # the abandoned decode still holds the only slot
    release.set()
    assert await asyncio.wait_for(second, 10) == "second"
