"""Structured answers: a run whose answer must be JSON (`response_format` json_object/json_schema).

Every door translates its own field into the chat `response_format` (Responses `text.format`,
Ollama `format`, batch jobs' schemas), and the loop hands each answer to one `StructuredAnswer`,
so all doors behave alike. Contracts:

- the format goes to the runtime only on steps that offer no tool call (no tools, or
  `tool_choice: "none"`). SGLang refuses a response_format with a forcing tool_choice, and
  under "auto" its JSON grammar would keep the model from calling tools at all. So with tools,
  the tools run first without the format; an answer that comes without a tool call is a draft:
  used when it already is valid, else dropped and asked for again with the format and no tools;
- with thinking on, the format is sent with the thinking request as it is: SGLang starts the
  grammar only after `</think>` (its reasoner grammar), so the budget goes to reasoning and the
  JSON follows it;
- cascade checks every answer itself: it must parse as JSON (an object for json_object) and,
  for json_schema, validate against the schema (jsonschema). A valid answer passes through
  unchanged (the text as the runtime sent it);
- an answer that fails (cut off at the token limit, not JSON, not matching, empty because the
  budget ran out, or JSON written inside the reasoning) is retried once: the run's messages plus
  a short corrective user message, then the failed step's reasoning closed as the budget guard
  closes it (`closed_thinking`) and continued with thinking off, so the model goes straight to
  the answer under the grammar without spending reasoning again. The stored history gets only
  the accepted answer (with the first attempt's reasoning), never the failed try or the hint;
- a retry that fails too ends the run with `InvalidJsonAnswerError` (`invalid_json_answer`),
  which keeps the raw answer text (and reasoning) for the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from app.agent.models import Final
from app.errors import InvalidJsonAnswerError, InvalidRequestError
from app.runtime.guard import closed_thinking
from app.runtime.models import RuntimeRequest

RETRY_HINT = (
    "[cascade] Your answer could not be used: {problem}. Answer again with only the JSON "
    "value{what}, as the answer (not in the reasoning), with no other text."
)
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A JSON object or array opening, for telling "JSON inside the reasoning" apart from prose.
_JSON_START_RE = re.compile(r"[{\[]")


@dataclass(frozen=True)
class AnswerFormat:
    """A parsed `response_format` that asks for JSON."""

    kind: Literal["json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | None = None

    def problem(self, text: str) -> str | None:
        """Why `text` is not an acceptable answer, or None when it is."""
        stripped = text.strip()
        if not stripped:
            return "the answer was empty"
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return "the answer is not valid JSON"
        if self.kind == "json_object" or self.schema is None:
            return None if isinstance(value, dict) else "the answer is JSON but not an object"
        error = best_match(validator_for(self.schema)(self.schema).iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return f"the answer does not match the schema at {where}: {error.message[:200]}"


def answer_format(response_format: dict[str, Any] | None) -> AnswerFormat | None:
    """The JSON format a request asks for (None for none or `text`); 400 when malformed."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return AnswerFormat("json_object")
    if kind != "json_schema":
        raise _bad("response_format.type must be text, json_object or json_schema")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise _bad("a json_schema response_format needs a json_schema object")
    name, schema = spec.get("name"), spec.get("schema")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _bad("json_schema.name must be 1-64 letters, digits, '_' or '-'")
    if not isinstance(schema, dict):
        raise _bad("json_schema.schema must be a JSON schema object")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise _bad(f"json_schema.schema is not a valid JSON schema: {exc.message[:200]}") from None
    return AnswerFormat("json_schema", name, schema)


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="response_format")


def failure(final: Final, fmt: AnswerFormat) -> str | None:
    """Why a step's final answer fails the format (the most telling reason), or None."""
    content = final.content
    if not content.strip():
        reasoning = final.reasoning or ""
        if _JSON_START_RE.search(reasoning) and (final.finish_reason != "length"):
            return "the JSON was written inside the reasoning, and no answer followed it"
        if final.finish_reason == "length":
            return "no answer was written before the token limit (the budget ran out)"
        return "the answer was empty"
    problem = fmt.problem(content)
    if problem is not None and final.finish_reason == "length":
        return "the answer was cut off at the token limit (keep it shorter)"
    return problem


@dataclass
class _Retry:
    problem: str
    reasoning: str | None


class StructuredAnswer:
    """One run's structured-answer state: which step gets the format, the retry, the verdict."""

    def __init__(self, fmt: AnswerFormat) -> None:
        self.format = fmt
        self.answering = False  # tools are over: the next steps carry the format, no tools
        self.retry: _Retry | None = None
        self.retried = False
        self.sent_format = False  # the last request carried the format
        self.first_reasoning: str | None = None  # of the attempt the retry continued

    @classmethod
    def for_request(cls, response_format: dict[str, Any] | None) -> StructuredAnswer | None:
        fmt = answer_format(response_format)
        return cls(fmt) if fmt is not None else None

    def shape(self, req: RuntimeRequest) -> RuntimeRequest:
        """The request for the next step: without the format while tools may be called, with
        it (and no tools) once answering, plus the retry's hint and closed reasoning."""
        tool_step = bool(req.tools) and req.tool_choice != "none" and not self.answering
        if tool_step:
            self.sent_format = False
            sampling = req.sampling.model_copy(update={"response_format": None})
            return req.model_copy(update={"sampling": sampling})
        self.sent_format = True
        update: dict[str, Any] = {}
        if self.answering:
            update = {"tools": None, "tool_choice": None}
        if self.retry is not None:
            what = " matching the schema" if self.format.kind == "json_schema" else " (an object)"
            hint = RETRY_HINT.format(problem=self.retry.problem, what=what)
            messages = [*req.messages, {"role": "user", "content": hint}]
            if self.retry.reasoning:
                # As the budget guard continues an answer: the reasoning rides closed in the
                # content, continued with thinking off, so the grammar starts at once.
                messages.append(
                    {"role": "assistant", "content": closed_thinking(self.retry.reasoning)}
                )
                update |= {
                    "thinking": False,
                    "thinking_budget": None,
                    "preserve_thinking": True,
                    "continue_final_message": True,
                }
            update["messages"] = messages
            self.retry = None
        return req.model_copy(update=update)

    def judge(self, final: Final, produced: list[dict[str, Any]]) -> Final | None:
        """The run's answer when `final` is acceptable; None when another step must follow
        (a draft to redo with the format, or the one retry). Raises `InvalidJsonAnswerError`
        when the retry failed too. `produced` ends with `final`'s assistant message; a failed
        attempt is taken out of it."""
        problem = failure(final, self.format)
        if problem is None:
            return self._accepted(final, produced)
        if not self.sent_format:
            # A draft written while tools were offered: ask again, with the format.
            produced.pop()
            self.answering = True
            return None
        if not self.retried:
            produced.pop()
            self.retried = True
            self.first_reasoning = final.reasoning
            self.retry = _Retry(problem, final.reasoning)
            return None
        raise InvalidJsonAnswerError(
            f"the model's answer is not valid JSON for the requested format, after one "
            f"retry: {problem}",
            answer=final.content,
            reasoning=final.reasoning,
        )

    def _accepted(self, final: Final, produced: list[dict[str, Any]]) -> Final:
        if not self.retried:
            return final
        # The retry continued the first attempt's reasoning: that is the answer's reasoning.
        reasoning = final.reasoning or self.first_reasoning
        message = produced[-1]
        message["reasoning_content"] = reasoning
        message.setdefault("meta", {})["structured_retry"] = True
        return Final(final.content, reasoning, final.finish_reason)
