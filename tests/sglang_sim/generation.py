"""Token-level decoding of a scripted output: thinking budget, stop strings, max_tokens, EOS.

`plan_output` turns the script's raw text into the tokens the model emits, applying strict
thinking's budget the way SGLang's `ReasonerGrammarObject` does (after N reasoning tokens only
`</think>` is allowed, then decoding goes on with the answer) and, when the request forces a
tool call, the tool-call grammar to the answer (`forced_tool_answer`). `Decoder` then emits those
tokens one decode step at a time and decides when generation finishes, in the order
`Req.check_finished` (managers/schedule_batch.py) checks: stop string, then EOS token, then
the `max_new_tokens` cap. The simulator paces the steps; this module has no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import Draft202012Validator

from tests.sglang_sim.parsing import _block_calls, _prepared_tools
from tests.sglang_sim.tokens import tokenize

__all__ = [
    "EOS_TOKEN_ID",
    "THINK_END",
    "Decoder",
    "Finish",
    "Plan",
    "Step",
    "forced_tool_answer",
    "plan_output",
]

THINK_END = "</think>"
# Token id of `<|im_end|>` in the Qwen3.5/3.6 vocabulary, reported as `matched_stop` when the
# model stops by itself. Unconfirmed: derived from `<think>` = 248068 and `<tool_call>` = 248058
# (the Qwen3.5/3.6 vocabulary) with the Qwen3 layout of the special tokens.
EOS_TOKEN_ID = 248046

FinishType = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class Finish:
    """A finish reason as SGLang's meta_info carries it: `type` and `matched` stop."""

    type: FinishType
    matched: int | str | None = None


@dataclass(frozen=True)
class Plan:
    """The tokens the model emits (EOS excluded) and where its reasoning ends.

    `think_end` is the index of the `</think>` token, None when the output never closes its
    reasoning. `thinking` says whether the runtime counts reasoning tokens for this request
    (SGLang's `require_reasoning`: thinking is on). `budget_forced` is True when strict
    thinking cut the reasoning short.
    """

    tokens: tuple[str, ...]
    think_end: int | None
    thinking: bool
    budget_forced: bool

    def reasoning_tokens(self, emitted: int) -> int:
        """`reasoning_tokens` after `emitted` tokens: every token up to and including `</think>`."""
        if not self.thinking:
            return 0
        if self.think_end is None:
            return emitted
        return min(emitted, self.think_end + 1)


def plan_output(
    text: str,
    *,
    thinking: bool,
    thinking_budget: int | None,
    enforce_budget: bool,
    shape_answer: Callable[[str], str] | None = None,
) -> Plan:
    """Tokenize the scripted `text`; with thinking on and a budget, enforce strict thinking.

    With a budget N (>= 0) and more than N reasoning tokens before `</think>` (or no `</think>`
    at all and more than N tokens), the output becomes the first N reasoning tokens, a forced
    `</think>`, then the script's text after its own `</think>` (nothing if it has none).
    A negative budget means no budget, as SGLang clamps it to -1.

    `shape_answer` is a grammar on the answer (the text after the reasoning; the whole text
    with thinking off): SGLang's reasoner grammar hands over to the request's grammar at
    `</think>`, so it applies once the answer is reached, also after a forced `</think>`.
    """
    if shape_answer is not None and not thinking:
        text = shape_answer(text)
    head, sep, tail = text.partition(THINK_END)
    if shape_answer is not None and thinking and sep:
        tail = shape_answer(tail)
    reasoning = tokenize(head)
    answer = tokenize(tail)
    if not sep:
        tokens, think_end = reasoning, None
    else:
        tokens, think_end = [*reasoning, THINK_END, *answer], len(reasoning)
    forced = False
    budget = thinking_budget if thinking and enforce_budget else None
    if budget is not None and 0 <= budget < len(reasoning):
        kept = reasoning[:budget]
        if not sep and shape_answer is not None:
            answer = tokenize(shape_answer(""))
        tokens = [*kept, THINK_END, *(answer if sep or shape_answer is not None else [])]
        think_end = len(kept)
        forced = True
    return Plan(tokens=tuple(tokens), think_end=think_end, thinking=thinking, budget_forced=forced)


# A call exactly as xgrammar's `qwen_3_coder` structural tag frames it: `<tool_call>\n<function=`
# NAME `>\n`, the parameters in qwen_xml style joined by newlines (none at all for no
# arguments), then `\n</function>\n</tool_call>`.
_PARAMETER = r"<parameter=[^>\n]+>\n.*?\n</parameter>"
_FRAMED_CALL_RE = re.compile(
    rf"<tool_call>\n<function=[^>\n]+>\n(?:{_PARAMETER}(?:\n{_PARAMETER})*)?\n</function>\n"
    r"</tool_call>",
    re.DOTALL,
)
_TRIGGER = "<tool_call>\n<function="
_EXCLUDED = ("<think>", THINK_END)  # never in the free text between calls


def forced_tool_answer(
    answer: str, *, tools: Sequence[Mapping[str, Any]], choice: Any, parallel: bool
) -> str:
    """The answer a forced `tool_choice` lets through: what the model could emit under it.

    SGLang 0.5.23 (`serving_chat._process_messages` → `FunctionCallParser
    .get_structure_constraint` → xgrammar's `qwen_3_coder` structural tag, applied after the
    reasoning) constrains the answer so that:

    - `"required"`: it opens with a call to one of the offered tools (no text before it), whose
      arguments match that tool's schema; with `parallel_tool_calls` text may follow, and any
      further `<tool_call>` must be such a call too; without it the grammar ends after the
      first call;
    - a named function (`{"type": "function", "function": {"name": N}}`): it is exactly one call
      to N, nothing before or after.

    The simulator keeps as much of the script as that allows: the answer from its first usable
    call on (the call alone for a named choice or without parallel calls), cut before anything
    after it the grammar would not allow. A script with no usable call gets a call to the
    first allowed tool (in request order) whose required parameters hold placeholder values
    (`default`, `const` or the first `enum` value, else `""`, `0`, `false`, `[]`, `{}` by
    type). Usable means framed as above, to an allowed tool, with arguments (converted as the
    qwen3_coder parser converts them) valid for its schema.
    """
    prepared = _prepared_tools(tools)
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        allowed = [t for t in prepared if _tool_name(t) == wanted]
        alone = True
    else:
        allowed = prepared
        alone = not parallel
    for found in _FRAMED_CALL_RE.finditer(answer):
        if _usable(found.group(0), allowed):
            if alone:
                return found.group(0)
            return found.group(0) + _allowed_rest(answer[found.end() :], allowed)
    return _placeholder_call(allowed[0]) if allowed else answer


def _allowed_rest(text: str, allowed: Sequence[Any]) -> str:
    """What may follow a first call under "required" with parallel calls: free text without
    think tags, and usable calls; cut at the first thing that is neither."""
    out, pos = "", 0
    while True:
        at = text.find(_TRIGGER, pos)
        free = text[pos : len(text) if at == -1 else at]
        cuts = [i for i in (free.find(tag) for tag in _EXCLUDED) if i != -1]
        if cuts:
            return out + free[: min(cuts)]
        out += free
        if at == -1:
            return out
        found = _FRAMED_CALL_RE.match(text, at)
        if found is None or not _usable(found.group(0), allowed):
            return out
        out += found.group(0)
        pos = found.end()


def _tool_name(tool: Any) -> Any:
    function = tool.get("function") if isinstance(tool, dict) else None
    return function.get("name") if isinstance(function, dict) else None


def _usable(block: str, allowed: Sequence[Any]) -> bool:
    calls = _block_calls(block, allowed)
    if len(calls) != 1:
        return False
    tool = next((t for t in allowed if _tool_name(t) == calls[0].name), None)
    if tool is None:
        return False
    schema = tool["function"].get("parameters") or {"type": "object"}
    return Draft202012Validator(schema).is_valid(json.loads(calls[0].arguments))


_PLACEHOLDERS: dict[str, Any] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
}


def _placeholder_call(tool: Any) -> str:
    parameters = tool["function"].get("parameters") or {}
    properties = parameters.get("properties") or {}
    rendered = []
    for name in parameters.get("required") or []:
        schema = properties.get(name) or {}
        if "default" in schema:
            value = schema["default"]
        elif "const" in schema:
            value = schema["const"]
        elif schema.get("enum"):
            value = schema["enum"][0]
        else:
            kind = schema.get("type")
            value = _PLACEHOLDERS.get(kind[0] if isinstance(kind, list) else kind, "")
        text = value if isinstance(value, str) else json.dumps(value)
        rendered.append(f"<parameter={name}>\n{text}\n</parameter>")
    inner = "\n".join(rendered)
    return f"<tool_call>\n<function={_tool_name(tool)}>\n{inner}\n</function>\n</tool_call>"


@dataclass(frozen=True)
class Step:
    """One decode step: the newly visible text (may be empty) and, on the last step, the finish."""

    text: str
    completion_tokens: int
    finish: Finish | None = None


class Decoder:
    """Emits a plan's tokens one step at a time, finishing like SGLang's scheduler.

    The visible text is trimmed at a matched stop string (`no_stop_trim` false) and, as
    SGLang's output streamer does, a step whose text ends with what could be the start of a
    stop string shows nothing until a later step settles it.
    """

    def __init__(self, plan: Plan, *, max_new_tokens: int, stops: list[str]) -> None:
        self.plan = plan
        self.max_new_tokens = max_new_tokens
        self.stops = [s for s in stops if s]
        self.count = 0
        self.generated = ""
        self.visible = 0
        self.finished: Finish | None = None

    @property
    def text(self) -> str:
        """The visible text so far."""
        return self.generated[: self.visible]

    def step(self) -> Step:
        """Decode one token (the script's next one, or EOS after the last)."""
        if self.finished is not None:
            raise RuntimeError("generation already finished")
        if self.count >= len(self.plan.tokens):
            # The model ends its turn: EOS wins over the length cap in the same step.
            self.count += 1
            return self._finish(Finish("stop", EOS_TOKEN_ID), len(self.generated))
        self.generated += self.plan.tokens[self.count]
        self.count += 1
        for stop in self.stops:
            pos = self.generated.find(stop)
            if pos != -1:
                return self._finish(Finish("stop", stop), pos)
        if self.count >= self.max_new_tokens:
            return self._finish(Finish("length"), len(self.generated))
        if any(_partial_suffix(self.generated, stop) for stop in self.stops):
            # output_streamer.py skips the step while the tail may begin a stop string.
            return self._advance(self.visible)
        return self._advance(len(self.generated))

    def abort(self) -> Step:
        """Finish now with `abort`; held-back text stays unsent, as in SGLang."""
        self.finished = Finish("abort")
        return Step(text="", completion_tokens=self.count, finish=self.finished)

    def _advance(self, end: int) -> Step:
        text = self.generated[self.visible : end]
        self.visible = max(self.visible, end)
        return Step(text=text, completion_tokens=self.count)

    def _finish(self, finish: Finish, end: int) -> Step:
        self.finished = finish
        step = self._advance(max(end, self.visible))
        return Step(text=step.text, completion_tokens=self.count, finish=finish)


def _partial_suffix(text: str, stop: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0
