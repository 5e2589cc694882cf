"""Encrypted reasoning: a stateless client (`store: false`) gets its reasoning sealed as
`encrypted_content` and hands it back next turn; only this server, for this key, can open it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

INCLUDE = ["reasoning.encrypted_content"]


@pytest.fixture
def keyed(sim: SimHandle, redis_server: RedisServer) -> Iterator[Cascade]:
    settings = cascade_settings(sim, redis_server, api_keys="k1,k2", secret_key="s3cret")
    app = create_app(settings)
    with serve_in_thread(app) as url:
        yield Cascade(url=url, app=app, settings=settings)


def respond(cascade: Cascade, body: dict[str, Any], key: str = "k1") -> httpx.Response:
    return httpx.post(
        cascade.url + "/v1/responses",
        json={"model": "m", "store": False, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def first_turn(cascade: Cascade, sim: SimHandle) -> dict[str, Any]:
    sim.sim.add_rule(Rule(match="sky", output="Rayleigh scattering.\n</think>\n\nBlue."))
    response = respond(
        cascade,
        {"input": "what colour is the sky", "reasoning": {"effort": "low"}, "include": INCLUDE},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_reasoning_comes_sealed_and_round_trips_statelessly(keyed: Cascade, sim: SimHandle) -> None:
    body = first_turn(keyed, sim)
    reasoning = next(item for item in body["output"] if item["type"] == "reasoning")
    blob = reasoning["encrypted_content"]
    assert blob.startswith("cas1.") and "Rayleigh" not in blob
    sim.sim.add_rule(Rule(match="why", output="Because of the air.\n</think>\n\nAir."))
    handed_back = {**reasoning, "content": [{"type": "reasoning_text", "text": "forged"}]}
    message = next(item for item in body["output"] if item["type"] == "message")
    follow = respond(
        keyed,
        {
            "input": [
                {"role": "user", "content": "what colour is the sky"},
                handed_back,
                message,
                {"role": "user", "content": "why"},
            ],
            "reasoning": {"effort": "low"},
            "preserve_thinking": True,
        },
    )
    assert follow.status_code == 200, follow.text
    sent = sim.sim.requests[-1].body["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    # The runtime sees the sealed reasoning, not the text the client put beside it.
    assert assistant["reasoning_content"].strip() == "Rayleigh scattering."


def test_a_tampered_or_foreign_blob_is_a_400(keyed: Cascade, sim: SimHandle) -> None:
    body = first_turn(keyed, sim)
    reasoning = next(item for item in body["output"] if item["type"] == "reasoning")
    blob = reasoning["encrypted_content"]
    tampered = blob[:-2] + ("A" if blob[-2] != "A" else "B") + blob[-1]
    before = len(sim.sim.requests)
    for key, sealed in (("k1", tampered), ("k2", blob)):
        item = {**reasoning, "encrypted_content": sealed}
        refused = respond(keyed, {"input": [item, {"role": "user", "content": "go on"}]}, key)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "input[0].encrypted_content"
    assert len(sim.sim.requests) == before


def test_encrypted_reasoning_needs_a_server_key(cascade: Cascade) -> None:
    refused = httpx.post(
        cascade.url + "/v1/responses",
        json={"model": "m", "input": "hi", "include": INCLUDE},
        timeout=30,
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "include"
