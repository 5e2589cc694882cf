"""A streamed request answers with an HTTP error when it fails before the runtime's first
event (runtime down, runtime error), as a non-streamed one does; once output has been sent,
a failure travels as an error event and `[DONE]`."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.redis_server import RedisServer, free_port
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Fault, Rule
from tests.sglang_sim.testing import SimHandle

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_a_stream_while_the_runtime_is_down_is_a_503_with_retry_after(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(
        sim, redis_server, runtime_url=f"http://127.0.0.1:{free_port()}", runtime_max_retries=0
    )
    app = create_app(settings)
    with serve_in_thread(app) as url:
        response = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=30)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["code"] == "runtime_unavailable"
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            for _ in client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                pass
        assert raised.value.status_code == 503


def test_a_session_stream_refused_before_any_output_stores_nothing_and_frees_the_session(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="start", output="Started."))
    first = httpx.post(
        cascade.url + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "start"}], "store": True},
        timeout=30,
    ).json()
    session_id = first["session_id"]
    sim.sim.add_rule(Rule(match="boom", output="x", fault=Fault(kind="http_500", times=5)))
    body = {**BODY, "session_id": session_id, "messages": [{"role": "user", "content": "boom"}]}
    failed = httpx.post(cascade.url + "/v1/chat/completions", json=body, timeout=30)
    assert failed.status_code == 502
    assert "Traceback" not in failed.text
    history = httpx.get(f"{cascade.url}/v1/sessions/{session_id}", timeout=10).json()
    assert len(history["messages"]) == 2  # nothing half-stored
    sim.sim.add_rule(Rule(match="again", output="Fine."))
    again = {**body, "messages": [{"role": "user", "content": "again"}]}
    with httpx.stream("POST", cascade.url + "/v1/chat/completions", json=again) as ok:
        assert ok.status_code == 200
        events = [line for line in ok.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == (
        "assistant"
    )
