"""Request admission through the HTTP API: browser origins, media types, body caps.

A web page in the operator's browser must not be able to drive a homelab cascade with auth off:
cross-site requests are refused before any handler runs, whatever their content type.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def allowing(
    sim: SimHandle, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cascade]:
    """cascade that allows one browser origin, with a small JSON body cap."""
    monkeypatch.setenv("CASCADE_HTTP_MAX_JSON_BODY", "4096")
    monkeypatch.setenv("CASCADE_HTTP_MAX_CHAT_BODY", "65536")
    settings = cascade_settings(sim, redis_server, cors_origins="http://owui.lan:3000")
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def test_a_text_plain_body_is_refused_before_it_reaches_the_model(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="Hi"))
    before = len(sim.sim.requests)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        response = httpx.post(
            cascade.url + "/v1/chat/completions",
            content=json.dumps(CHAT),
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 415, (content_type, response.text)
        error = response.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert error["param"] == "content-type"
    assert len(sim.sim.requests) == before
    ok = httpx.post(
        cascade.url + "/v1/chat/completions",
        content=json.dumps(CHAT),
        headers={"content-type": "application/json; charset=utf-8"},
        timeout=10,
    )
    assert ok.status_code == 200, ok.text


def test_an_upload_must_be_multipart(cascade: Cascade) -> None:
    response = httpx.post(
        cascade.url + "/v1/files", content=b"{}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 415


def test_a_request_from_a_foreign_origin_is_refused(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Hi"))
    before = len(sim.sim.requests)
    evil = {"origin": "http://evil.example"}
    post = httpx.post(cascade.url + "/v1/chat/completions", json=CHAT, headers=evil, timeout=10)
    assert post.status_code == 403
    assert post.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in post.headers
    get = httpx.get(cascade.url + "/v1/sessions", headers=evil, timeout=10)
    assert get.status_code == 403
    preflight = httpx.options(
        cascade.url + "/v1/chat/completions",
        headers={**evil, "access-control-request-method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    assert len(sim.sim.requests) == before
    # No Origin (a server-side client such as the SDK, Open WebUI's backend, curl): served.
    assert httpx.post(cascade.url + "/v1/chat/completions", json=CHAT).status_code == 200


def test_an_allowed_origin_gets_cors_answers(allowing: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Hi"))
    origin = {"origin": "http://owui.lan:3000"}
    preflight = httpx.options(
        allowing.url + "/v1/chat/completions",
        headers={
            **origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://owui.lan:3000"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    post = httpx.post(allowing.url + "/v1/chat/completions", json=CHAT, headers=origin)
    assert post.status_code == 200
    assert post.headers["access-control-allow-origin"] == "http://owui.lan:3000"
    assert "x-request-id" in post.headers["access-control-expose-headers"]
    other = httpx.post(
        allowing.url + "/v1/chat/completions", json=CHAT, headers={"origin": "http://owui.lan"}
    )
    assert other.status_code == 403


def test_a_body_over_its_cap_is_refused_before_it_is_read(allowing: Cascade) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 70_000}]}
    declared = httpx.post(allowing.url + "/v1/chat/completions", json=big, timeout=10)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies to what is read
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(200):
            yield b"x" * 1000
        yield b'"}]}'

    streamed = httpx.post(
        allowing.url + "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert streamed.status_code == 413
    # Endpoints without images have the smaller JSON cap.
    fork = httpx.post(
        allowing.url + "/v1/sessions/sess_" + "0" * 24 + "/fork",
        json={"pad": "x" * 5000},
        timeout=10,
    )
    assert fork.status_code == 413


def test_the_cap_answers_without_reading_a_huge_declared_body(allowing: Cascade) -> None:
    host, port = allowing.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\ncontent-length: 157286400\r\n\r\n{"
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413")
