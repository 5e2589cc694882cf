"""Malformed requests to `/v1/responses` and its sub-routes: every one is a 4xx with OpenAI's
error JSON (`{"error": {"message", "type", "param", "code"}}`), never a 500.

One cascade (and simulator) serves the whole module: the cases only need answers, and each
asserts the status and the exact error shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from tests.integration.conftest import Cascade, cascade_settings
from tests.redis_server import SharedRedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.testing import running_simulator


@pytest.fixture(scope="module")
def hostile(shared_redis_server: SharedRedisServer) -> Iterator[tuple[Cascade, str]]:
    """cascade over a simulator, and the id of one stored response (for the sub-routes)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("CASCADE_"):
                patch.delenv(name)
        with running_simulator() as sim:
            settings = cascade_settings(sim, shared_redis_server)
            app = create_app(settings)
            with serve_in_thread(app) as url:
                made = httpx.post(url + "/v1/responses", json={"model": "m", "input": "hi"})
                assert made.status_code == 200, made.text
                yield Cascade(url=url, app=app, settings=settings), made.json()["id"]


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


def deep_list(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


USER = {"role": "user", "content": "hi"}

BODIES: dict[str, Any] = {
    # the body itself
    "body_array": [1, 2],
    "body_string": "hello",
    "body_number": 5,
    "body_null": None,
    "body_deep": {"model": "m", "input": "hi", "metadata": deep(200)},
    "body_deep_list": {"model": "m", "input": deep_list(300)},
    # model, input
    "model_number": {"model": 5, "input": "hi"},
    "model_object": {"model": {"a": 1}, "input": "hi"},
    "input_number": {"input": 5},
    "input_object": {"input": {"role": "user", "content": "hi"}},
    "input_null": {"input": None},
    "input_empty_list": {"input": []},
    "input_empty_string": {"input": ""},
    "input_item_number": {"input": [5]},
    "input_item_string": {"input": ["hi"]},
    "input_item_null": {"input": [None]},
    "input_item_list": {"input": [[USER]]},
    "input_unknown_type": {"input": [{"type": "computer_call", "id": "x"}]},
    "input_type_number": {"input": [{"type": 5, "role": "user", "content": "hi"}]},
    "input_type_list": {"input": [{"type": ["message"], "role": "user", "content": "hi"}]},
    "input_role_bad": {"input": [{"role": "wizard", "content": "hi"}]},
    "input_role_number": {"input": [{"role": 1, "content": "hi"}]},
    "input_role_list": {"input": [{"role": ["user"], "content": "hi"}]},
    "input_content_number": {"input": [{"role": "user", "content": 5}]},
    "input_content_null": {"input": [{"role": "user", "content": None}]},
    "input_content_object": {"input": [{"role": "user", "content": {"text": "hi"}}]},
    "input_part_string": {"input": [{"role": "user", "content": ["hi"]}]},
    "input_part_unknown": {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
    "input_part_text_number": {
        "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]
    },
    "input_image_number": {
        "input": [{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]
    },
    "input_image_bad_url": {
        "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "nope"}]}]
    },
    "input_image_in_assistant": {
        "input": [
            {"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]},
        ]
    },
    "function_call_no_call_id": {"input": [{"type": "function_call", "name": "f"}]},
    "function_call_args_object": {
        "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]
    },
    "function_call_name_number": {
        "input": [{"type": "function_call", "call_id": "c", "name": 5, "arguments": "{}"}]
    },
    "function_call_args_not_json": {
        "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}]
    },
    "function_call_output_unanswered": {
        "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]
    },
    "function_call_output_number": {
        "input": [
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": 5},
        ]
    },
    "mcp_call_no_id": {"input": [{"type": "mcp_call", "name": "f", "arguments": "{}"}]},
    "reasoning_content_number": {"input": [{"type": "reasoning", "content": 5}, USER]},
    "reasoning_encrypted_number": {"input": [{"type": "reasoning", "encrypted_content": 5}]},
    "reasoning_encrypted_garbage": {"input": [{"type": "reasoning", "encrypted_content": "x"}]},
    "item_reference_no_chain": {"input": [{"type": "item_reference", "id": "msg_1"}]},
    "item_reference_id_number": {"input": [{"type": "item_reference", "id": 5}]},
    "approval_no_chain": {
        "input": [
            {"type": "mcp_approval_response", "approval_request_id": "pause_1", "approve": True}
        ]
    },
    "approval_approve_string": {
        "input": [
            {"type": "mcp_approval_response", "approval_request_id": "pause_1", "approve": "yes"}
        ]
    },
    "huge_input_list": {"input": [USER] * 5000 + [5]},
    "huge_metadata": {"input": "hi", "metadata": {f"k{i}": "v" for i in range(5000)}},
    "metadata_value_long": {"input": "hi", "metadata": {"k": "v" * 100000}},
    "huge_string_id": {"input": "hi", "previous_response_id": "resp_" + "a" * 20000},
    # instructions, previous_response_id
    "instructions_number": {"input": "hi", "instructions": 5},
    "instructions_list": {"input": "hi", "instructions": ["a"]},
    "previous_number": {"input": "hi", "previous_response_id": 5},
    "previous_unknown": {"input": "hi", "previous_response_id": "resp_nope"},
    "previous_empty": {"input": "hi", "previous_response_id": ""},
    # tools and tool_choice
    "tools_object": {"input": "hi", "tools": {"type": "function"}},
    "tools_string": {"input": "hi", "tools": "web_search"},
    "tool_number": {"input": "hi", "tools": [5]},
    "tool_null": {"input": "hi", "tools": [None]},
    "tool_no_type": {"input": "hi", "tools": [{"name": "f"}]},
    "tool_type_number": {"input": "hi", "tools": [{"type": 5}]},
    "tool_unknown_type": {"input": "hi", "tools": [{"type": "file_search"}]},
    "tool_function_no_name": {"input": "hi", "tools": [{"type": "function"}]},
    "tool_function_bad_name": {"input": "hi", "tools": [{"type": "function", "name": "a b"}]},
    "tool_function_params_string": {
        "input": "hi",
        "tools": [{"type": "function", "name": "f", "parameters": "{}"}],
    },
    "tool_function_params_not_schema": {
        "input": "hi",
        "tools": [
            {
                "type": "function",
                "name": "f",
                "parameters": {"type": "object", "x": 1, "properties": 5},
            }
        ],
    },
    "tool_function_duplicate": {
        "input": "hi",
        "tools": [{"type": "function", "name": "f"}, {"type": "function", "name": "f"}],
    },
    "tool_choice_number": {"input": "hi", "tool_choice": 5},
    "tool_choice_unknown_string": {"input": "hi", "tool_choice": "always"},
    "tool_choice_unknown_object": {"input": "hi", "tool_choice": {"type": "magic"}},
    "tool_choice_function_no_name": {"input": "hi", "tool_choice": {"type": "function"}},
    "tool_choice_unoffered": {"input": "hi", "tool_choice": {"type": "function", "name": "f"}},
    "tool_choice_list": {"input": "hi", "tool_choice": ["auto"]},
    "parallel_tool_calls_string": {"input": "hi", "parallel_tool_calls": "maybe"},
    "server_tools_string": {"input": "hi", "server_tools": "calculator"},
    "server_tools_unknown": {"input": "hi", "server_tools": ["no_such_tool"]},
    # include, text, reasoning, truncation
    "include_string": {"input": "hi", "include": "reasoning.encrypted_content"},
    "include_unknown": {"input": "hi", "include": ["everything"]},
    "include_number": {"input": "hi", "include": [5]},
    "text_string": {"input": "hi", "text": "json"},
    "text_format_string": {"input": "hi", "text": {"format": "json"}},
    "text_format_number": {"input": "hi", "text": {"format": 5}},
    "text_format_unknown": {"input": "hi", "text": {"format": {"type": "yaml"}}},
    "text_schema_no_schema": {"input": "hi", "text": {"format": {"type": "json_schema"}}},
    "text_schema_string": {
        "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "r", "schema": "object"}},
    },
    "text_verbosity_bad": {"input": "hi", "text": {"verbosity": "shouty"}},
    "reasoning_string": {"input": "hi", "reasoning": "high"},
    "reasoning_effort_bad": {"input": "hi", "reasoning": {"effort": "extreme"}},
    "reasoning_effort_number": {"input": "hi", "reasoning": {"effort": 3}},
    "truncation_bad": {"input": "hi", "truncation": "sometimes"},
    "truncation_number": {"input": "hi", "truncation": 1},
    # numbers and flags
    "max_output_tokens_zero": {"input": "hi", "max_output_tokens": 0},
    "max_output_tokens_string": {"input": "hi", "max_output_tokens": "many"},
    "max_output_tokens_huge": {"input": "hi", "max_output_tokens": 10**30},
    "temperature_high": {"input": "hi", "temperature": 7},
    "temperature_string": {"input": "hi", "temperature": "hot"},
    "top_p_zero": {"input": "hi", "top_p": 0},
    "store_string": {"input": "hi", "store": "yes"},
    "stream_string": {"input": "hi", "stream": "yes"},
    "metadata_list": {"input": "hi", "metadata": ["a"]},
    "metadata_value_number": {"input": "hi", "metadata": {"k": 5}},
    "user_number": {"input": "hi", "user": 5},
    "thinking_budget_negative": {"input": "hi", "thinking_budget": -1},
    "thinking_string": {"input": "hi", "thinking": "on"},
}


def assert_openai_error(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and isinstance(error["code"], str)
    assert error["param"] is None or isinstance(error["param"], str)


@pytest.mark.parametrize("name", sorted(BODIES))
def test_a_malformed_body_is_a_4xx_with_openai_error_json(
    hostile: tuple[Cascade, str], name: str
) -> None:
    cascade, _ = hostile
    body = BODIES[name]
    if isinstance(body, dict) and not name.startswith("body_"):
        body = {"model": "m", **body}
    for stream in (False, True):
        streamable = isinstance(body, dict) and "stream" not in body
        sent = {**body, "stream": True} if stream and streamable else body
        response = httpx.post(cascade.url + "/v1/responses", json=sent, timeout=30)
        assert_openai_error(response)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"\xff\xfe", b'{"input": "hi"' + b" " * 10, b"[" * 100000],
    ids=["empty", "open_brace", "text", "bad_utf8", "unterminated", "deep_brackets"],
)
def test_a_body_that_is_not_json_is_a_400(hostile: tuple[Cascade, str], raw: bytes) -> None:
    cascade, _ = hostile
    response = httpx.post(
        cascade.url + "/v1/responses",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_openai_error(response)


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-5",
        "limit=99999999999999999999999",
        "order=sideways",
        "order=",
        "after=nope",
        "after=" + "a" * 5000,
        "include=everything",
    ],
)
def test_bad_input_items_queries_are_a_4xx(hostile: tuple[Cascade, str], query: str) -> None:
    cascade, stored = hostile
    response = httpx.get(f"{cascade.url}/v1/responses/{stored}/input_items?{query}", timeout=10)
    assert_openai_error(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/resp_nope"),
        ("GET", "/v1/responses/" + "r" * 5000),
        ("GET", "/v1/responses/%00%ff"),
        ("DELETE", "/v1/responses/resp_nope"),
        ("GET", "/v1/responses/resp_nope/input_items"),
        ("PUT", "/v1/responses/resp_nope"),
        ("PATCH", "/v1/responses"),
        ("POST", "/v1/responses/resp_nope/cancel"),
    ],
)
def test_bad_ids_and_methods_are_a_4xx(
    hostile: tuple[Cascade, str], method: str, path: str
) -> None:
    cascade, _ = hostile
    response = httpx.request(method, cascade.url + path, timeout=10)
    assert_openai_error(response)


def test_the_server_still_answers_after_the_hostile_cases(hostile: tuple[Cascade, str]) -> None:
    cascade, stored = hostile
    response = httpx.get(f"{cascade.url}/v1/responses/{stored}", timeout=10)
    assert response.status_code == 200
    assert response.json()["id"] == stored
