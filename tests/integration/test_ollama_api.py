"""`/api/*` driven by the official `ollama` client the way Home Assistant's Ollama integration
drives it (list, show, pull, chat with Assist tools, think, keep_alive, num_ctx, format),
against the simulator and Redis."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.media_server import png_bytes
from tests.redis_server import RedisServer, free_port
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Fault, Rule, SimConfig
from tests.sglang_sim.testing import SimHandle

SERVED = SimConfig().model_name

# A Home Assistant Assist tool, as its Ollama integration formats it.
TURN_ON: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on/opens/presses a device or entity",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "area": {"type": "string"},
            },
        },
    },
}


TURN_ON_CALL = (
    "<tool_call>\n<function=HassTurnOn>\n<parameter=name>\nkitchen light\n</parameter>\n"
    "</function>\n</tool_call>"
)


@pytest.fixture
def api(cascade: Cascade) -> Iterator[ollama.Client]:
    with ollama.Client(host=cascade.url, timeout=30) as client:
        yield client


def last_body(sim: SimHandle) -> dict[str, Any]:
    body: dict[str, Any] = sim.sim.requests[-1].body
    return body


# ----------------------------------------------------------------------------- models


def test_list_shows_the_served_model(api: ollama.Client) -> None:
    models = api.list().models
    assert [m.model for m in models] == [SERVED]
    assert models[0].digest and models[0].modified_at is not None


def test_show_reports_the_capabilities_and_the_runtimes_context(api: ollama.Client) -> None:
    shown = api.show(SERVED)
    assert shown.capabilities == ["completion", "tools", "thinking", "vision"]
    assert shown.modelinfo is not None
    assert shown.modelinfo["cascade.context_length"] == SimConfig().context_length
    assert api.show(f"{SERVED}:latest").capabilities == shown.capabilities


def test_show_of_another_model_is_a_404(api: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        api.show("llama3.2:latest")
    assert raised.value.status_code == 404
    assert "llama3.2:latest" in raised.value.error and SERVED in raised.value.error


def test_pull_of_the_served_model_succeeds_streamed_or_not(api: ollama.Client) -> None:
    statuses = [part.status for part in api.pull(SERVED, stream=True)]
    assert statuses[-1] == "success" and len(statuses) == 2
    assert api.pull(SERVED).status == "success"


def test_pull_of_another_model_is_a_clear_error(api: ollama.Client) -> None:
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as raised:
            result = api.pull("llama3.2:latest", stream=stream)
            if stream:
                list(result)  # type: ignore[arg-type]
        assert raised.value.status_code == 404
        assert "cannot pull 'llama3.2:latest'" in raised.value.error


def test_root_version_and_running_models(cascade: Cascade, api: ollama.Client) -> None:
    probe = {"user-agent": "ollama-python/0.6.1 (x86_64 linux) Python/3.11.7"}
    root = httpx.get(cascade.url + "/", headers=probe, timeout=10)
    assert root.status_code == 200 and root.text == "Ollama is running"
    page = httpx.get(cascade.url + "/", headers={"accept": "text/html"}, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert httpx.head(cascade.url + "/", timeout=10).status_code == 200
    version = httpx.get(cascade.url + "/api/version", timeout=10).json()
    assert version["version"].count(".") == 2
    running = api.ps().models
    assert [m.model for m in running] == [SERVED]
    assert running[0].context_length == SimConfig().context_length


# ----------------------------------------------------------------------------- chat


def test_a_plain_chat_answer_with_its_counters(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="hello", output="Hi! How can I help?"))
    response = api.chat(model=SERVED, messages=[{"role": "user", "content": "hello"}])
    assert response.message.role == "assistant"
    assert response.message.content == "Hi! How can I help?"
    assert response.message.thinking is None and response.message.tool_calls is None
    assert response.done is True and response.done_reason == "stop"
    assert response.prompt_eval_count == sim.sim.requests[-1].prompt_tokens
    assert response.eval_count == sim.sim.requests[-1].completion_tokens
    assert response.total_duration is not None and response.eval_duration is not None
    assert response.prompt_eval_duration is not None
    assert response.total_duration >= response.prompt_eval_duration + response.eval_duration > 0
    assert last_body(sim)["chat_template_kwargs"]["enable_thinking"] is False


def test_a_streamed_chat_is_ndjson_ending_with_done(cascade: Cascade, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="meaning", output="The answer is 42."))
    body = {"model": SERVED, "messages": [{"role": "user", "content": "meaning of life?"}]}
    with httpx.stream("POST", cascade.url + "/api/chat", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(line["done"] is False for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == "The answer is 42."
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    assert last["model"] == SERVED and last["created_at"].endswith("Z")
    for counter in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[counter], int)
    assert last["eval_count"] == sim.sim.requests[-1].completion_tokens > 0


def test_a_cut_answer_is_done_reason_length(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 100))
    parts = list(
        api.chat(
            model=SERVED,
            messages=[{"role": "user", "content": "a long answer"}],
            stream=True,
            options={"num_predict": 8},
        )
    )
    assert parts[-1].done_reason == "length"
    assert last_body(sim)["max_completion_tokens"] == 8


@pytest.mark.parametrize("stream", [False, True])
def test_think_puts_the_reasoning_in_message_thinking(
    api: ollama.Client, sim: SimHandle, stream: bool
) -> None:
    sim.sim.add_rule(Rule(match="sky", output="Rayleigh scattering.\n</think>\n\nBlue."))
    messages = [{"role": "user", "content": "what colour is the sky"}]
    if stream:
        parts = list(api.chat(model=SERVED, messages=messages, think=True, stream=True))
        thinking = "".join(p.message.thinking or "" for p in parts)
        content = "".join(p.message.content or "" for p in parts)
    else:
        message = api.chat(model=SERVED, messages=messages, think=True).message
        thinking, content = message.thinking or "", message.content or ""
    assert thinking.strip() == "Rayleigh scattering."
    assert content.strip() == "Blue." and "think>" not in content
    body = last_body(sim)
    assert body["chat_template_kwargs"]["enable_thinking"] is True
    assert body["custom_params"] == {"thinking_budget": 3000}  # the operator's default


def test_think_levels_are_budgets_and_false_is_off(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Fine.\n</think>\n\nOk."))
    messages = [{"role": "user", "content": "hi"}]
    api.chat(model=SERVED, messages=messages, think="low")
    assert last_body(sim)["custom_params"] == {"thinking_budget": 1024}
    api.chat(model=SERVED, messages=messages, think="max")
    assert last_body(sim)["custom_params"] == {"thinking_budget": 16000}  # the operator's cap
    sim.sim.set_rules([Rule(output="Ok.")])
    api.chat(model=SERVED, messages=messages, think=False)
    assert last_body(sim)["chat_template_kwargs"]["enable_thinking"] is False
    assert "custom_params" not in last_body(sim)


def test_a_base64_image_reaches_the_runtime_as_an_image(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="picture", output="A red square."))
    raw = png_bytes(64, 48)
    response = api.chat(
        model=SERVED,
        messages=[{"role": "user", "content": "what is in the picture?", "images": [raw]}],
    )
    assert response.message.content == "A red square."
    record = sim.sim.requests[-1]
    assert record.image_tokens > 0
    parts = record.body["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "what is in the picture?"}
    url = parts[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_assist_tool_round_trip(api: ollama.Client, sim: SimHandle) -> None:
    """Home Assistant's loop: streamed chat with its tools, the call's arguments as a dict, the
    tool result sent back (with no id and no tool_name), then the final answer."""
    sim.sim.add_rule(Rule(match="kitchen", output=TURN_ON_CALL, times=1))
    sim.sim.add_rule(Rule(match="kitchen", output="The kitchen light is on."))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You control a home."},
        {"role": "user", "content": "turn on the kitchen light"},
    ]
    parts = list(api.chat(model=SERVED, messages=messages, tools=[TURN_ON], stream=True))
    calls = [c for p in parts for c in p.message.tool_calls or ()]
    assert len(calls) == 1
    assert calls[0].function.name == "HassTurnOn"
    assert calls[0].function.arguments == {"name": "kitchen light"}
    assert parts[-1].done is True and parts[-1].done_reason == "stop"
    offered = [t["function"]["name"] for t in last_body(sim)["tools"]]
    assert offered == ["HassTurnOn"]  # the client's tools only: no server tools

    messages += [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "HassTurnOn", "arguments": calls[0].function.arguments}}
            ],
        },
        {"role": "tool", "content": json.dumps({"success": True})},
    ]
    parts = list(api.chat(model=SERVED, messages=messages, tools=[TURN_ON], stream=True))
    assert "".join(p.message.content or "" for p in parts) == "The kitchen light is on."
    sent = last_body(sim)["messages"]
    assistant, result = sent[-2], sent[-1]
    assert assistant["tool_calls"][0]["function"]["name"] == "HassTurnOn"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {
        "name": "kitchen light"
    }
    assert result["role"] == "tool" and result["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert json.loads(result["content"]) == {"success": True}


def test_without_client_tools_no_server_tools_are_offered(
    api: ollama.Client, sim: SimHandle, cascade: Cascade
) -> None:
    assert cascade.app.state.services.registry.names()  # there are server tools to leave out
    sim.sim.add_rule(Rule(output="Ok."))
    api.chat(model=SERVED, messages=[{"role": "user", "content": "hi"}])
    assert "tools" not in last_body(sim)


def test_the_operator_can_offer_server_tools_to_ollama_clients(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(sim, redis_server, ollama_server_tools="*")
    app = create_app(settings)
    sim.sim.add_rule(Rule(output="Ok."))
    with serve_in_thread(app) as url, ollama.Client(host=url, timeout=30) as client:
        client.chat(model=SERVED, messages=[{"role": "user", "content": "hi"}], tools=[TURN_ON])
        offered = {t["function"]["name"] for t in last_body(sim)["tools"]}
        server = set(app.state.services.registry.names())
    assert "HassTurnOn" in offered and offered - {"HassTurnOn"}
    assert offered - {"HassTurnOn"} <= server


def test_options_and_keep_alive_reach_the_runtime(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    api.chat(
        model=SERVED,
        messages=[{"role": "user", "content": "hi"}],
        keep_alive="-1s",  # as Home Assistant sends it
        options={
            "num_ctx": 8192.0,  # Home Assistant's number fields are floats
            "num_predict": 50,
            "temperature": 0.3,
            "top_p": 0.8,
            "top_k": 10,
            "repeat_penalty": 1.2,
            "stop": ["END"],
            "seed": 7,
            "num_gpu": 1,  # accepted, no effect
        },
    )
    body = last_body(sim)
    assert body["max_completion_tokens"] == 50
    assert body["temperature"] == 0.3 and body["top_p"] == 0.8 and body["top_k"] == 10
    assert body["repetition_penalty"] == 1.2
    assert body["stop"] == ["END"] and body["seed"] == 7


def test_format_json_and_a_schema_are_response_formats(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(output='{"ok": true}'))
    messages = [{"role": "user", "content": "answer in JSON"}]
    response = api.chat(model=SERVED, messages=messages, format="json")
    assert json.loads(response.message.content or "") == {"ok": True}
    assert last_body(sim)["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    api.chat(model=SERVED, messages=messages, format=schema)
    assert last_body(sim)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def test_empty_messages_load_or_unload_without_a_model_call(
    api: ollama.Client, sim: SimHandle
) -> None:
    assert api.chat(model=SERVED, messages=[]).done_reason == "load"
    assert api.chat(model=SERVED, messages=[], keep_alive=0).done_reason == "unload"
    assert sim.sim.requests == []


def test_a_client_that_leaves_mid_stream_aborts_the_runtime_request(
    cascade: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(match="long", output="word " * 400, tpot=0.01))
    body = {"model": SERVED, "messages": [{"role": "user", "content": "a long answer"}]}
    with httpx.stream("POST", cascade.url + "/api/chat", json=body, timeout=30) as response:
        assert response.status_code == 200
        for seen, _ in enumerate(response.iter_lines()):
            if seen >= 5:
                break  # leaves the with-block: the connection closes mid-stream
    rid = sim.sim.requests[-1].rid
    deadline = time.monotonic() + 5
    while rid not in sim.sim.aborted_rids:
        assert time.monotonic() < deadline, "the runtime request was not aborted"
        time.sleep(0.05)


def test_a_runtime_failure_after_output_is_a_last_error_line(
    cascade: Cascade, api: ollama.Client, sim: SimHandle
) -> None:
    cut = Fault(kind="cut_stream", after_chunks=3, times=2)
    sim.sim.add_rule(Rule(match="cut", output="word " * 50, fault=cut))
    body = {"model": SERVED, "messages": [{"role": "user", "content": "cut me"}]}
    response = httpx.post(cascade.url + "/api/chat", json=body, timeout=30)
    assert response.status_code == 200  # the stream had started
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[0]["message"]["content"] and lines[0]["done"] is False
    assert list(lines[-1]) == ["error"] and "Traceback" not in response.text
    with pytest.raises(ollama.ResponseError):
        list(api.chat(model=SERVED, messages=body["messages"], stream=True))


# ----------------------------------------------------------------------------- generate


def test_generate_with_a_system_prompt_and_thinking(api: ollama.Client, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match="haiku", output="Count syllables.\n</think>\n\nAn old pond."))
    response = api.generate(
        model=SERVED, prompt="write a haiku", system="You are a poet.", think=True
    )
    assert (response.response or "").strip() == "An old pond."
    assert (response.thinking or "").strip() == "Count syllables."
    assert response.done and response.done_reason == "stop"
    sent = last_body(sim)["messages"]
    assert sent[0] == {"role": "system", "content": "You are a poet."}
    assert sent[1] == {"role": "user", "content": "write a haiku"}
    parts = list(api.generate(model=SERVED, prompt="write a haiku", think=True, stream=True))
    assert "".join(p.response or "" for p in parts).strip() == "An old pond."
    assert "".join(p.thinking or "" for p in parts).strip() == "Count syllables."


def test_generate_refuses_what_it_cannot_honour(api: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        api.generate(model=SERVED, prompt="x", raw=True)
    assert raised.value.status_code == 400 and "raw" in raised.value.error


# ----------------------------------------------------------------------------- errors


def test_a_bad_body_is_an_ollama_shaped_400(cascade: Cascade) -> None:
    response = httpx.post(
        cascade.url + "/api/chat",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"num_ctx": 0}, "num_ctx"), ({"num_ctx": 1.5}, "num_ctx"), ({"top_p": 7}, "top_p")],
)
def test_bad_options_are_400s_naming_the_option(
    api: ollama.Client, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        api.chat(model=SERVED, messages=[{"role": "user", "content": "hi"}], options=options)
    assert raised.value.status_code == 400
    assert f"options.{field}" in raised.value.error


def test_a_tool_result_with_no_call_to_answer_is_a_400(api: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        api.chat(
            model=SERVED,
            messages=[{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}],
        )
    assert raised.value.status_code == 400 and "messages[1]" in raised.value.error


def test_chat_with_another_model_is_a_404(api: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        api.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404


def test_with_api_keys_a_caller_needs_a_bearer_key(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    sim.sim.add_rule(Rule(output="Ok."))
    app = create_app(cascade_settings(sim, redis_server, api_keys="k1,k2"))
    with serve_in_thread(app) as url:
        with ollama.Client(host=url, timeout=30) as anonymous:
            with pytest.raises(ollama.ResponseError) as raised:
                anonymous.list()
            assert raised.value.status_code == 401
        response = httpx.post(url + "/api/chat", json={"model": SERVED}, timeout=10)
        assert response.status_code == 401 and list(response.json()) == ["error"]
        headers = {"Authorization": "Bearer k1"}
        with ollama.Client(host=url, timeout=30, headers=headers) as keyed:
            assert [m.model for m in keyed.list().models] == [SERVED]
            answer = keyed.chat(model=SERVED, messages=[{"role": "user", "content": "hi"}])
            assert answer.message.content == "Ok."


def test_a_runtime_that_is_down_is_a_503_before_any_byte(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(
        sim, redis_server, runtime_url=f"http://127.0.0.1:{free_port()}", runtime_max_retries=0
    )
    with serve_in_thread(create_app(settings)) as url:
        with ollama.Client(host=url, timeout=30) as client:
            with pytest.raises(ollama.ResponseError) as raised:
                list(
                    client.chat(
                        model=SERVED, messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                )
            assert raised.value.status_code == 503
        response = httpx.post(
            url + "/api/chat",
            json={"model": SERVED, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert response.status_code == 503
        assert list(response.json()) == ["error"] and response.headers["retry-after"]
