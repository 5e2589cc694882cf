"""Pins the Qwen3.6 chat template's rendering (templates/qwen3_6_chat.jinja) and the SGLang
request handling around it (tests/sglang_sim/template.py).

Expected prompts are written out from the Qwen3.5/3.6 chat format (the model's own template:
special tokens, tool-call XML, tool responses grouped into a user turn, reasoning kept only in
the running tool loop) and from SGLang 0.5.23's serving_chat.py (continue_final_message,
a trailing assistant message, tool dumps, argument parsing).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.sglang_sim.template import TEMPLATE_PATH, ChatTemplateError, render_chat_prompt

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
GEN_THINK = "<|im_start|>assistant\n<think>\n"
GEN_NO_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"

# The call-format instructions after </tools> (our own wording, see the template's header).
CALL_FORMAT = (
    "To call a function, reply in exactly this format and write nothing after it:\n"
    "\n"
    "<tool_call>\n"
    "<function=function_name>\n"
    "<parameter=parameter_name>\n"
    "value\n"
    "</parameter>\n"
    "<parameter=another_parameter>\n"
    "a value may span\n"
    "several lines\n"
    "</parameter>\n"
    "</function>\n"
    "</tool_call>\n"
    "\n"
    "Rules:\n"
    "- Each call is one <function=...></function> block inside its own"
    " <tool_call></tool_call> tags.\n"
    "- Give every required parameter.\n"
    "- Any explanation goes before the calls, never after them.\n"
    "- If no function fits, answer normally and do not mention the functions."
)

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
# json.dumps with ", " / ": " separators, keys in the order given, plus the
# "defer_loading": null that SGLang's Tool.model_dump() adds.
WEATHER_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}, '
    '"days": {"type": "integer"}}, "required": ["city"]}}, "defer_loading": null}'
)
SEARCH: dict[str, Any] = {
    "type": "function",
    "function": {"name": "search", "parameters": {"type": "object"}},
}
SEARCH_JSON = (
    '{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}, '
    '"description": null}, "defer_loading": null}'
)


def tools_system(*tool_lines: str, system_text: str = "") -> str:
    body = "<|im_start|>system\n# Tools\n\nYou can call the following functions:\n\n<tools>"
    for line in tool_lines:
        body += "\n" + line
    body += "\n</tools>\n\n" + CALL_FORMAT
    if system_text:
        body += "\n\n" + system_text
    return body + "<|im_end|>\n"


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image(url: str = "data:image/png;base64,AAAA") -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# ---------------------------------------------------------------------------------------------
# Conversations pinned literally


def test_plain_chat_with_thinking_on_by_default() -> None:
    assert render_chat_prompt([user("Hello")]) == (
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_system_and_user_with_thinking_off() -> None:
    messages = [{"role": "system", "content": "You are terse."}, user("Hi")]
    assert render_chat_prompt(messages, enable_thinking=False) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_generation_prompt_on_off_and_absent() -> None:
    messages = [user("Hi")]
    head = "<|im_start|>user\nHi<|im_end|>\n"
    assert render_chat_prompt(messages, enable_thinking=True) == head + GEN_THINK
    assert render_chat_prompt(messages, enable_thinking=False) == head + GEN_NO_THINK
    assert render_chat_prompt(messages, add_generation_prompt=False) == head


def test_image_part_inline_with_text() -> None:
    messages = [user([text("What is in this picture?\n"), image()])]
    assert render_chat_prompt(messages) == (
        f"<|im_start|>user\nWhat is in this picture?\n{IMG}<|im_end|>\n" + GEN_THINK
    )


def test_several_images_and_a_video_in_one_message() -> None:
    messages = [
        user(
            [
                image("data:a"),
                text("first, then "),
                image("data:b"),
                image("data:c"),
                {"type": "video_url", "video_url": {"url": "data:v"}},
                text(" compare them"),
            ]
        )
    ]
    assert render_chat_prompt(messages, enable_thinking=False) == (
        f"<|im_start|>user\n{IMG}first, then {IMG}{IMG}{VID} compare them<|im_end|>\n"
        + GEN_NO_THINK
    )


def test_image_only_user_message_and_system_as_parts() -> None:
    messages = [{"role": "system", "content": [text("Describe images.")]}, user([image()])]
    assert render_chat_prompt(messages, enable_thinking=False) == (
        "<|im_start|>system\nDescribe images.<|im_end|>\n"
        f"<|im_start|>user\n{IMG}<|im_end|>\n" + GEN_NO_THINK
    )


def test_tools_without_system_message() -> None:
    messages = [user("Weather in Paris?")]
    assert render_chat_prompt(messages, tools=[WEATHER, SEARCH]) == (
        tools_system(WEATHER_JSON, SEARCH_JSON)
        + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        + GEN_THINK
    )


def test_tools_with_system_message_after_a_blank_line() -> None:
    messages = [{"role": "system", "content": "  Answer in French.\n"}, user("Weather?")]
    rendered = render_chat_prompt(messages, tools=[WEATHER], enable_thinking=False)
    assert rendered == (
        tools_system(WEATHER_JSON, system_text="Answer in French.")
        + "<|im_start|>user\nWeather?<|im_end|>\n"
        + GEN_NO_THINK
    )
    # One system turn only: the caller's text is inside the tools turn.
    assert rendered.count("<|im_start|>system") == 1
    assert rendered.startswith("<|im_start|>system\n# Tools\n\n")


def test_tool_json_keeps_key_order_and_non_ascii() -> None:
    tool = {
        "type": "function",
        "function": {
            "parameters": {"type": "object", "properties": {"z": {}, "a": {}}},
            "name": "météo",
            "description": "Le temps qu'il fait ✓",
        },
    }
    expected = (
        '{"type": "function", "function": {"parameters": {"type": "object", "properties": '
        '{"z": {}, "a": {}}}, "name": "météo", "description": "Le temps qu\'il fait ✓"}, '
        '"defer_loading": null}'
    )
    assert render_chat_prompt([user("x")], tools=[tool]).startswith(tools_system(expected))


def test_assistant_tool_calls_parallel_results_and_running_loop() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        user("Weather in Paris and Lyon?"),
        {
            "role": "assistant",
            "content": "Let me check.\n\n",
            "reasoning_content": "Two cities, two calls.",
            "tool_calls": [
                call("call_a", "get_weather", '{"city": "Paris", "days": 3}'),
                call(
                    "call_b",
                    "get_weather",
                    {
                        "city": "Lyon",
                        "options": {"unit": "C", "hourly": True, "hours": [6, 12]},
                        "note": None,
                        "ratio": 0.5,
                    },
                ),
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "Sunny, 25 C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "Rain"},
    ]
    assert render_chat_prompt(messages, tools=[WEATHER]) == (
        tools_system(WEATHER_JSON, system_text="Be brief.")
        + "<|im_start|>user\nWeather in Paris and Lyon?<|im_end|>\n"
        # After the last user message: the running tool loop keeps its reasoning.
        + "<|im_start|>assistant\n<think>\nTwo cities, two calls.\n</think>\n\n"
        + "Let me check.\n\n"
        + "<tool_call>\n<function=get_weather>\n"
        + "<parameter=city>\nParis\n</parameter>\n"
        + "<parameter=days>\n3\n</parameter>\n"
        + "</function>\n</tool_call>\n"
        + "<tool_call>\n<function=get_weather>\n"
        + "<parameter=city>\nLyon\n</parameter>\n"
        + '<parameter=options>\n{"unit": "C", "hourly": true, "hours": [6, 12]}\n</parameter>\n'
        + "<parameter=note>\nnull\n</parameter>\n"
        + "<parameter=ratio>\n0.5\n</parameter>\n"
        + "</function>\n</tool_call><|im_end|>\n"
        # Both results in one user turn.
        + "<|im_start|>user\n"
        + "<tool_response>\nSunny, 25 C\n</tool_response>\n"
        + "<tool_response>\nRain\n</tool_response><|im_end|>\n"
        + GEN_THINK
    )


def test_tool_call_without_content_starts_right_after_the_think_block() -> None:
    messages = [
        user("Search cats"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("c1", "search", '{"query": "cats\\nand dogs"}')],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [text("3 hits"), text("more")]},
    ]
    assert render_chat_prompt(messages, enable_thinking=False) == (
        "<|im_start|>user\nSearch cats<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "<tool_call>\n<function=search>\n<parameter=query>\ncats\nand dogs\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>\n"
        # Text parts of a tool message are joined with a space.
        "<|im_start|>user\n<tool_response>\n3 hits more\n</tool_response><|im_end|>\n"
        + GEN_NO_THINK
    )


def test_earlier_reasoning_dropped_running_loop_reasoning_kept() -> None:
    messages = [
        user("What is 2+2?"),
        {"role": "assistant", "content": "4", "reasoning_content": "Simple sum."},
        user("And the weather in Paris?"),
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "Need the tool.",
            "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}')],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "Got it."},
        {"role": "tool", "tool_call_id": "c2", "content": "late result"},
    ]
    assert render_chat_prompt(messages) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        # Before the last real user message: reasoning dropped, no think block.
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nNeed the tool.\n</think>\n\n"
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nSunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGot it.\n</think>\n\nSunny.<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nlate result\n</tool_response><|im_end|>\n" + GEN_THINK
    )


def test_user_message_holding_only_tool_responses_is_not_a_real_query() -> None:
    messages = [
        user("Go"),
        {"role": "assistant", "content": "Working.", "reasoning_content": "Plan."},
        user("<tool_response>\nok\n</tool_response>"),
    ]
    assert render_chat_prompt(messages, enable_thinking=False) == (
        "<|im_start|>user\nGo<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nPlan.\n</think>\n\nWorking.<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n" + GEN_NO_THINK
    )


def test_preserve_thinking_keeps_every_turns_reasoning() -> None:
    messages = [
        user("Q1"),
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        user("Q2"),
        {"role": "assistant", "content": "A2"},
        user("Q3"),
    ]
    assert render_chat_prompt(messages, preserve_thinking=True, enable_thinking=False) == (
        "<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nR1\n</think>\n\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n"
        # No reasoning: an empty think block, the same bytes a thinking-off reply started with.
        "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n"
        "<|im_start|>user\nQ3<|im_end|>\n" + GEN_NO_THINK
    )
    assert render_chat_prompt(messages, preserve_thinking=False, enable_thinking=False) == (
        "<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n"
        "<|im_start|>assistant\nA2<|im_end|>\n"
        "<|im_start|>user\nQ3<|im_end|>\n" + GEN_NO_THINK
    )


def test_think_block_inside_content_is_split_out() -> None:
    messages = [
        user("Q"),
        {"role": "assistant", "content": "<think>\nInline reasoning.\n</think>\n\nAnswer."},
        user("Q2"),
    ]
    assert render_chat_prompt(messages, preserve_thinking=True) == (
        "<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nInline reasoning.\n</think>\n\nAnswer.<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n" + GEN_THINK
    )
    assert "Inline reasoning." not in render_chat_prompt(messages)


def test_content_and_reasoning_are_trimmed() -> None:
    messages = [
        user("  Hi  \n"),
        {"role": "assistant", "content": "\n\nHello!\n", "reasoning_content": "\nGreet.\n"},
        user("Bye"),
    ]
    assert render_chat_prompt(messages, preserve_thinking=True, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGreet.\n</think>\n\nHello!<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
    )


# ---------------------------------------------------------------------------------------------
# continue_final_message and a trailing assistant message, as SGLang 0.5.23 handles them
# (serving_chat.py: _handle_last_assistant_message, _append_assistant_prefix_to_prompt_ids)


def test_continue_final_message_with_thinking_off_appends_content_after_closed_think() -> None:
    messages = [user("Count to three."), {"role": "assistant", "content": "One, two,"}]
    assert render_chat_prompt(messages, continue_final_message=True, enable_thinking=False) == (
        "<|im_start|>user\nCount to three.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nOne, two,"
    )


def test_continue_final_message_with_thinking_on_continues_inside_think() -> None:
    messages = [user("Count."), {"role": "assistant", "content": "Let me count"}]
    rendered = render_chat_prompt(messages, continue_final_message=True, enable_thinking=True)
    assert (
        rendered
        == "<|im_start|>user\nCount.<|im_end|>\n<|im_start|>assistant\n<think>\nLet me count"
    )
    assert not rendered.endswith("<|im_end|>\n")


def test_continue_final_message_drops_the_continued_messages_reasoning() -> None:
    # SGLang keeps only the string content of the continued message; its reasoning_content
    # is not rendered anywhere in the prompt.
    messages = [
        user("Solve it."),
        {"role": "assistant", "content": "", "reasoning_content": "Long reasoning..."},
    ]
    rendered = render_chat_prompt(
        messages, continue_final_message=True, enable_thinking=False, preserve_thinking=True
    )
    assert rendered == "<|im_start|>user\nSolve it.<|im_end|>\n" + GEN_NO_THINK
    assert "Long reasoning" not in rendered


def test_continue_final_message_keeps_content_verbatim_untrimmed() -> None:
    messages = [user("Go."), {"role": "assistant", "content": "Partial answer "}]
    rendered = render_chat_prompt(messages, continue_final_message=True, enable_thinking=False)
    assert rendered.endswith("</think>\n\nPartial answer ")


def test_continue_final_message_with_a_user_last_is_a_plain_render() -> None:
    messages = [user("Hi")]
    assert render_chat_prompt(messages, continue_final_message=True) == render_chat_prompt(messages)


def test_continue_final_message_leaves_a_parts_list_message_closed() -> None:
    # SGLang only splits off string content; a message whose content is a parts list stays in
    # the conversation, closed, and the generation prompt follows it.
    messages = [user("Hi"), {"role": "assistant", "content": [text("Hel")]}]
    assert render_chat_prompt(messages, continue_final_message=True, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHel<|im_end|>\n" + GEN_NO_THINK
    )


def test_trailing_assistant_without_continue_becomes_a_user_turn() -> None:
    messages = [user("Hi"), {"role": "assistant", "content": "Hello", "reasoning_content": "R"}]
    assert render_chat_prompt(messages, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n" + GEN_NO_THINK
    )


def test_trailing_assistant_kept_when_no_generation_prompt() -> None:
    messages = [user("Hi"), {"role": "assistant", "content": "Hello", "reasoning_content": "R"}]
    assert render_chat_prompt(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nHello"
        "<|im_end|>\n"
    )


# ---------------------------------------------------------------------------------------------
# Determinism and prefix stability (what the runtime's prefix cache relies on)

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You help with weather."},
    user([text("Is it sunny here? "), image("data:image/png;base64,AAAA")]),
    {
        "role": "assistant",
        "content": "Checking.",
        "reasoning_content": "Use the tool.",
        "tool_calls": [call("c1", "get_weather", '{"city": "Paris", "days": 2}')],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
    {"role": "assistant", "content": "Yes, sunny.", "reasoning_content": "Report it."},
]


def test_two_renders_are_byte_identical() -> None:
    first = render_chat_prompt([*HISTORY, user("Thanks")], tools=[WEATHER, SEARCH])
    second = render_chat_prompt(
        [*(dict(m) for m in HISTORY), user("Thanks")], tools=[dict(WEATHER), dict(SEARCH)]
    )
    assert first.encode() == second.encode()


def test_render_does_not_mutate_its_inputs() -> None:
    messages = [*(dict(m) for m in HISTORY), user("x")]
    before = repr(messages)
    render_chat_prompt(messages, tools=[WEATHER])
    assert repr(messages) == before


def test_appending_a_turn_keeps_the_earlier_render_as_prefix_with_preserve_thinking() -> None:
    earlier = render_chat_prompt(
        HISTORY, tools=[WEATHER], add_generation_prompt=False, preserve_thinking=True
    )
    later = render_chat_prompt(
        [*HISTORY, user("Tomorrow?")], tools=[WEATHER], preserve_thinking=True
    )
    assert later.startswith(earlier)
    assert later[len(earlier) :] == "<|im_start|>user\nTomorrow?<|im_end|>\n" + GEN_THINK


def test_appending_a_user_turn_drops_reasoning_of_the_finished_loop() -> None:
    earlier = render_chat_prompt(HISTORY, tools=[WEATHER], add_generation_prompt=False)
    later = render_chat_prompt([*HISTORY, user("Tomorrow?")], tools=[WEATHER])
    assert not later.startswith(earlier)
    # Up to the dropped think blocks the earlier render is still a prefix.
    stripped = earlier.replace("<think>\nUse the tool.\n</think>\n\n", "").replace(
        "<think>\nReport it.\n</think>\n\n", ""
    )
    assert later.startswith(stripped)


def test_prompt_plus_model_output_is_a_prefix_of_the_next_prompt() -> None:
    # Thinking on: the model writes its reasoning, </think>, the answer and <|im_end|>. With
    # the reasoning sent back and preserve_thinking, the next prompt starts with exactly that.
    first = render_chat_prompt([user("Hi")], preserve_thinking=True)
    raw_output = "The user greets.\n</think>\n\nHello!"
    turn = {"role": "assistant", "content": "\n\nHello!", "reasoning_content": "The user greets.\n"}
    second = render_chat_prompt([user("Hi"), turn, user("Bye")], preserve_thinking=True)
    assert second.startswith(first + raw_output + "<|im_end|>\n")


def test_tool_loop_step_output_is_a_prefix_of_the_next_step() -> None:
    first = render_chat_prompt([user("Weather?")], tools=[WEATHER])
    raw_output = (
        "Need data.\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n"
        "<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
    )
    turn = {
        "role": "assistant",
        "content": "\n\nLet me check.\n\n",
        "reasoning_content": "Need data.\n",
        "tool_calls": [call("c1", "get_weather", '{"city": "Paris"}')],
    }
    second = render_chat_prompt(
        [user("Weather?"), turn, {"role": "tool", "tool_call_id": "c1", "content": "Sunny"}],
        tools=[WEATHER],
    )
    assert second.startswith(first + raw_output + "<|im_end|>\n")


# ---------------------------------------------------------------------------------------------
# Rejected conversations


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "No messages"),
        ([{"role": "system", "content": "s"}], "No user query"),
        (
            [user("a"), {"role": "system", "content": "s"}],
            "System message must be at the beginning",
        ),
        (
            [{"role": "system", "content": [image()]}, user("a")],
            "System message cannot contain images",
        ),
        ([{"role": "developer", "content": "d"}, user("a")], "Unexpected message role"),
        (
            [
                user("a"),
                {"role": "assistant", "content": "", "tool_calls": [call("c", "f", "{bad")]},
            ],
            "valid JSON",
        ),
        (
            [
                user("a"),
                {"role": "assistant", "content": "", "tool_calls": [call("c", "f", "[1]")]},
            ],
            "JSON object",
        ),
        ([user([{"type": "input_audio", "input_audio": {}}])], "unsupported content part"),
    ],
)
def test_invalid_conversations_raise(messages: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        render_chat_prompt(messages, add_generation_prompt=False)


def test_chat_template_error_is_a_value_error() -> None:
    assert issubclass(ChatTemplateError, ValueError)


def test_template_file_lives_in_the_repo_templates_folder() -> None:
    assert TEMPLATE_PATH.is_file()
    assert TEMPLATE_PATH.parent.name == "templates"
    assert TEMPLATE_PATH.name == "qwen3_6_chat.jinja"
