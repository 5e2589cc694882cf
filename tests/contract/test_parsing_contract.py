"""The simulator's parser (`tests.sglang_sim.parsing`) against SGLang 0.5.23's own parsers.

For every corpus case: the non-streaming split equals what serving_chat builds with SGLang's
`ReasoningParser("qwen3")` and qwen3_coder `FunctionCallParser`; the streaming deltas equal
SGLang's, delta for delta, for several chunkings of the same text; and where SGLang's own
streaming and non-streaming results differ, the corpus says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.contract import reference
from tests.contract.corpus import CASES, SERVER_DEFAULTS, THINKING_ON, Case
from tests.sglang_sim.parsing import (
    Delta,
    RequestParsing,
    SplitResult,
    reasoning_starts_in_think,
)

pytestmark = pytest.mark.contract

# Special tokens come out of the detokenizer whole; other text in word/space/symbol pieces.
_TOKENISH = re.compile(r"<think>|</think>|<tool_call>|</tool_call>| ?\w+|\s+|[^\w\s]")


def _tokens(text: str) -> list[str]:
    pieces = _TOKENISH.findall(text)
    assert "".join(pieces) == text
    return pieces


def _groups(pieces: list[str], size: int) -> list[str]:
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)] or [""]


CHUNKINGS: dict[str, Callable[[str], list[str]]] = {
    "whole": lambda text: [text],
    "chars": lambda text: list(text) or [""],
    "tokens": lambda text: _tokens(text) or [""],
    # Speculative decoding (NEXTN, 4 draft tokens) hands out up to 4 tokens per step.
    "spec_steps": lambda text: _groups(_tokens(text), 4),
    "slices7": lambda text: [text[i : i + 7] for i in range(0, len(text), 7)] or [""],
    # The last decode step carries only the finish reason.
    "tokens_then_empty_finish": lambda text: [*_tokens(text), ""],
}

_CASE_IDS = [case.name for case in CASES]


def _ours_stream(case: Case, pieces: list[str]) -> list[Delta]:
    splitter = RequestParsing.from_request(case.body(), case.defaults).splitter()
    deltas: list[Delta] = []
    for piece in pieces[:-1]:
        deltas.extend(splitter.feed(piece))
    deltas.extend(splitter.finish(pieces[-1]))
    return deltas


def _collapse(deltas: list[Delta]) -> tuple[str | None, str, list[tuple[int, str | None, str]]]:
    """Concatenated reasoning, content, and per call (index, name, arguments)."""
    reasoning = "".join(d.reasoning_content or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    calls: dict[int, list[Any]] = {}
    for delta in deltas:
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, [call.name, ""])
            entry[0] = entry[0] or call.name
            entry[1] += call.arguments
    return (
        reasoning or None,
        content,
        [(index, name, args) for index, (name, args) in sorted(calls.items())],
    )


def _as_collapsed(
    result: SplitResult,
) -> tuple[str | None, str, list[tuple[int, str | None, str]]]:
    calls: list[tuple[int, str | None, str]] = [
        (i, call.name, call.arguments) for i, call in enumerate(result.tool_calls)
    ]
    return result.reasoning_content, result.content, calls


def _plain(result: SplitResult) -> tuple[str | None, str, list[tuple[str, str]]]:
    return (
        result.reasoning_content,
        result.content,
        [(call.name, call.arguments) for call in result.tool_calls],
    )


def test_corpus_covers_enough_outputs() -> None:
    assert len(CASES) >= 40
    assert len(set(_CASE_IDS)) == len(CASES)
    with_calls = [case for case in CASES if "<tool_call>" in case.output and case.tools]
    assert len(with_calls) >= 20


@pytest.mark.parametrize("case", CASES, ids=_CASE_IDS)
def test_request_decisions_match_sglang(case: Case) -> None:
    body = case.body()
    request = reference.prepared_request(body, case.defaults)
    parser = reference.reasoning_parser_for(request, stream=True)
    expected_in_think = None if parser is None else parser.detector._in_reasoning
    ours = RequestParsing.from_request(body, case.defaults)
    assert reasoning_starts_in_think(body, case.defaults) == expected_in_think
    assert ours.in_think == expected_in_think
    assert ours.stream_reasoning == request.stream_reasoning
    assert (bool(ours.tools) and ours.tool_choice != "none") == reference.tool_parsing_active(
        request
    )


@pytest.mark.parametrize("case", CASES, ids=_CASE_IDS)
def test_split_output_matches_sglang_non_streaming(case: Case) -> None:
    expected = reference.split(case.body(), case.defaults, case.output)
    ours = RequestParsing.from_request(case.body(), case.defaults).split(case.output)
    assert _plain(ours) == _plain(expected)


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("case", CASES, ids=_CASE_IDS)
def test_stream_splitter_matches_sglang_streaming(case: Case, chunking: str) -> None:
    pieces = CHUNKINGS[chunking](case.output)
    assert "".join(pieces) == case.output
    if case.stream_raises:
        with pytest.raises(TypeError):
            reference.stream(case.body(), case.defaults, pieces)
        with pytest.raises(TypeError):
            _ours_stream(case, pieces)
        return
    expected = reference.stream(case.body(), case.defaults, pieces)
    ours = _ours_stream(case, pieces)
    # Same text per field first (the clearer failure), then the same chunks in the same order.
    assert _collapse(ours) == _collapse(expected)
    assert ours == expected
    for delta in ours:
        fields = [delta.reasoning_content, delta.content, delta.tool_calls]
        assert sum(value is not None for value in fields) == 1


_STREAMABLE = [case for case in CASES if not case.stream_raises]


@pytest.mark.parametrize("case", _STREAMABLE, ids=[case.name for case in _STREAMABLE])
def test_sglang_stream_and_non_stream_differ_only_where_documented(case: Case) -> None:
    whole = _as_collapsed(reference.split(case.body(), case.defaults, case.output))
    streamed = {
        name: _collapse(reference.stream(case.body(), case.defaults, chunk(case.output)))
        for name, chunk in CHUNKINGS.items()
    }
    differing = sorted(name for name, result in streamed.items() if result != whole)
    if case.stream_differs is None:
        assert differing == []
    else:
        assert differing, f"documented difference not seen: {case.stream_differs}"


def test_unserialisable_value_drops_all_calls_non_streaming() -> None:
    (case,) = [case for case in CASES if case.name == "unserialisable_literal_value"]
    expected = reference.split(case.body(), case.defaults, case.output)
    assert expected.tool_calls == []
    assert expected.content == case.output
    assert _plain(RequestParsing.from_request(case.body(), case.defaults).split(case.output)) == (
        _plain(expected)
    )


# ----------------------------------------------------------- the request → in_think decision

_MESSAGES = [{"role": "user", "content": "Q"}]


def _continue(content: Any, role: str = "assistant") -> dict[str, Any]:
    return {
        "continue_final_message": True,
        "messages": [*_MESSAGES, {"role": role, "content": content}],
    }


REQUEST_VARIANTS: list[tuple[str, dict[str, Any], Mapping[str, Any]]] = [
    ("defaults_off", {}, SERVER_DEFAULTS),
    ("defaults_on", {}, THINKING_ON),
    ("no_defaults", {}, {}),
    ("kwargs_on", {"chat_template_kwargs": {"enable_thinking": True}}, SERVER_DEFAULTS),
    ("kwargs_off", {"chat_template_kwargs": {"enable_thinking": False}}, THINKING_ON),
    ("kwargs_empty", {"chat_template_kwargs": {}}, {}),
    ("kwargs_null", {"chat_template_kwargs": None}, SERVER_DEFAULTS),
    ("kwargs_string_false", {"chat_template_kwargs": {"enable_thinking": "false"}}, {}),
    ("kwargs_other_key_only", {"chat_template_kwargs": {"preserve_thinking": True}}, {}),
    ("effort_none", {"reasoning_effort": "none"}, THINKING_ON),
    ("effort_low", {"reasoning_effort": "low"}, SERVER_DEFAULTS),
    ("effort_float", {"reasoning_effort": 0.3}, SERVER_DEFAULTS),
    (
        "effort_with_explicit_off",
        {"reasoning_effort": "max", "chat_template_kwargs": {"enable_thinking": False}},
        {},
    ),
    ("effort_in_kwargs", {"chat_template_kwargs": {"reasoning_effort": "none"}}, {}),
    ("reasoning_enabled", {"reasoning": {"enabled": True}}, SERVER_DEFAULTS),
    ("reasoning_enabled_string", {"reasoning": {"enabled": "yes"}}, SERVER_DEFAULTS),
    ("reasoning_enabled_false", {"reasoning": {"enabled": False}}, THINKING_ON),
    ("reasoning_effort_none", {"reasoning": {"effort": "none"}}, THINKING_ON),
    (
        "reasoning_effort_beats_top_level",
        {"reasoning": {"effort": "high"}, "reasoning_effort": "none"},
        {},
    ),
    ("separate_reasoning_off", {"separate_reasoning": False}, THINKING_ON),
    ("continue_plain", _continue("partial answer"), THINKING_ON),
    ("continue_open_think", _continue("<think>\nhalf"), SERVER_DEFAULTS),
    ("continue_closed_think", _continue("<think>r</think>a"), THINKING_ON),
    ("continue_close_only", _continue("r</think>"), THINKING_ON),
    ("continue_parts", _continue([{"type": "text", "text": "<think>"}]), SERVER_DEFAULTS),
    ("continue_role_case", _continue("<think>x", role="Assistant"), SERVER_DEFAULTS),
    (
        "not_continuing",
        {"messages": [*_MESSAGES, {"role": "assistant", "content": "<think>x"}]},
        SERVER_DEFAULTS,
    ),
    ("continue_last_is_user", {"continue_final_message": True}, SERVER_DEFAULTS),
]


@pytest.mark.parametrize(
    ("fields", "defaults"),
    [(fields, defaults) for _, fields, defaults in REQUEST_VARIANTS],
    ids=[name for name, _, _ in REQUEST_VARIANTS],
)
def test_reasoning_starts_in_think_matches_sglang(
    fields: dict[str, Any], defaults: Mapping[str, Any]
) -> None:
    body = {"model": "m", "messages": _MESSAGES, **fields}
    request = reference.prepared_request(body, defaults)
    parser = reference.reasoning_parser_for(request, stream=True)
    expected = None if parser is None else parser.detector._in_reasoning
    assert reasoning_starts_in_think(body, defaults) == expected


# -------------------------------------------------------- assumptions about SGLang's set-up


def test_qwen3_detector_is_configured_as_parsing_assumes() -> None:
    parser = reference.reasoning_parser_for(
        reference.prepared_request({"model": "m", "messages": _MESSAGES}, THINKING_ON),
        stream=True,
    )
    assert parser is not None
    detector = parser.detector
    assert (detector.think_start_token, detector.think_end_token) == ("<think>", "</think>")
    assert detector.tool_start_token == "<tool_call>"
    assert detector.tool_start_at_line_start is False
    assert detector.think_start_self_label == ""
    assert detector.reasoning_default == "enable_thinking"


@pytest.mark.parametrize(
    "template",
    [
        pytest.param(None, id="project_template"),
        # The generation-prompt test of the Qwen3 / Qwen3.5 family's shipped templates.
        pytest.param(
            "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
            "{%- if enable_thinking is defined and enable_thinking is false %}"
            "{{- '<think>\\n\\n</think>\\n\\n' }}{%- else %}{{- '<think>\\n' }}{%- endif %}"
            "{%- endif %}",
            id="upstream_style_template",
        ),
    ],
)
def test_template_reasoning_detection_matches_parsing_assumption(template: str | None) -> None:
    """`reasoning_starts_in_think` assumes thinking is on unless `enable_thinking is False`:
    true when SGLang detects no toggle (parser default) or an `enable_thinking` toggle that
    defaults on, and when the template does not force reasoning."""
    detection = reference.template_detection()
    if template is None:
        force, config = reference.template_reasoning()
    else:
        force, config = detection.detect_reasoning_pattern(template)
    assert force is False
    if config is not None:
        assert (config.toggle_param, config.default_enabled, config.special_case) == (
            "enable_thinking",
            True,
            None,
        )
