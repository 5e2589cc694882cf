"""`response_format` as SGLang 0.5.23 applies it: a JSON grammar on the answer.

protocol.py `to_sampling_params`: `json_schema` (strict true or unset; a plain chat template
never sees the format, so strict false is constrained too) becomes the request's `json_schema`
grammar, `json_object` becomes `{"type": "object"}`. With a reasoning parser the grammar is a
`ReasonerGrammarObject` (constrained/reasoner_grammar_backend.py): it starts after `</think>`
when the request thinks, at the first token otherwise. So the answer is always JSON that fits;
it can still be cut short by `max_tokens`, and the reasoning is free text.

The simulator does not sample, so a scripted answer that does not fit is replaced by the
smallest value the schema allows (as if the grammar had steered the model there); one that
fits is kept as written. `Rule.ignore_response_format` reproduces a runtime that does not
apply the grammar, to script the failures cascade must catch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator

__all__ = ["format_error", "json_grammar", "smallest_value"]


def _schema(response_format: Mapping[str, Any]) -> dict[str, Any] | None:
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        return dict(schema) if isinstance(schema, Mapping) else None
    return None


def format_error(response_format: Any, tool_choice: Any) -> str | None:
    """The 400 SGLang gives for this response_format, or None (`_validate_request`,
    protocol.py's tool-constraint check)."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        return "response_format.type must be one of 'text', 'json_object', 'json_schema'."
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            return "response_format.json_schema.name: Field required"
        if spec.get("schema") is None:
            return "schema_ is required for json_schema response format request."
    if kind != "text" and (tool_choice == "required" or isinstance(tool_choice, Mapping)):
        return (
            "tool_choice 'required' or a named tool cannot be combined with response_format, "
            "regex, or ebnf: the tool-call constraint and the output constraint cannot both be "
            "honored."
        )
    return None


def smallest_value(schema: Mapping[str, Any]) -> Any:
    """A small value valid for common schemas: required properties only, empty strings and
    arrays (or their minimum length), zeros, the first enum value or the const."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return smallest_value(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        required = schema.get("required", [])
        return {name: smallest_value(properties.get(name, {})) for name in required}
    if kind == "array":
        item = smallest_value(schema.get("items") or {})
        return [item for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "x" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def json_grammar(response_format: Any) -> Callable[[str], str] | None:
    """The answer grammar of a JSON response_format, or None for none or `text`."""
    if not isinstance(response_format, Mapping):
        return None
    schema = _schema(response_format)
    if schema is None:
        return None
    validator = Draft202012Validator(schema)

    def shape(answer: str) -> str:
        try:
            value = json.loads(answer)
        except ValueError:
            value = None
        else:
            if validator.is_valid(value):
                return answer
        return json.dumps(smallest_value(schema))

    return shape
