"""Stateless chat UIs (Open WebUI 0.12.4 and the like) against cascade, with their own bodies.

Such a client sends the whole history each turn and no `session_id`, brings tools of its own
(sometimes named like cascade's), reads only standard fields, and makes background calls
(title, tags, follow-ups) with a `### Task:` prompt beside each message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from app.agent.models import ToolProgress
from app.agent.protocol import tool_step_line
from app.api.app import create_app
from app.runtime.answer_start import AnswerStart
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import call
from tests.redis_server import RedisServer, free_port
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

# A calculator as Open WebUI users install it (a workspace tool, sent with native function
# calling): the same name as cascade's built-in one, another schema.
CLIENT_CALCULATOR: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Calculate the result of an equation.",
        "parameters": {
            "type": "object",
            "properties": {
                "equation": {"type": "string", "description": "The equation to calculate."}
            },
            "required": ["equation"],
        },
    },
}


def offered(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [t["function"] for t in body.get("tools") or []]


def sse_data(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


# ----------------------------------------------------------------------------- 1: name clash


def test_a_client_tool_named_like_a_server_tool_wins_in_chat(
    generous: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output=call("calculator", equation="2+2"), times=1))
    with generous.client() as client:
        response = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "what is 2+2?"}],
            tools=[CLIENT_CALCULATOR],  # type: ignore[list-item]
        )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.function.name == "calculator"  # type: ignore[union-attr]
    assert json.loads(tool_call.function.arguments) == {"equation": "2+2"}  # type: ignore[union-attr]
    (request,) = sim.sim.requests  # the call went back to the client, nothing ran here
    functions = offered(request.body)
    calculators = [f for f in functions if f["name"] == "calculator"]
    assert calculators == [CLIENT_CALCULATOR["function"]]
    assert "clock" in [f["name"] for f in functions]  # the other server tools stay offered


def test_a_client_tool_named_like_a_server_tool_wins_in_chat_streamed(
    generous: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output=call("calculator", equation="6*7"), times=1))
    raw = httpx.post(
        generous.url + "/v1/chat/completions",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "what is 6*7?"}],
            "stream": True,
            "tools": [CLIENT_CALCULATOR],
        },
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    chunks = sse_data(raw.text)
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    assert calls[0]["function"]["name"] == "calculator"
    arguments = "".join(c["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == {"equation": "6*7"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    assert finishes[-1] == "tool_calls"
    assert not any("tool_progress" in (c.get("cascade") or {}) for c in chunks)
    assert len(sim.sim.requests) == 1


def test_a_client_tool_named_like_a_server_tool_wins_in_responses(
    generous: Cascade, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output=call("calculator", equation="2+2"), times=1))
    function = CLIENT_CALCULATOR["function"]
    with generous.client() as client:
        response = client.responses.create(
            model="m",
            input="what is 2+2?",
            tools=[{"type": "function", **function}],
        )
    (item,) = [i for i in response.output if i.type != "reasoning"]
    assert item.type == "function_call"
    assert item.name == "calculator" and json.loads(item.arguments) == {"equation": "2+2"}
    (request,) = sim.sim.requests
    calculators = [f for f in offered(request.body) if f["name"] == "calculator"]
    assert calculators == [function]


# ----------------------------------------------------------------------------- 2: answer start

THOUGHT = "Rayleigh scattering, shorter wavelengths.\n</think>\n\n"


@pytest.mark.parametrize(
    ("deltas", "handed_on"),
    [
        (["\n\n", "Blue."], ["", "Blue."]),
        (["\n", "\n", "Blue", "."], ["", "", "Blue", "."]),
        (["\n\nBlue.\n\nSky."], ["Blue.\n\nSky."]),
        ([" \n\n    indented code"], ["    indented code"]),
        (["Blue.", "\n\n", "Sky."], ["Blue.", "\n\n", "Sky."]),
        (["\n", " "], ["", ""]),  # whitespace that no text follows is dropped
    ],
)
def test_answer_start_drops_only_leading_blank_lines(
    deltas: list[str], handed_on: list[str]
) -> None:
    start = AnswerStart()
    assert [start.feed(d) for d in deltas] == handed_on


def test_a_thinking_answer_has_no_leading_blank_lines_in_chat(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output=THOUGHT + "Blue."))
    response = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "what colour is the sky"}],
        extra_body={"thinking": True},
    )
    message = response.choices[0].message
    assert message.content == "Blue."
    assert (message.model_extra or {})["reasoning_content"].startswith("Rayleigh")


def test_a_thinking_answer_has_no_leading_blank_lines_in_chat_streamed(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output=THOUGHT + "Blue sky, mostly."))
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "what colour is the sky"}],
        stream=True,
        extra_body={"thinking": True},
    )
    content = [c.choices[0].delta.content or "" for c in stream if c.choices]
    content = [text for text in content if text]
    assert content and not content[0].startswith("\n")
    assert "".join(content) == "Blue sky, mostly."


def test_without_thinking_the_content_is_left_as_the_runtime_sent_it(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output="\n\nA poem:\n\nroses"))
    response = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a poem"}], extra_body={"thinking": False}
    )
    assert response.choices[0].message.content == "\n\nA poem:\n\nroses"
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "a poem"}],
        stream=True,
        extra_body={"thinking": False},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "\n\nA poem:\n\nroses"


def test_a_thinking_answer_has_no_leading_blank_lines_in_responses(
    client: OpenAI, sim: SimHandle
) -> None:
    sim.sim.add_rule(Rule(output=THOUGHT + "Blue."))
    response = client.responses.create(model="m", input="sky?", reasoning={"effort": "low"})
    assert [i.type for i in response.output] == ["reasoning", "message"]
    assert response.output_text == "Blue."
    deltas: list[str] = []
    done: list[str] = []
    with client.responses.stream(model="m", input="sky?", reasoning={"effort": "low"}) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.output_text.done":
                done.append(event.text)
    assert deltas and not deltas[0].startswith("\n")
    assert "".join(deltas) == "Blue." and done == ["Blue."]


# ----------------------------------------------------------------------------- 3: tool steps

# Open WebUI's history as it sends it to an OpenAI-compatible backend: content only (it keeps an
# earlier answer's reasoning to itself for such providers).
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help you today?"},
    {"role": "user", "content": "What is 1234 * 5678?"},
]
CALCULATOR_LINE = '\n[calculator] {"expression":"1234 * 5678"} → 1234 * 5678 = 7006652\n'


def open_webui_chat(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The body Open WebUI 0.12.4 sends for a chat message (routers/openai.py, after its
    `metadata` is taken off): no session, the whole history, streamed with usage."""
    return {
        "stream": True,
        "model": "qwen3.6-27b-cascade",
        "messages": messages,
        "stream_options": {"include_usage": True},
    }


def script_calculator_step(sim: SimHandle) -> None:
    sim.sim.add_rule(
        Rule(
            match="1234",
            output="Let me compute.\n\n" + call("calculator", expression="1234 * 5678"),
            times=1,
        )
    )
    sim.sim.add_rule(Rule(match="1234", output="1234 × 5678 = 7006652."))


def streamed_parts(raw: httpx.Response) -> tuple[str, str, list[dict[str, Any]]]:
    """(reasoning, content, chunks) of a streamed chat answer, as a standard client reads it."""
    assert raw.status_code == 200, raw.text
    chunks = sse_data(raw.text)
    deltas = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    return reasoning, content, chunks


def test_an_open_webui_stream_shows_server_tool_steps_in_reasoning(
    cascade: Cascade, sim: SimHandle
) -> None:
    script_calculator_step(sim)
    raw = httpx.post(
        cascade.url + "/v1/chat/completions", json=open_webui_chat(HISTORY), timeout=30
    )
    reasoning, content, chunks = streamed_parts(raw)
    assert CALCULATOR_LINE in reasoning
    assert content == "Let me compute.\n\n1234 × 5678 = 7006652."
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    # The line is for the client's eyes: the second step's prompt has the tool result, not it.
    first, second = sim.sim.requests
    assert "[calculator]" not in json.dumps(first.body) + json.dumps(second.body)
    assert any(
        m["role"] == "tool" and m["content"] == "1234 * 5678 = 7006652"
        for m in second.body["messages"]
    )
    assert all(not m.get("reasoning_content") for m in second.body["messages"])


def test_with_the_setting_off_tool_steps_stay_out_of_reasoning(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(sim, redis_server, tool_steps_in_reasoning=False)
    with serve_in_thread(create_app(settings)) as url:
        script_calculator_step(sim)
        raw = httpx.post(url + "/v1/chat/completions", json=open_webui_chat(HISTORY), timeout=30)
        reasoning, content, chunks = streamed_parts(raw)
        assert reasoning == ""
        assert content.endswith("= 7006652.")
        progress = [
            c["cascade"]["tool_progress"]
            for c in chunks
            if "cascade" in c and "tool_progress" in c["cascade"]
        ]
        assert [p["status"] for p in progress] == ["started", "finished"]
        script_calculator_step(sim)
        whole = httpx.post(
            url + "/v1/chat/completions", json={**open_webui_chat(HISTORY), "stream": False}
        )
    assert whole.json()["choices"][0]["message"]["reasoning_content"] is None


def test_a_non_streamed_answer_shows_tool_steps_in_its_reasoning(
    client: OpenAI, sim: SimHandle
) -> None:
    script_calculator_step(sim)
    response = client.chat.completions.create(model="m", messages=HISTORY)  # type: ignore[arg-type]
    message = response.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == CALCULATOR_LINE
    assert message.content == "1234 × 5678 = 7006652."
    assert "[calculator]" not in json.dumps(sim.sim.requests[-1].body)


def test_tool_step_lines_are_never_stored_nor_sent_on_the_next_turn(
    cascade: Cascade, sim: SimHandle
) -> None:
    script_calculator_step(sim)
    body = {**open_webui_chat(HISTORY[-1:]), "store": True, "stream_options": None}
    raw = httpx.post(cascade.url + "/v1/chat/completions", json=body, timeout=30)
    reasoning, _, chunks = streamed_parts(raw)
    assert CALCULATOR_LINE in reasoning
    session_id = next(c["session_id"] for c in chunks if c.get("session_id"))
    sim.sim.add_rule(Rule(match="thanks", output="You are welcome."))
    again = httpx.post(
        cascade.url + "/v1/chat/completions",
        json={
            "model": "m",
            "session_id": session_id,
            "messages": [{"role": "user", "content": "thanks"}],
        },
        timeout=30,
    )
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["reasoning_content"] is None  # no step this turn
    next_turn = sim.sim.requests[-1].body
    assert "[calculator]" not in json.dumps(next_turn)
    assert [m["role"] for m in next_turn["messages"]][-4:] == [
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


def test_a_tool_step_line_is_one_short_line_whatever_the_tool_said() -> None:
    step = ToolProgress(
        2,
        "call_1",
        "fetch_url",
        "finished",
        '{"url": "http://x.test/' + "a" * 500 + '"}',
        "Title\n\n" + "word " * 400,
    )
    line = tool_step_line(step)
    assert line.startswith('\n[fetch_url] {"url":"http://x.test/a') and line.endswith("…\n")
    assert line.count("\n") == 2 and len(line) < 2 * 200 + 40
    waiting = ToolProgress(1, "call_2", "open_door", "failed", "{}", None)
    assert tool_step_line(waiting) == "\n[open_door] {} → (no result yet)\n"


# ----------------------------------------------------------------------------- 4: task calls


# The shape of Open WebUI 0.12.4's background task prompts (backend/open_webui/config.py):
# a `### Task:` heading, then guidelines, the expected JSON and `{{MESSAGES:END:n}}`, which its
# routers/tasks.py renders as "ROLE: text" lines of the last n messages. It sends one user
# message, not streamed, with max_tokens 1000 (its default task params); routers/openai.py
# takes `metadata` (where `task` is) off before the body leaves. The wording here is ours.
def task_template(task: str, output: str, last: int) -> str:
    return (
        f"### Task:\n{task}\n### Guidelines:\n- Answer with the JSON object only.\n"
        f"### Output:\nJSON format: {output}\n"
        f"### Chat History:\n<chat_history>\n{{{{MESSAGES:END:{last}}}}}\n</chat_history>"
    )


TITLE_TEMPLATE = task_template("Name this chat in a few words.", '{ "title": "..." }', 2)
TAGS_TEMPLATE = task_template("Tag the themes of this chat.", '{ "tags": ["..."] }', 6)
FOLLOW_UP_TEMPLATE = task_template(
    "Suggest what the user may ask next.", '{ "follow_ups": ["..."] }', 5
)

CHAT_SO_FAR = [
    {"role": "user", "content": "What is 1234 * 5678?"},
    {"role": "assistant", "content": "1234 × 5678 = 7006652."},
]


def open_webui_task(template: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of one of Open WebUI's background task calls over `messages`."""

    def last(match: re.Match[str]) -> str:
        chosen = messages[-int(match.group(1)) :]
        return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in chosen)

    content = re.sub(r"\{\{MESSAGES:END:(\d+)\}\}", last, template)
    return {
        "model": "qwen3.6-27b-cascade",
        "messages": [{"role": "user", "content": content}],
        "stream": False,
        "max_tokens": 1000,
    }


TASKS = {
    "title": (TITLE_TEMPLATE, '{"title": "Multiplication"}'),
    "tags": (TAGS_TEMPLATE, '{"tags": ["Math"]}'),
    "follow_ups": (FOLLOW_UP_TEMPLATE, '{"follow_ups": ["And 1234 * 5679?"]}'),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_open_webui_task_calls_get_no_server_tools(
    cascade: Cascade, sim: SimHandle, task: str
) -> None:
    template, answer = TASKS[task]
    sim.sim.add_rule(Rule(match="### Task:", output=answer))
    body = open_webui_task(template, CHAT_SO_FAR)
    assert (
        "USER: What is 1234 * 5678?\nASSISTANT: 1234 × 5678 = 7006652."
        in (body["messages"][0]["content"])
    )
    raw = httpx.post(cascade.url + "/v1/chat/completions", json=body, timeout=30)
    assert raw.status_code == 200, raw.text
    assert raw.json()["choices"][0]["message"]["content"] == answer
    (request,) = sim.sim.requests
    assert "tools" not in request.body


def test_a_task_call_with_a_system_prompt_added_is_still_a_task_call(
    cascade: Cascade, sim: SimHandle
) -> None:
    body = open_webui_task(TITLE_TEMPLATE, CHAT_SO_FAR)
    body["messages"].insert(0, {"role": "system", "content": "You are Qwen."})
    assert httpx.post(cascade.url + "/v1/chat/completions", json=body, timeout=30).is_success
    assert "tools" not in sim.sim.requests[0].body


def test_conversation_turns_keep_their_server_tools(cascade: Cascade, sim: SimHandle) -> None:
    task = open_webui_task(TITLE_TEMPLATE, CHAT_SO_FAR)
    looks_like_a_task = task["messages"][0]["content"]
    turns = [
        {**task, "stream": True},  # a user typing the mark: streamed, so a turn
        {**task, "messages": [*CHAT_SO_FAR, {"role": "user", "content": looks_like_a_task}]},
        {**task, "server_tools": ["clock"]},  # named tools are the request's own word
    ]
    for body in turns:
        raw = httpx.post(cascade.url + "/v1/chat/completions", json=body, timeout=30)
        assert raw.status_code == 200, raw.text
    offers = [[t["function"]["name"] for t in r.body.get("tools") or []] for r in sim.sim.requests]
    assert "calculator" in offers[0] and "calculator" in offers[1]
    assert offers[2] == ["clock"]


def test_with_the_heuristic_off_task_calls_get_server_tools(
    sim: SimHandle, redis_server: RedisServer
) -> None:
    settings = cascade_settings(sim, redis_server, task_prompts_without_tools=False)
    with serve_in_thread(create_app(settings)) as url:
        body = open_webui_task(TAGS_TEMPLATE, CHAT_SO_FAR)
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=30).is_success
    assert "calculator" in [t["function"]["name"] for t in sim.sim.requests[0].body["tools"]]


# ----------------------------------------------------------------------------- 5: the script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "open-webui.sh"


def test_the_open_webui_script_parses() -> None:
    checked = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_the_open_webui_script_stops_when_cascade_does_not_answer() -> None:
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    run = subprocess.run(
        [str(SCRIPT)],
        env={**os.environ, "OPENAI_API_BASE_URL": nobody, "OPEN_WEBUI_MODE": "pip"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert f"cascade does not answer at {nobody}/models" in run.stderr


def test_tool_step_lines_stay_out_of_a_stateless_chats_next_turn(
    cascade: Cascade, sim: SimHandle
) -> None:
    # The call comes without text before it: the answer the client resends is the run's final one.
    sim.sim.add_rule(
        Rule(match="1234", output=call("calculator", expression="1234 * 5678"), times=1)
    )
    sim.sim.add_rule(Rule(match="1234", output="1234 × 5678 = 7006652."))
    raw = httpx.post(
        cascade.url + "/v1/chat/completions", json=open_webui_chat(HISTORY), timeout=30
    )
    reasoning, content, _ = streamed_parts(raw)
    assert CALCULATOR_LINE in reasoning
    # Open WebUI sends the answer back as its content only, with the next question.
    sim.sim.add_rule(Rule(match="thanks", output="You are welcome."))
    follow = [*HISTORY, {"role": "assistant", "content": content}]
    follow.append({"role": "user", "content": "thanks"})
    again = httpx.post(
        cascade.url + "/v1/chat/completions", json=open_webui_chat(follow), timeout=30
    )
    reasoning, content, _ = streamed_parts(again)
    assert reasoning == "" and content == "You are welcome."
    next_turn = sim.sim.requests[-1].body
    assert "[calculator]" not in json.dumps(next_turn)
    # The recorded step (the ledger's) is what the model sees again, not the display line.
    assert any(m["role"] == "tool" for m in next_turn["messages"])
