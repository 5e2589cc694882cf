"""The Qwen3.6 chat template, rendered the way SGLang 0.5.23 renders it for a chat request.

`render_chat_prompt` gives the prompt text SGLang builds for `/v1/chat/completions` with this
model's Hugging Face chat template (`templates/qwen3_6_chat.jinja`). Besides the template itself
it reproduces the request handling SGLang does around it (serving_chat.py,
`_apply_jinja_template`): message content normalised, tool-call arguments parsed from JSON,
tools dumped through SGLang's pydantic models, and the final assistant message split off.

The template is compiled once, in a sandboxed environment configured like the one transformers
uses for chat templates (trim_blocks, lstrip_blocks, loop controls, a `tojson` that keeps key
order and non-ASCII text), so equal inputs give byte-identical prompts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from templates import TEMPLATES_DIR

__all__ = ["TEMPLATE_PATH", "ChatTemplateError", "render_chat_prompt"]

TEMPLATE_PATH = TEMPLATES_DIR / "qwen3_6_chat.jinja"

# Part types SGLang's content processing keeps (renamed to "image"/"video") and the ones it drops.
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_VIDEO_PARTS = frozenset({"video_url", "video"})
_TEXT_PARTS = frozenset({"text", "input_text"})
_DROPPED_PARTS = frozenset({"thinking", "reasoning"})


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered; SGLang answers such a request with a 400."""


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Same defaults as transformers' chat-template `tojson`: key order as given, non-ASCII kept,
    # json's default separators (", ", ": "), no HTML escaping (unlike Jinja's own filter).
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
    )


@cache
def _template() -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))


def render_chat_prompt(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    enable_thinking: bool = True,
    preserve_thinking: bool = False,
    continue_final_message: bool = False,
) -> str:
    """Render `messages` to the prompt text SGLang 0.5.23 feeds Qwen3.6.

    `messages` are OpenAI chat messages (dicts; content a string or a list of text/image_url/
    video_url parts; assistant messages may carry `reasoning_content` and `tool_calls` whose
    `function.arguments` is a JSON string or a dict). `tools` are OpenAI tool definitions; pass
    None when the request's tool_choice is "none" (SGLang then leaves them out of the prompt).

    Request handling reproduced from SGLang (serving_chat.py):
    - content None becomes ""; keys whose value is None are dropped (so a null
      `reasoning_content` counts as absent); image/video parts are reduced to placeholders;
      tool messages whose parts are all text are joined with single spaces.
    - string tool-call arguments are parsed; invalid JSON or a non-object raises.
    - tools are dumped as SGLang's `Tool` model dumps them: `type`, `function` (client key
      order, with a missing `description`/`parameters` as null) and `defer_loading` (null).
    - when `add_generation_prompt` or `continue_final_message` is set and the last message is an
      assistant message with string content: with `continue_final_message` it is removed, the
      rest rendered, and its content appended after the generation prompt (its
      `reasoning_content` and tool calls are NOT rendered; that is SGLang's behaviour, not the
      Hugging Face one); without it, it is turned into a user message with that content.

    `enable_thinking` picks the generation prompt (`<think>\\n` when on, an empty closed think
    block when off); `preserve_thinking` keeps the reasoning of all earlier assistant turns
    instead of only those after the last real user message.

    Raises ChatTemplateError for conversations the template or SGLang rejects (no user
    message, a system message not first, images in the system message, an unknown role, bad
    tool-call arguments).
    """
    prepared = [_prepare_message(message) for message in messages]
    assistant_prefix = ""
    if (add_generation_prompt or continue_final_message) and prepared:
        last = prepared[-1]
        content = last.get("content")
        if last.get("role") == "assistant" and isinstance(content, str):
            if continue_final_message:
                assistant_prefix = content
                prepared = prepared[:-1]
            else:
                prepared[-1] = {"role": "user", "content": content}
    template_tools = [_prepare_tool(tool) for tool in tools] if tools else None
    try:
        rendered = _template().render(
            messages=prepared,
            tools=template_tools,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
            preserve_thinking=preserve_thinking,
        )
    except (jinja2.TemplateError, TypeError) as exc:
        raise ChatTemplateError(str(exc)) from exc
    return rendered + assistant_prefix


def _prepare_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """One message as SGLang hands it to the template."""
    result = dict(message)
    content = result.get("content")
    if content is None:
        result["content"] = ""
    elif isinstance(content, list):
        result["content"] = _prepare_parts(content)
    role = result.get("role")
    if role == "tool" and isinstance(result["content"], list):
        parts: list[dict[str, Any]] = result["content"]
        if all(part.get("type") == "text" for part in parts):
            result["content"] = " ".join(str(part.get("text", "")) for part in parts)
    if role == "assistant" and isinstance(result.get("tool_calls"), list):
        result["tool_calls"] = [_prepare_tool_call(call) for call in result["tool_calls"]]
    return {key: value for key, value in result.items() if value is not None}


def _prepare_parts(parts: Sequence[Any]) -> list[dict[str, Any]]:
    prepared: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, Mapping):
            raise ChatTemplateError("content parts must be objects")
        kind = part.get("type")
        if kind in _IMAGE_PARTS:
            prepared.append({"type": "image"})
        elif kind in _VIDEO_PARTS:
            prepared.append({"type": "video"})
        elif kind in _TEXT_PARTS:
            prepared.append({"type": "text", "text": part.get("text", "")})
        elif kind in _DROPPED_PARTS:
            continue
        else:
            raise ChatTemplateError(f"unsupported content part type: {kind!r}")
    return prepared


def _prepare_tool_call(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return call
    result = dict(call)
    function = result.get("function")
    if isinstance(function, Mapping):
        function = dict(function)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            function["arguments"] = _parse_arguments(arguments)
        result["function"] = function
    return result


def _parse_arguments(arguments: str) -> dict[str, Any]:
    # SGLang parses with orjson, which keeps key order and rejects NaN/Infinity.
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise ChatTemplateError(
            "Assistant tool call function.arguments must be valid JSON."
        ) from exc
    if not isinstance(parsed, dict):
        raise ChatTemplateError("Assistant tool call function.arguments must be a JSON object.")
    return parsed


def _prepare_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A tool as SGLang's `Tool.model_dump()` gives it to the template."""
    function = tool.get("function")
    if not isinstance(function, Mapping):
        raise ChatTemplateError("tools must have a function object")
    client_order = list(function.keys())
    fields: dict[str, Any] = {
        "description": function.get("description"),
        "name": function.get("name"),
        "parameters": function.get("parameters"),
        "strict": function.get("strict"),
        "defer_loading": function.get("defer_loading"),
    }
    if fields["defer_loading"] is None and tool.get("defer_loading") is not None:
        fields["defer_loading"] = tool.get("defer_loading")
    for optional in ("strict", "defer_loading"):
        if fields[optional] is None:
            del fields[optional]
    order = client_order + [key for key in fields if key not in client_order]
    return {
        "type": tool.get("type", "function"),
        "function": {key: fields[key] for key in order if key in fields},
        "defer_loading": tool.get("defer_loading"),
    }
