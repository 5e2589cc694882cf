"""Token-level decoding of a scripted output: thinking budget, stop strings, max_tokens, EOS.

`plan_output` turns the script's raw text into the tokens the model emits, applying strict
thinking's budget the way SGLang's `ReasonerGrammarObject` does (after N reasoning tokens only
`</think>` is allowed, then decoding goes on with the answer). `Decoder` then emits those
tokens one decode step at a time and decides when generation finishes, in the order
`Req.check_finished` (managers/schedule_batch.py) checks: stop string, then EOS token, then
the `max_new_tokens` cap. The simulator paces the steps; this module has no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tests.sglang_sim.tokens import tokenize

__all__ = ["EOS_TOKEN_ID", "THINK_END", "Decoder", "Finish", "Plan", "Step", "plan_output"]

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
    text: str, *, thinking: bool, thinking_budget: int | None, enforce_budget: bool
) -> Plan:
    """Tokenize the scripted `text`; with thinking on and a budget, enforce strict thinking.

    With a budget N (>= 0) and more than N reasoning tokens before `</think>` (or no `</think>`
    at all and more than N tokens), the output becomes the first N reasoning tokens, a forced
    `</think>`, then the script's text after its own `</think>` (nothing if it has none).
    A negative budget means no budget, as SGLang clamps it to -1.
    """
    head, sep, tail = text.partition(THINK_END)
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
        tokens = [*kept, THINK_END, *(answer if sep else [])]
        think_end = len(kept)
        forced = True
    return Plan(tokens=tuple(tokens), think_end=think_end, thinking=thinking, budget_forced=forced)


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
