"""The OpenAI Responses shapes cascade accepts and emits, and their translation to the chat door's.

- Requests: `ResponsesRequest` (OpenAI's fields plus cascade's extensions `thinking`,
  `thinking_budget`, `server_tools`, `preserve_thinking`), translated by `to_chat_request` into
  a `ChatRequest` for the turn engine: `input` items become chat messages (`input_image` an
  `image_url` part, so the same image intake runs, and cascade's own `input_video`
  (`{"type": "input_video", "video_url": …}` or `file_id`) a `video_url` part;
  `function_call_output` a `tool` message;
  earlier output items assistant messages), `instructions` a leading system message for this
  response only, `{"type": "web_search"}` the server tool `web_search`. Problems are an
  `InvalidRequestError` naming the field (`input[2].call_id`, `tools[0].name`, ...).
- Responses: `response_body` builds a `Response` from a run's new messages; server tool steps
  are `mcp_call` items with `server_label: "cascade"`, the server tools offered an
  `mcp_list_tools` item (once per chain), a paused write call an `mcp_approval_request`
  (answered by `mcp_approval_response` input: `app.agent.responses_approvals`).
- `item_reference` inputs name items of the stored chain; `truncation: "auto"` drops the run's
  oldest turns to fit the runtime's context window (`fit_translation`).
- Stream events: `ResponseEventWriter`, the Responses event sequence built from the run's
  stream events, with a strictly increasing `sequence_number`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from app.agent.context_fit import fit_history
from app.agent.models import Final, MaxSteps, Paused, RunResult
from app.agent.protocol import (
    ChatRequest,
    check_messages,
    check_tool_offer,
    check_tool_results,
)
from app.agent.responses_approvals import (
    Answers,
    ApprovalRequest,
    answer_approvals,
    approval_requests,
    check_approval_item,
)
from app.errors import InvalidRequestError

SERVER_LABEL = "cascade"
WEB_SEARCH = "web_search"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


INCLUDABLE = Literal[
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
    "message.input_image.image_url",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
]
"""OpenAI's `include` values; cascade acts on `reasoning.encrypted_content` and accepts the
others (there is nothing of theirs to add)."""


class TextOptions(BaseModel):
    """`text`: the output format (checked by `_response_format`) and verbosity."""

    model_config = ConfigDict(extra="ignore")

    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(BaseModel):
    """A `POST /v1/responses` body. Unknown fields are ignored (clients send many); flags are
    strict booleans (`"yes"` is not `true`), as OpenAI's are."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=256)
    conversation: str | dict[str, Any] | None = None  # an id or {"id": ...}
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool = True
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    reasoning: dict[str, Any] | None = None
    text: TextOptions | None = None
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(default=None, max_length=16)
    store: StrictBool = True
    stream: StrictBool = False
    background: StrictBool = False
    user: str | None = None
    include: list[INCLUDABLE] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # --- cascade extensions ---
    thinking: StrictBool | None = None
    thinking_budget: int | None = Field(default=None, ge=1)
    server_tools: list[str] | None = None
    preserve_thinking: StrictBool | None = None


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def parse_responses_request(data: Any) -> ResponsesRequest:
    """Validate a request body; any problem is an `InvalidRequestError` naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        req = ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidRequestError(
            f"{first.get('msg', 'invalid value')} at {loc}", param=loc or None
        ) from None
    if isinstance(req.input, list) and not req.input and req.previous_response_id is None:
        raise _bad("input must not be empty", "input")
    if isinstance(req.input, str) and not req.input:
        raise _bad("input must not be empty", "input")
    if req.background and not req.store:
        raise _bad("a background response is stored: background needs store: true", "background")
    if req.background and req.stream:
        raise _bad(
            "background responses are not streamed here: poll GET /v1/responses/{id}", "stream"
        )
    return req


# ----------------------------------------------------------------------------- input → messages


def _text_of(content: Any, at: str) -> str:
    """A text given as a string or as a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise _bad("a text part needs a string `text`", f"{at}[{j}].text")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad("must be a string or a list of text parts", at)


def _parts(content: list[Any], at: str, role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{at}[{j}]"
        if not isinstance(part, dict):
            raise _bad("a content part must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise _bad("a text part needs a string `text`", f"{where}.text")
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and role == "user":
            url = part.get("image_url") or part.get("file_id")
            if not isinstance(url, str) or not url:
                raise _bad("input_image needs image_url or file_id", f"{where}.image_url")
            out.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "input_video" and role == "user":
            # cascade's extension (OpenAI's Responses API has no video input).
            url = part.get("video_url") or part.get("file_id")
            if not isinstance(url, str) or not url:
                raise _bad("input_video needs video_url or file_id", f"{where}.video_url")
            out.append({"type": "video_url", "video_url": {"url": url}})
        else:
            allowed = "input_text, input_image or input_video" if role == "user" else "input_text"
            raise _bad(f"{where}.type must be {allowed} in a {role} message", f"{where}.type")
    return out


@dataclass
class _Translation:
    messages: list[dict[str, Any]] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)  # input index of each message
    items: list[dict[str, Any]] = field(default_factory=list)  # the input as stored items
    approvals: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # index, item

    def add(self, message: dict[str, Any], index: int) -> None:
        self.messages.append(message)
        self.origin.append(index)

    def assistant(self, index: int) -> dict[str, Any]:
        """The assistant message an output item continues (a new one unless the last message
        is an assistant's without tool calls, or one whose calls are not answered yet)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        self.add(message, index)
        return message


def _message_item(
    item: dict[str, Any], at: str, out: _Translation, index: int, pending: list[str]
) -> None:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise _bad(f"{at}.role must be user, system, developer or assistant", f"{at}.role")
    raw = item.get("content")
    content: str | list[dict[str, Any]]
    if isinstance(raw, list):
        parts = _parts(raw, f"{at}.content", role)
        if role != "user" or all(p["type"] == "text" for p in parts):
            content = "".join(p["text"] for p in parts)
        else:
            content = parts
    elif isinstance(raw, str):
        content = raw
    else:
        raise _bad("content must be a string or a list of parts", f"{at}.content")
    if role == "assistant":
        assert isinstance(content, str)  # only user messages keep image parts
        message = out.assistant(index)
        if message.get("tool_calls"):
            message = {"role": "assistant", "content": ""}
            out.add(message, index)
        message["content"] = (message.get("content") or "") + content
        if pending:
            message["reasoning_content"] = "".join(pending)
            pending.clear()
    else:
        out.add({"role": role, "content": content}, index)


def _call_item(
    item: dict[str, Any], at: str, out: _Translation, index: int, pending: list[str]
) -> None:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if item["type"] == "mcp_call":
        call_id = item.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad("a function_call needs a string call_id", f"{at}.call_id")
    if not isinstance(name, str):
        raise _bad("a function_call needs a string name", f"{at}.name")
    if not isinstance(arguments, str):
        raise _bad("arguments must be a string holding a JSON object", f"{at}.arguments")
    message = out.assistant(index)
    if pending:
        message["reasoning_content"] = "".join(pending)
        pending.clear()
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    message.setdefault("tool_calls", []).append(call)
    if item["type"] == "mcp_call":
        out.add(
            {"role": "tool", "tool_call_id": call_id, "content": item.get("output") or ""}, index
        )


def _referenced(
    item: dict[str, Any], at: str, references: dict[str, dict[str, Any]] | None
) -> dict[str, Any]:
    """The stored chain item an `item_reference` names."""
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise _bad("an item_reference needs a string id", f"{at}.id")
    if references is None:
        raise _bad(
            "item_reference needs a stored previous response: its items are what it can name",
            f"{at}.id",
        )
    found = references.get(item_id)
    if found is None:
        raise _bad(f"no item {item_id[:100]!r} in this response chain", f"{at}.id")
    return dict(found)


def translate_input(
    input_: str | list[Any],
    *,
    unseal: Unseal | None = None,
    references: dict[str, dict[str, Any]] | None = None,
) -> _Translation:
    """`input` → chat messages, and the input items as `input_items` lists them (with ids).

    `references` are the stored chain's items by id (None without a stored chain): an
    `item_reference` stands for the item it names. Approval responses are collected apart
    (`approvals`); `mcp_list_tools` and `mcp_approval_request` items (a client sending back
    earlier output) are kept as items and carry nothing for the model."""
    out = _Translation()
    if isinstance(input_, str):
        out.add({"role": "user", "content": input_}, 0)
        out.items.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_text", "text": input_}],
            }
        )
        return out
    pending: list[str] = []  # reasoning waiting for the assistant message it belongs to
    for i, item in enumerate(input_):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad("an input item must be an object", at)
        kind = item.get("type", "message")
        if kind == "item_reference":
            item = _referenced(item, at, references)
            kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise _bad("an input item's type must be a string", f"{at}.type")
        stored = {**item, "type": kind, "id": item.get("id") or new_id(_ID_PREFIX.get(kind, "it"))}
        if kind == "message":
            _message_item(item, at, out, i, pending)
            stored.setdefault("status", "completed")
            if isinstance(item.get("content"), str):
                text_type = "output_text" if item.get("role") == "assistant" else "input_text"
                stored["content"] = [{"type": text_type, "text": item["content"]}]
        elif kind in ("function_call", "mcp_call"):
            _call_item(stored, at, out, i, pending)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad("a function_call_output needs a string call_id", f"{at}.call_id")
            output = _text_of(item.get("output"), f"{at}.output")
            out.add({"role": "tool", "tool_call_id": call_id, "content": output}, i)
        elif kind == "mcp_approval_response":
            check_approval_item(item, at)
            out.approvals.append((i, item))
        elif kind in ("mcp_list_tools", "mcp_approval_request"):
            pass  # earlier output sent back: the model saw the tools and the pause already
        elif kind == "reasoning":
            sealed = item.get("encrypted_content")
            if sealed is not None:
                # Only what this server sealed counts; any plain text beside it is ignored.
                if unseal is None:
                    raise _bad(
                        "encrypted_content cannot be read here: the server has no "
                        "CASCADE_SECRET_KEY",
                        f"{at}.encrypted_content",
                    )
                pending.append(unseal(sealed, f"{at}.encrypted_content"))
            else:
                content = item.get("content") or item.get("summary") or []
                pending.append(_text_of(content, f"{at}.content"))
        else:
            raise _bad(
                f"{at}.type must be message, function_call, function_call_output, reasoning, "
                "mcp_call, mcp_approval_response, mcp_list_tools, mcp_approval_request or "
                "item_reference",
                f"{at}.type",
            )
        out.items.append(stored)
    return out


_ID_PREFIX = {
    "message": "msg",
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "mcp_call": "mcp",
    "mcp_approval_response": "mcpr",
    "mcp_list_tools": "mcpl",
    "mcp_approval_request": "mcpa",
}


def _chat_tools(
    tools: list[dict[str, Any]], available: Sequence[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    client: list[dict[str, Any]] = []
    server: list[str] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            function = {
                k: tool[k]
                for k in ("name", "description", "parameters", "strict")
                if tool.get(k) is not None
            }
            if not isinstance(function.get("name"), str):
                raise _bad("a function tool needs a string name", f"tools[{i}].name")
            client.append({"type": "function", "function": function})
        elif kind in ("web_search", "web_search_preview"):
            if WEB_SEARCH not in available:
                raise _bad("web search is not available on this server", f"tools[{i}].type")
            server.append(WEB_SEARCH)
        else:
            raise _bad("tools[].type must be function or web_search", f"tools[{i}].type")
    return client, server


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(
        'tool_choice must be none, auto, required or {"type": "function", ...}', "tool_choice"
    )


def _response_format(text: TextOptions | None) -> dict[str, Any] | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise _bad("a json_schema format needs a name and a schema", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type must be text, json_object or json_schema", "text.format.type")


def _renamed(exc: InvalidRequestError, origin: list[int]) -> InvalidRequestError:
    """A chat check's error, its `messages[j]` param named as the input item it came from."""
    param = exc.param or ""
    if param.startswith("messages["):
        j = int(param[len("messages[") : param.index("]")])
        if j < len(origin):
            where = f"input[{origin[j]}]"
            rest = param[param.index("]") + 1 :]
            return InvalidRequestError(
                exc.message.replace(f"messages[{j}]", where), param=where + rest
            )
    return exc


@dataclass
class ChatTranslation:
    request: ChatRequest
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]  # what the run sees before the new messages
    # The chain's stored history as this response continues it (declined calls answered),
    # which its own stored history starts with.
    previous: list[dict[str, Any]] = field(default_factory=list)
    chain_items: list[dict[str, Any]] = field(default_factory=list)  # the chain's, before
    answers: Answers = field(default_factory=Answers)


def to_chat_request(
    req: ResponsesRequest,
    *,
    stored_history: Sequence[dict[str, Any]],
    available_server_tools: Sequence[str],
    unseal: Unseal | None = None,
    chain_items: Sequence[dict[str, Any]] = (),
) -> ChatTranslation:
    """The `ChatRequest` of one response, over the chain's `stored_history` and `chain_items`
    (empty without `previous_response_id`). `instructions` lead the run's history and are
    never stored. Approval responses are answered as `app.agent.responses_approvals` says."""
    chained = req.previous_response_id is not None
    references = {i["id"]: i for i in reversed(chain_items) if "id" in i} if chained else None
    translation = translate_input(req.input, unseal=unseal, references=references)
    answers = answer_approvals(
        translation.approvals,
        stored_history if chained else None,
        other_input=translation.origin[0] if translation.origin else None,
    )
    previous = [*stored_history, *answers.declined]
    client_tools, server_tools = _chat_tools(req.tools or [], available_server_tools)
    if req.server_tools is not None:
        server_tools = [*server_tools, *(n for n in req.server_tools if n not in server_tools)]
    effort = (req.reasoning or {}).get("effort")
    data: dict[str, Any] = {
        "model": req.model,
        "messages": translation.messages,
        "tools": client_tools or None,
        "tool_choice": _tool_choice(req.tool_choice),
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "reasoning_effort": effort,
        "response_format": _response_format(req.text),
        "user": req.user,
        "thinking": req.thinking,
        "thinking_budget": req.thinking_budget,
        "server_tools": server_tools if (server_tools or req.server_tools is not None) else None,
        "preserve_thinking": req.preserve_thinking,
        "confirm_tool_calls": answers.confirm,
    }
    if not translation.messages and answers.pause_id is None:
        raise _bad("input must not be empty", "input")
    try:
        if translation.messages:
            chat = ChatRequest.model_validate(data)
        else:
            # Only answers to a pause: the run resumes from the stored chain with no new
            # message, as a session turn confirming a pause does (which is the one empty turn
            # ChatRequest allows, so it is validated as one and the stand-in id dropped).
            stand_in = {**data, "session_id": "sess_" + "0" * 24}
            chat = ChatRequest.model_validate(stand_in).model_copy(update={"session_id": None})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        param = {
            "reasoning_effort": "reasoning.effort",
            "max_completion_tokens": "max_output_tokens",
        }.get(loc, loc)
        raise InvalidRequestError(
            f"{first.get('msg', 'invalid value')} at {param}", param=param or None
        ) from None
    try:
        check_messages(chat.messages)
        check_tool_offer(chat)
        check_tool_results(previous, chat.messages)
    except InvalidRequestError as exc:
        raise _renamed(exc, translation.origin) from None
    history = list(previous)
    if req.instructions:
        history.insert(0, {"role": "system", "content": req.instructions})
    return ChatTranslation(
        request=chat,
        input_items=translation.items,
        history=history,
        previous=previous,
        chain_items=list(chain_items),
        answers=answers,
    )


AUTO_TRUNCATION_ROOM = 1024
"""Tokens `truncation: "auto"` leaves for the answer when `max_output_tokens` is not given."""


def fit_translation(
    translation: ChatTranslation,
    req: ResponsesRequest,
    *,
    context_length: int,
    server_schemas: Sequence[dict[str, Any]],
) -> dict[str, Any] | None:
    """`truncation: "auto"`: drop the oldest turns of the run's history until the prompt fits
    `context_length` (`app.agent.context_fit`). Returns what the body says about it (None when
    nothing was dropped); the stored chain keeps every turn."""
    tools = [t.model_dump(exclude_none=True) for t in translation.request.tools or []]
    reserve = (req.max_output_tokens or AUTO_TRUNCATION_ROOM) + (req.thinking_budget or 0)
    fitted = fit_history(
        translation.history,
        translation.request.messages,
        tools=[*tools, *server_schemas],
        context_length=context_length,
        reserve=reserve,
    )
    if not fitted.dropped_messages:
        return None
    translation.history = fitted.history
    return {"dropped_turns": fitted.dropped_turns, "dropped_messages": fitted.dropped_messages}


# ----------------------------------------------------------------------------- responses


def usage_body(result: RunResult) -> dict[str, Any]:
    usage = result.usage
    return {
        "input_tokens": usage.prompt_tokens,
        # The runtime's prefix cache has no separately counted writes.
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


Seal = Callable[[str], str]
"""Seals a reasoning text into an `encrypted_content` blob (see `app.sealed`)."""

Unseal = Callable[[str, str], str]
"""Opens an `encrypted_content` blob (the blob, the field it came in) back into its text."""

ENCRYPTED_REASONING = "reasoning.encrypted_content"


def reasoning_item(
    text: str, *, item_id: str | None = None, done: bool = True, seal: Seal | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id or new_id("rs"),
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if done else [],
        "status": "completed" if done else "in_progress",
    }
    if done and seal is not None:
        item["encrypted_content"] = seal(text)
    return item


def message_item(
    text: str,
    *,
    item_id: str | None = None,
    status: Literal["in_progress", "completed", "incomplete"] = "completed",
) -> dict[str, Any]:
    content = [] if status == "in_progress" else [output_text_part(text)]
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    call_id: str, name: str, arguments: str, *, item_id: str | None = None, done: bool = True
) -> dict[str, Any]:
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed" if done else "in_progress",
    }


def mcp_call_item(
    name: str,
    arguments: str,
    output: str | None,
    *,
    item_id: str | None = None,
    status: Literal["in_progress", "completed", "failed"] = "completed",
) -> dict[str, Any]:
    return {
        "id": item_id or new_id("mcp"),
        "type": "mcp_call",
        "server_label": SERVER_LABEL,
        "name": name,
        "arguments": arguments,
        "output": output,
        "status": status,
    }


def tools_listing(
    tool_defs: Sequence[dict[str, Any]],
    server_names: set[str],
    chain_items: Sequence[dict[str, Any]],
) -> dict[str, Any] | None:
    """The `mcp_list_tools` item of the server tools a run offers (from its `tool_defs`), or
    None: when it offers none, or when the chain's last listing named the same tools already
    (a chain lists its tools once, and again only when they change)."""
    offered = [t["function"] for t in tool_defs if t["function"]["name"] in server_names]
    if not offered:
        return None
    names = sorted(f["name"] for f in offered)
    for item in reversed(chain_items):
        if item.get("type") == "mcp_list_tools" and item.get("server_label") == SERVER_LABEL:
            if sorted(t.get("name") for t in item.get("tools") or []) == names:
                return None
            break
    return {
        "id": new_id("mcpl"),
        "type": "mcp_list_tools",
        "server_label": SERVER_LABEL,
        "tools": [
            {
                "name": f["name"],
                "input_schema": f.get("parameters") or {"type": "object"},
                "description": f.get("description"),
            }
            for f in offered
        ],
    }


def approval_request_item(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "type": "mcp_approval_request",
        "server_label": SERVER_LABEL,
        "name": request.name,
        "arguments": request.arguments,
    }


def output_items(
    produced: Sequence[dict[str, Any]],
    client_call_ids: set[str],
    *,
    seal: Seal | None = None,
    approved: Sequence[ApprovalRequest] = (),
) -> list[dict[str, Any]]:
    """The output items of a run's produced messages (assistant turns and tool results; the
    loop's own user messages are not output). Calls the run paused on are approval requests;
    the `approved` calls it resumed with are `mcp_call` items naming their approval."""
    results = {m.get("tool_call_id"): m.get("content") for m in produced if m.get("role") == "tool"}
    items: list[dict[str, Any]] = []
    for request in approved:
        output = results.get(request.call_id)
        items.append(
            {
                **mcp_call_item(
                    request.name,
                    request.arguments,
                    output if isinstance(output, str) else None,
                    status="completed" if request.call_id in results else "in_progress",
                ),
                "approval_request_id": request.id,
            }
        )
    for message in produced:
        if message.get("role") != "assistant":
            continue
        paused = {r.call_id: r for r in approval_requests(message)}
        if message.get("reasoning_content"):
            items.append(reasoning_item(message["reasoning_content"], seal=seal))
        truncated = bool((message.get("meta") or {}).get("truncated"))
        if message.get("content"):
            status: Literal["completed", "incomplete"] = "incomplete" if truncated else "completed"
            items.append(message_item(message["content"], status=status))
        for call in message.get("tool_calls") or []:
            function = call["function"]
            if call["id"] in client_call_ids:
                items.append(
                    function_call_item(call["id"], function["name"], function["arguments"])
                )
            elif call["id"] in paused:
                items.append(approval_request_item(paused[call["id"]]))
            else:
                output = results.get(call["id"])
                items.append(
                    mcp_call_item(
                        function["name"],
                        function["arguments"],
                        output if isinstance(output, str) else None,
                        status="completed" if call["id"] in results else "in_progress",
                    )
                )
    return items


def response_status(result: RunResult) -> tuple[str, dict[str, Any] | None]:
    """`completed`, or `incomplete` with its reason: `max_output_tokens` for a cut answer."""
    match result.end:
        case Final(finish_reason="length"):
            return "incomplete", {"reason": "max_output_tokens"}
        case MaxSteps():
            return "incomplete", {"reason": None}
        case _:
            return "completed", None


def echo_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's tools as a `Response` lists them."""
    out: list[dict[str, Any]] = []
    for tool in tools or []:
        if tool.get("type") == "function":
            out.append(
                {
                    "type": "function",
                    "name": tool["name"],
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict"),
                }
            )
        else:
            out.append({"type": tool["type"]})
    return out


def echo_text(text: TextOptions | None) -> dict[str, Any]:
    """The request's `text` as a `Response` shows it (the format defaults to plain text)."""
    out = text.model_dump(exclude_none=True) if text is not None else {}
    out.setdefault("format", {"type": "text"})
    return out


def response_shell(
    req: ResponsesRequest, *, response_id: str, model: str, created_at: int
) -> dict[str, Any]:
    """A `Response` without output: what `response.created` carries, and the frame of the
    finished one."""
    effort = (req.reasoning or {}).get("effort")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": effort, "summary": None},
        "store": req.store,
        "background": req.background,
        "temperature": req.temperature,
        "text": echo_text(req.text),
        "tool_choice": req.tool_choice or "auto",
        "tools": echo_tools(req.tools),
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def finish_response(
    shell: dict[str, Any], result: RunResult, output: list[dict[str, Any]]
) -> dict[str, Any]:
    status, incomplete = response_status(result)
    return {
        **shell,
        "status": status,
        "incomplete_details": incomplete,
        "output": output,
        "usage": usage_body(result),
        "completed_at": int(time.time()) if status == "completed" else None,
    }


def response_body(
    shell: dict[str, Any],
    result: RunResult,
    produced: Sequence[dict[str, Any]],
    *,
    seal: Seal | None = None,
    approved: Sequence[ApprovalRequest] = (),
    listed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The finished `Response` of a run whose new (non-input) messages are `produced`;
    with `seal`, reasoning items carry their text sealed as `encrypted_content`; `approved`
    as in `output_items`; `listed`, the server tools' `mcp_list_tools` item, comes first."""
    client_ids = {c.id for c in result.client_tool_calls}
    items = output_items(produced, client_ids, seal=seal, approved=approved)
    return finish_response(shell, result, [listed, *items] if listed else items)


def serialise(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# ----------------------------------------------------------------------------- stream events


@dataclass
class _Open:
    """An output item being streamed: its place in `output`, its item and its text so far."""

    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class ResponseEventWriter:
    """Serialises the events of one streamed response and collects its output items.

    At most one text item (reasoning or message) is open at a time, and client function calls
    stay open until another item starts; every item is closed (its `.done` events sent) before
    the response's last event. `sequence_number` grows by one per event.

    A server tool call is an `mcp_call` item: added, its arguments (`mcp_call_arguments`
    delta and done), `mcp_call.in_progress`, then `completed` or `failed` and done. A call that
    may wait for approval (a write tool) is held back until its outcome is known: run, it is
    sent whole then; paused, it becomes an `mcp_approval_request` item at the end, when the
    run's pause id (the request's id) exists.
    """

    def __init__(
        self,
        shell: dict[str, Any],
        *,
        seal: Seal | None = None,
        approved: Sequence[ApprovalRequest] = (),
    ) -> None:
        self.shell = shell
        self.seal = seal
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self._text: _Open | None = None
        self._calls: dict[int, _Open] = {}
        self._mcp: dict[str, _Open] = {}
        self._held: dict[str, tuple[str, str]] = {}  # call id → name, arguments
        self._approval = {r.call_id: r.id for r in approved}

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return serialise(event)

    def _add(self, item: dict[str, Any]) -> tuple[_Open, bytes]:
        opened = _Open(index=len(self.output), item=item)
        self.output.append(item)
        return opened, self._event(
            "response.output_item.added", output_index=opened.index, item=dict(item)
        )

    def start(self, listed: dict[str, Any] | None = None) -> list[bytes]:
        """The first events; with `listed`, the server tools' `mcp_list_tools` item."""
        out = [
            self._event("response.created", response=self.shell),
            self._event("response.in_progress", response=self.shell),
        ]
        if listed is not None:
            opened, added = self._add(listed)
            at = {"item_id": listed["id"], "output_index": opened.index}
            out += [
                added,
                self._event("response.mcp_list_tools.in_progress", **at),
                self._event("response.mcp_list_tools.completed", **at),
                self._event("response.output_item.done", output_index=opened.index, item=listed),
            ]
        return out

    def _close_text(self) -> list[bytes]:
        opened, self._text = self._text, None
        if opened is None:
            return []
        text = "".join(opened.text)
        at = {"item_id": opened.item["id"], "output_index": opened.index, "content_index": 0}
        if opened.item["type"] == "reasoning":
            done = reasoning_item(text, item_id=opened.item["id"], seal=self.seal)
            part = done["content"][0]
            first = self._event("response.reasoning_text.done", text=text, **at)
        else:
            done = message_item(text, item_id=opened.item["id"])
            part = done["content"][0]
            first = self._event("response.output_text.done", text=text, logprobs=[], **at)
        self.output[opened.index] = done
        return [
            first,
            self._event("response.content_part.done", part=part, **at),
            self._event("response.output_item.done", output_index=opened.index, item=done),
        ]

    def _close_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for opened in self._calls.values():
            item = opened.item
            arguments = "".join(opened.text)
            done = function_call_item(item["call_id"], item["name"], arguments, item_id=item["id"])
            self.output[opened.index] = done
            at = {"item_id": item["id"], "output_index": opened.index}
            out.append(
                self._event("response.function_call_arguments.done", arguments=arguments, **at)
            )
            out.append(
                self._event("response.output_item.done", output_index=opened.index, item=done)
            )
        self._calls = {}
        return out

    def _text_delta(self, kind: Literal["reasoning", "message"], text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._text is None or self._text.item["type"] != kind:
            out += self._close_text() + self._close_calls()
            if kind == "reasoning":
                item = reasoning_item("", done=False)
                part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
            else:
                item = message_item("", status="in_progress")
                part = output_text_part("")
            self._text, added = self._add(item)
            out.append(added)
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self._text.index,
                    content_index=0,
                    part=part,
                )
            )
        self._text.text.append(text)
        at = {
            "item_id": self._text.item["id"],
            "output_index": self._text.index,
            "content_index": 0,
        }
        if kind == "reasoning":
            out.append(self._event("response.reasoning_text.delta", delta=text, **at))
        else:
            out.append(self._event("response.output_text.delta", delta=text, logprobs=[], **at))
        return out

    def reasoning(self, text: str) -> list[bytes]:
        return self._text_delta("reasoning", text)

    def content(self, text: str) -> list[bytes]:
        return self._text_delta("message", text)

    def tool_call(
        self, index: int, call_id: str | None, name: str | None, args: str
    ) -> list[bytes]:
        out: list[bytes] = []
        opened = self._calls.get(index)
        if opened is None:
            out += self._close_text()
            item = function_call_item(call_id or new_id("call"), name or "", "", done=False)
            opened, added = self._add(item)
            self._calls[index] = opened
            out.append(added)
        if args:
            opened.text.append(args)
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=opened.item["id"],
                    output_index=opened.index,
                    delta=args,
                )
            )
        return out

    def _mcp_item(self, call_id: str, item: dict[str, Any]) -> dict[str, Any]:
        approval = self._approval.get(call_id)
        return {**item, "approval_request_id": approval} if approval else item

    def tool_started(
        self, call_id: str, name: str, arguments: str, *, may_pause: bool = False
    ) -> list[bytes]:
        out = self._close_text() + self._close_calls()
        if may_pause and call_id not in self._approval:
            self._held[call_id] = (name, arguments)
            return out
        item = self._mcp_item(call_id, mcp_call_item(name, "", None, status="in_progress"))
        opened, added = self._add(item)
        item["arguments"] = arguments
        self._mcp[call_id] = opened
        at = {"item_id": item["id"], "output_index": opened.index}
        out.append(added)
        if arguments:
            out.append(self._event("response.mcp_call_arguments.delta", delta=arguments, **at))
        out.append(self._event("response.mcp_call_arguments.done", arguments=arguments, **at))
        return [*out, self._event("response.mcp_call.in_progress", **at)]

    def tool_finished(self, call_id: str, output: str | None, *, failed: bool) -> list[bytes]:
        """A call's end; `output` None for a call the run paused on (it has no result)."""
        out: list[bytes] = []
        held = self._held.pop(call_id, None)
        if held is not None:
            if output is None:
                return []  # paused: its approval request is sent by `finish`
            out += self.tool_started(call_id, *held)
        opened = self._mcp.pop(call_id, None)
        if opened is None:
            return out
        item = opened.item
        done = self._mcp_item(
            call_id,
            mcp_call_item(
                item["name"],
                item["arguments"],
                output,
                item_id=item["id"],
                status="failed" if failed else "completed",
            ),
        )
        self.output[opened.index] = done
        at = {"item_id": item["id"], "output_index": opened.index}
        kind = "response.mcp_call.failed" if failed else "response.mcp_call.completed"
        return [
            *out,
            self._event(kind, **at),
            self._event("response.output_item.done", output_index=opened.index, item=done),
        ]

    def finish(self, result: RunResult) -> tuple[dict[str, Any], list[bytes]]:
        """Close what is open (and send a pause's approval requests); the finished `Response`
        and its last events."""
        out = self._close_text() + self._close_calls()
        if isinstance(result.end, Paused):
            for message in reversed(result.new_messages):
                requests = approval_requests(message) if message.get("role") == "assistant" else []
                if requests:
                    for request in requests:
                        item = approval_request_item(request)
                        opened, added = self._add(item)
                        done = self._event(
                            "response.output_item.done", output_index=opened.index, item=item
                        )
                        out += [added, done]
                    break
        body = finish_response(self.shell, result, self.output)
        kind = "response.completed" if body["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=body))
        return body, out

    def failed(self, message: str) -> list[bytes]:
        """Close what is open, then `response.failed` with the client-safe `message`."""
        out = self._close_text() + self._close_calls()
        body = {
            **self.shell,
            "status": "failed",
            "output": self.output,
            "error": {"code": "server_error", "message": message},
        }
        out.append(self._event("response.failed", response=body))
        return out
