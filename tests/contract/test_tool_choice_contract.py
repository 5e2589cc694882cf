"""The simulator's forced `tool_choice` answers, against the grammar SGLang 0.5.23 builds.

For "required" and a named function, serving_chat `_process_messages` asks the qwen3_coder
`FunctionCallParser` for `get_structure_constraint(tool_choice, parallel_tool_calls,
thinking_mode=False)` (False: with `--reasoning-parser` the reasoner grammar owns the reasoning
and hands over at `</think>`). Every answer the simulator lets through under a forced choice
(`tests.sglang_sim.generation.forced_tool_answer`) must be accepted by that grammar, compiled by
xgrammar as SGLang compiles it; and the simulator must not rewrite an answer the grammar already
accepts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.contract import reference
from tests.contract.corpus import SEARCH, SERVER_DEFAULTS, TIME, WEATHER
from tests.sglang_sim.generation import forced_tool_answer

pytestmark = pytest.mark.contract

PARIS = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)
BAD_DAYS = PARIS.replace("\n3\n", "\nsoon\n")  # not an integer: outside the grammar
NOW = "<tool_call>\n<function=get_time>\n\n</function>\n</tool_call>"  # no arguments

SCRIPTS = {
    "plain_text": "It is sunny today.",
    "empty": "",
    "call": PARIS,
    "text_then_call": "Let me check.\n\n" + PARIS,
    "call_then_text": PARIS + "\n\nDone.",
    "two_calls": PARIS + "\n" + NOW,
    "invalid_arguments": BAD_DAYS,
    "call_to_other_tool": NOW,
    "call_then_bad_call": PARIS + "\n" + BAD_DAYS,
    "call_then_think_tag": PARIS + "\nmore </think> text",
    "misframed_call": PARIS.replace("</parameter>\n</function>", "</parameter></function>"),
}
NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
NAMED_SEARCH = {"type": "function", "function": {"name": "search"}}
CHOICES: dict[str, Any] = {
    "required": "required",
    "named_weather": NAMED_WEATHER,
    "named_search": NAMED_SEARCH,
}


def _grammar(choice: Any, parallel: bool) -> Any:
    import xgrammar

    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "tools": [WEATHER, TIME, SEARCH],
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
    }
    request = reference.prepared_request(body, SERVER_DEFAULTS)
    parser_module = reference._mod("sglang.srt.function_call.function_call_parser")
    parser = parser_module.FunctionCallParser(
        reference.effective_tools(request), reference.TOOL_CALL_PARSER
    )
    kind, tag = parser.get_structure_constraint(
        request.tool_choice,
        parallel_tool_calls=request.parallel_tool_calls,
        thinking_mode=False,
    )
    assert kind == "structural_tag"
    return xgrammar.Grammar.from_structural_tag(tag)


def _accepts(grammar: Any, text: str) -> bool:
    from xgrammar.testing import _is_grammar_accept_string

    return bool(_is_grammar_accept_string(grammar, text))


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "single"])
@pytest.mark.parametrize("choice_name", list(CHOICES))
@pytest.mark.parametrize("script_name", list(SCRIPTS))
def test_forced_answers_are_inside_sglangs_tool_call_grammar(
    script_name: str, choice_name: str, parallel: bool
) -> None:
    choice, script = CHOICES[choice_name], SCRIPTS[script_name]
    grammar = _grammar(choice, parallel)
    answer = forced_tool_answer(
        script, tools=[WEATHER, TIME, SEARCH], choice=choice, parallel=parallel
    )
    assert _accepts(grammar, answer), answer
    if _accepts(grammar, script):
        assert answer == script  # what the grammar allows is left as the script wrote it
