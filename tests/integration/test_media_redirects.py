"""Redirects an image host may answer with, through the HTTP API: every one is a clean 400.

An allow-listed host (the local `MediaServer`) answers `302` with a `Location` that is not an
http(s) URL, or not a URL at all. Both paths that share the SSRF-safe fetcher are driven from
outside: an `image_url` part of a chat request, and the `fetch_url` tool called by the
(simulated) model. Neither may answer a 500 or leak an exception's text.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import call
from tests.media_server import MediaServer, png_bytes
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

# (id, Location value, error code of the refusal, words the message must contain)
BAD_LOCATIONS = [
    ("data-uri", "data:image/png;base64,iVBORw0KGgo=", "url_not_allowed", "not data:"),
    ("mailto", "mailto:someone@example.com", "url_not_allowed", "not mailto:"),
    ("javascript", "javascript:alert(1)", "url_not_allowed", "not javascript:"),
    ("file", "file:///etc/passwd", "url_not_allowed", "not file:"),
    ("ftp", "ftp://127.0.0.1/x.png", "url_not_allowed", "not ftp:"),
    ("unclosed-ipv6", "http://[::1/x.png", "invalid_url", "not a valid URL"),
    ("space-in-host", "http://img host/x.png", "invalid_url", "not a valid URL"),
    ("control-char", "/x\x7f.png", "invalid_url", "not a valid URL"),
    ("port-out-of-range", "http://127.0.0.1:99999/x.png", "invalid_url", "invalid port"),
    ("port-zero", "http://127.0.0.1:0/x.png", "invalid_url", "invalid port"),
    ("empty-punycode", "http://xn--/x.png", "invalid_url", "invalid host"),
]


@pytest.fixture
def media() -> Iterator[MediaServer]:
    with MediaServer() as server:
        server.add("/ok.png", body=png_bytes(40, 30))
        for name, location, _code, _words in BAD_LOCATIONS:
            server.redirect(f"/{name}", location)
        yield server


@pytest.fixture
def api(
    sim: SimHandle,
    redis_server: RedisServer,
    media: MediaServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Cascade]:
    monkeypatch.setenv("CASCADE_FETCH_ALLOW_HOSTS", "127.0.0.1")
    settings = cascade_settings(sim, redis_server)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def chat_with_image(api: Cascade, image_url: str) -> httpx.Response:
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": image_url}},
                ],
            }
        ],
    }
    return httpx.post(
        api.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer test-key"},
        timeout=20,
    )


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [(n, c, w) for n, _location, c, w in BAD_LOCATIONS],
    ids=[c[0] for c in BAD_LOCATIONS],
)
def test_image_url_redirecting_to_a_bad_location_is_a_400(
    api: Cascade, media: MediaServer, sim: SimHandle, name: str, code: str, words: str
) -> None:
    response = chat_with_image(api, f"http://127.0.0.1:{media.port}/{name}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert "redirect target" in error["message"] and words in error["message"]
    assert media.hits[f"/{name}"] == 1
    assert sim.sim.requests == []  # refused before the model was asked anything
    # The service is unharmed: the next image from the same host goes through.
    sim.sim.add_rule(Rule(output="A small picture."))
    ok = chat_with_image(api, f"http://127.0.0.1:{media.port}/ok.png")
    assert ok.status_code == 200, ok.text
    assert ok.json()["choices"][0]["message"]["content"] == "A small picture."


@pytest.mark.parametrize(
    ("name", "words"),
    [(n, w) for n, _location, _code, w in BAD_LOCATIONS],
    ids=[c[0] for c in BAD_LOCATIONS],
)
def test_fetch_url_tool_redirected_to_a_bad_location_tells_the_model(
    api: Cascade, media: MediaServer, sim: SimHandle, name: str, words: str
) -> None:
    url = f"http://127.0.0.1:{media.port}/{name}"
    sim.sim.add_rule(Rule(output=call("fetch_url", url=url), times=1))
    sim.sim.add_rule(Rule(output="I could not read that page."))
    response = httpx.post(
        api.url + "/v1/chat/completions",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "read it"}],
            "server_tools": ["fetch_url"],
        },
        headers={"Authorization": "Bearer test-key"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "I could not read that page."
    tool_messages = [m for m in sim.sim.requests[-1].body["messages"] if m["role"] == "tool"]
    (told,) = [m["content"] for m in tool_messages]
    assert "redirect target" in told and words in told
    assert media.hits[f"/{name}"] == 1
