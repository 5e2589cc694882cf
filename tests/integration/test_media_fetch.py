"""`safe_fetch` (what image intake and a `fetch_url` tool use) against a local HTTP(S) server.

Names are resolved by a table (`StaticResolver`), so `evil.test` can resolve to anything; when a
test needs a body it allow-lists the loopback server explicitly, and every blocking test runs
under the default policy.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import httpx
import pytest
import trustme

from app.media.errors import FetchError, FetchTooLargeError, URLNotAllowedError
from app.media.fetch import SafeFetcher, safe_fetch
from app.media.ssrf import FetchPolicy
from tests.media_server import (
    SCENARIOS,
    SSRF_CASES,
    MediaServer,
    StaticResolver,
    png_bytes,
    server_scenario,
)

IMAGE = png_bytes(40, 30)
IMAGE_TYPES = ("image/*", "application/octet-stream")


@pytest.fixture
def server() -> Iterator[MediaServer]:
    with MediaServer() as running:
        yield running


def loopback_names(*names: str) -> StaticResolver:
    return StaticResolver({name: ["127.0.0.1"] for name in names})


async def fetch(url: str, policy: FetchPolicy, resolver: StaticResolver, **kwargs: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "max_bytes": 100_000,
        "time_limit": 2.0,
        "accept": IMAGE_TYPES,
        "what": "image URL",
        "body": "image",
    }
    options.update(kwargs)
    return await safe_fetch(url, policy=policy, resolver=resolver, **options)  # type: ignore[arg-type]


# --- blocked before any connection ---


@pytest.mark.parametrize(
    ("url", "table", "fragment"), [c[1:] for c in SSRF_CASES], ids=[c[0] for c in SSRF_CASES]
)
async def test_ssrf_case_is_refused_without_connecting(
    url: str, table: dict[str, list[str]], fragment: str, server: MediaServer
) -> None:
    with pytest.raises(FetchError) as info:
        await fetch(url, FetchPolicy(), StaticResolver(table))
    assert info.value.status == 400
    assert fragment in info.value.message
    assert info.value.message.startswith("image URL ")
    assert not server.requests


# --- scenarios that need a server: redirects, bodies, timing ---


@pytest.mark.parametrize("name", SCENARIOS)
async def test_server_scenario_is_refused(name: str, server: MediaServer) -> None:
    url, fragment = server_scenario(server, name)
    # origin.test is allow-listed by name (it is the loopback test server); nothing else is.
    policy = FetchPolicy(allow=["origin.test"])
    resolver = StaticResolver({"origin.test": ["127.0.0.1"], "evil.test": ["10.0.0.5"]})
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        await fetch(url, policy, resolver, time_limit=1.0)
    assert time.monotonic() - started < 3.0
    assert info.value.status == 400
    assert fragment in info.value.message
    assert server.hits["/secret"] == 0


async def test_connection_goes_to_the_checked_address_with_the_real_host(
    server: MediaServer,
) -> None:
    server.add("/cat.png", body=IMAGE)
    resolver = loopback_names("photos.test")
    result = await fetch(
        f"http://photos.test:{server.port}/cat.png?x=1", FetchPolicy(allow=["127.0.0.1"]), resolver
    )
    assert result.content == IMAGE
    assert result.status == 200 and result.media_type == "image/png"
    assert server.requests[0].headers["host"] == f"photos.test:{server.port}"
    assert server.requests[0].headers["accept-encoding"] == "identity"
    assert resolver.calls["photos.test"] == 1


async def test_dns_rebinding_cannot_switch_the_address(server: MediaServer) -> None:
    """The first answer is checked and used; a rebinding server's later answer never is.
    `rebind.test` does not exist in real DNS, so any second lookup would fail the fetch."""
    server.add("/cat.png", body=IMAGE)
    answers = iter([["127.0.0.1"], ["10.0.0.5"], ["10.0.0.5"]])
    calls: list[str] = []

    async def rebinding(host: str) -> list[str]:
        calls.append(host)
        return next(answers)

    result = await safe_fetch(
        f"http://rebind.test:{server.port}/cat.png",
        policy=FetchPolicy(allow=["127.0.0.1/32"]),
        resolver=rebinding,
        max_bytes=100_000,
        time_limit=2.0,
    )
    assert result.content == IMAGE
    assert calls == ["rebind.test"]


async def test_credentials_survive_same_origin_redirects_only(server: MediaServer) -> None:
    base = f"http://origin.test:{server.port}"
    server.redirect("/same", "/hop")
    server.redirect("/hop", f"http://other.test:{server.port}/final")
    server.add("/final", body=IMAGE)
    policy = FetchPolicy(allow=["origin.test", "other.test"])
    secret = {"Authorization": "Bearer s3cret", "Cookie": "session=abc", "X-Trace": "t1"}
    result = await fetch(
        f"{base}/same", policy, loopback_names("origin.test", "other.test"), headers=secret
    )
    assert result.content == IMAGE
    assert result.redirects == (f"{base}/hop", f"http://other.test:{server.port}/final")
    first, second, third = server.requests
    assert first.headers["authorization"] == "Bearer s3cret"
    assert second.headers["authorization"] == "Bearer s3cret" and second.headers["cookie"]
    assert "authorization" not in third.headers and "cookie" not in third.headers
    assert third.headers["x-trace"] == "t1"
    assert third.headers["host"] == f"other.test:{server.port}"


async def test_exactly_max_redirects_are_followed(server: MediaServer) -> None:
    for hop in range(5):
        server.redirect(f"/r{hop}", f"/r{hop + 1}")
    server.add("/r5", body=IMAGE)
    base = f"http://origin.test:{server.port}"
    resolver = loopback_names("origin.test")
    policy = FetchPolicy(allow=["origin.test"])
    result = await fetch(f"{base}/r0", policy, resolver, max_redirects=5)
    assert result.content == IMAGE and len(result.redirects) == 5
    with pytest.raises(FetchError, match="redirected more than 4 times"):
        await fetch(f"{base}/r0", policy, resolver, max_redirects=4)


async def test_size_error_carries_the_limit(server: MediaServer) -> None:
    server.add("/big", body=b"\0" * 5000, chunk_size=1000)
    with pytest.raises(FetchTooLargeError) as info:
        await fetch(
            f"http://origin.test:{server.port}/big",
            FetchPolicy(allow=["origin.test"]),
            loopback_names("origin.test"),
            max_bytes=4096,
        )
    assert info.value.limit == 4096
    assert info.value.message == "image larger than 4 KB"


async def test_a_general_fetch_for_tools(
    server: MediaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proxy variables are ignored: a proxy would resolve the name again.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    server.add("/page", body="héllo".encode("latin-1"), content_type="text/plain; charset=latin-1")
    fetcher = SafeFetcher(FetchPolicy(allow=["127.0.0.1"]), resolver=loopback_names("docs.test"))
    result = await fetcher.fetch(
        f"http://docs.test:{server.port}/page", max_bytes=1000, time_limit=2
    )
    assert result.text() == "héllo"
    missing = await fetcher.fetch(
        f"http://docs.test:{server.port}/nope", max_bytes=1000, time_limit=2, raise_for_status=False
    )
    assert missing.status == 404 and missing.content == b"not found"


async def test_missing_content_type_is_left_to_the_decoder(server: MediaServer) -> None:
    server.add("/raw", body=IMAGE, content_type=None)
    result = await fetch(
        f"http://origin.test:{server.port}/raw",
        FetchPolicy(allow=["origin.test"]),
        loopback_names("origin.test"),
    )
    assert result.content == IMAGE


async def test_a_dead_address_is_skipped_for_the_next_checked_one(server: MediaServer) -> None:
    server.add("/cat.png", body=IMAGE)
    # ::1 may or may not listen; 127.0.0.2 does not run the server: the fetch must move on.
    resolver = StaticResolver({"multi.test": ["127.0.0.2", "127.0.0.1"]})
    policy = FetchPolicy(allow=["127.0.0.0/8"])
    result = await fetch(f"http://multi.test:{server.port}/cat.png", policy, resolver)
    assert result.content == IMAGE


# --- TLS: the connection goes to the IP, the certificate is checked against the name ---


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_server(ca: trustme.CA, *names: str) -> MediaServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return MediaServer(ssl_context=context)


async def test_https_verifies_the_host_name_while_connecting_to_the_ip(ca: trustme.CA) -> None:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    transport = httpx.AsyncHTTPTransport(verify=client_context)
    with _tls_server(ca, "photos.test") as server:
        server.add("/cat.png", body=IMAGE)
        result = await fetch(
            f"https://photos.test:{server.port}/cat.png",
            FetchPolicy(allow=["127.0.0.1"]),
            loopback_names("photos.test"),
            transport=transport,
        )
        assert result.content == IMAGE
        assert server.requests[0].headers["host"] == f"photos.test:{server.port}"
    await transport.aclose()


async def test_https_with_a_certificate_for_another_name_fails(ca: trustme.CA) -> None:
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    transport = httpx.AsyncHTTPTransport(verify=client_context)
    with _tls_server(ca, "other.test") as server:
        server.add("/cat.png", body=IMAGE)
        with pytest.raises(FetchError) as info:
            await fetch(
                f"https://photos.test:{server.port}/cat.png",
                FetchPolicy(allow=["127.0.0.1"]),
                loopback_names("photos.test"),
                transport=transport,
            )
        assert "failed TLS verification (photos.test)" in info.value.message
        assert not server.requests
    await transport.aclose()


async def test_url_not_allowed_is_a_fetch_error_subclass() -> None:
    with pytest.raises(URLNotAllowedError):
        await fetch("http://10.0.0.1/", FetchPolicy(), StaticResolver({}))
