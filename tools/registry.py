"""The tool registry: declared tools, their JSON schemas, and the one place tools are executed.

Contracts:
- A tool is declared from an async function with a pydantic argument model (`@tool`). Its JSON
  schema is strict (no unknown properties, `$ref`s inlined, no titles) and canonical: the same
  tools give byte-identical `json.dumps(registry.schemas())` in every process, so the prompt that
  carries them stays byte-identical and prefix-cacheable.
- `ToolRegistry.execute` never raises for a tool failure. An unknown tool, arguments that are not
  JSON or fail validation, a write the policy does not allow, a timeout and an exception inside
  the tool all come back as `ToolResult(is_error=True)` with a message written for the model.
  The one exception is `ConfirmationRequired`: the call is a write the policy wants a person to
  confirm first, which the agent loop must take to the user.
- Tool output is untrusted data. It goes back to the model as tool output only; whether a write
  tool may run is decided by the `ToolPolicy` the caller passes (from operator config or the
  request), never by anything a tool returned.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
import redis.asyncio
import structlog
from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from app.media.store import ImageRef

log = structlog.get_logger("cascade.tools")

SideEffect = Literal["read", "write"]
#: What a tool needs to be of any use in a conversation: `images` (an image in the
#: conversation), `redis` (the server's Redis). A tool is offered only when all it needs is there.
Need = Literal["images", "redis"]

#: Tool names the registry accepts: what SGLang's qwen3_coder parser reads back from
#: `<function=NAME>` (anything but `>`), narrowed to a safe, printable set. Dots are allowed so
#: MCP tools can be namespaced `server.tool`.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

#: Appended to text cut at a tool's output cap; `{shown}` and `{total}` are character counts.
TRUNCATION_MARKER = "\n[output truncated by cascade: {shown} of {total} characters shown]"


class ToolArgs(BaseModel):
    """Base for tool argument models: unknown arguments are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class EmptyArgs(ToolArgs):
    """Arguments of a tool that takes none."""


@dataclass
class ToolResult:
    """What a tool hands back: text and/or images (image_ref parts), and whether it failed;
    `refused`: it was not run at all (no such tool, or the operator's policy forbids it)."""

    text: str = ""
    images: list[dict[str, Any]] = field(default_factory=list)
    is_error: bool = False
    refused: bool = False


class MediaStore(Protocol):
    """The part of `app.media.intake.ImageIntake` tools use: read a stored image, store one
    (a crop), take one in like a user's image (an MCP result)."""

    async def load_image(self, ref: Mapping[str, Any]) -> Image.Image: ...

    async def put_image(self, image: Image.Image) -> ImageRef: ...

    async def ingest(self, url: str, *, owner: str) -> ImageRef: ...


@dataclass
class ToolContext:
    """Per-call context the agent loop builds; none of it comes from model output."""

    owner: str
    session_id: str | None = None
    redis: redis.asyncio.Redis | None = None
    media: MediaStore | None = None
    conversation_images: list[dict[str, Any]] = field(default_factory=list)
    confirmed_call_ids: set[str] = field(default_factory=set)
    call_id: str = ""


class ToolError(Exception):
    """A failure a tool reports to the model; its message is shown to the model verbatim.

    Write it for the model: what went wrong and, if useful, what to try instead. Never put
    secrets, credentials or raw upstream error bodies in it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfirmationRequired(Exception):
    """A write call the policy wants the user to confirm before it runs.

    The agent loop shows `tool_name` and `arguments` to the user; once confirmed it calls
    `execute` again with `call_id` in `ToolContext.confirmed_call_ids`.
    """

    def __init__(self, tool_name: str, call_id: str, arguments: dict[str, Any]) -> None:
        super().__init__(f"tool {tool_name!r} needs the user's confirmation (call {call_id})")
        self.tool_name = tool_name
        self.call_id = call_id
        self.arguments = arguments


@dataclass
class ToolPolicy:
    """What the caller allows in this run. Built from operator config or the request only.

    - `enabled`: tool names the model may see and call; `None` = every registered tool.
    - `allow_write`: `True` = every write tool may run; a set = only those; `False` = none.
    - `confirm_write`: write tools that need the user's OK per call (`True` = all of them).
      A tool declared `requires_confirmation` always needs it.
    - `server_tools_with_client_tools`: whether a request that declares its own `tools` is
      also offered the server tools when it does not name them in `server_tools`.
    """

    enabled: set[str] | None = None
    allow_write: bool | set[str] = False
    confirm_write: bool | set[str] = True
    server_tools_with_client_tools: bool = False

    def is_enabled(self, name: str) -> bool:
        return self.enabled is None or name in self.enabled

    def allows_write(self, name: str) -> bool:
        if isinstance(self.allow_write, bool):
            return self.allow_write
        return name in self.allow_write

    def needs_confirmation(self, tool: Tool) -> bool:
        if tool.side_effect != "write":
            return False
        if tool.requires_confirmation:
            return True
        if isinstance(self.confirm_write, bool):
            return self.confirm_write
        return tool.name in self.confirm_write


ToolFn = Callable[[Any, ToolContext], Awaitable[str | ToolResult]]


class Tool:
    """A declared tool. Build one with `@tool`; subclasses may override schema and validation.

    `run` validates nothing: `ToolRegistry.execute` parses and validates arguments (via
    `parse_arguments`) before it calls `run` with the result.
    """

    def __init__(
        self,
        *,
        name: str,
        description: str,
        args_model: type[BaseModel],
        fn: ToolFn | None = None,
        side_effect: SideEffect = "read",
        timeout: float = 15.0,
        max_output_chars: int = 16000,
        requires_confirmation: bool = False,
        needs: Iterable[Need] = (),
    ) -> None:
        if not TOOL_NAME_RE.match(name):
            raise ValueError(f"invalid tool name {name!r}: use letters, digits, _ . - (max 64)")
        if side_effect not in ("read", "write"):
            raise ValueError(f"side_effect must be 'read' or 'write', not {side_effect!r}")
        if timeout <= 0 or max_output_chars <= 0:
            raise ValueError("timeout and max_output_chars must be positive")
        self.name = name
        self.description = description.strip()
        self.args_model = args_model
        self.side_effect: SideEffect = side_effect
        self.timeout = float(timeout)
        self.max_output_chars = int(max_output_chars)
        self.requires_confirmation = requires_confirmation
        self.needs: frozenset[Need] = frozenset(needs)
        self._fn = fn
        self._schema_json: bytes | None = None

    def __repr__(self) -> str:
        return f"<Tool {self.name} ({self.side_effect})>"

    def parameters_schema(self) -> dict[str, Any]:
        """The canonical JSON schema of the arguments (a fresh copy each call)."""
        if self._schema_json is None:
            schema = canonical_schema(self.args_model.model_json_schema(mode="validation"))
            self._schema_json = orjson.dumps(schema)
        result: dict[str, Any] = orjson.loads(self._schema_json)
        return result

    def parse_arguments(self, data: dict[str, Any]) -> Any:
        """Validate decoded JSON arguments; raise `ToolArgumentsError` listing every problem."""
        try:
            return self.args_model.model_validate(data)
        except ValidationError as exc:
            raise ToolArgumentsError(_describe_validation_error(exc)) from None

    async def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        if self._fn is None:
            raise NotImplementedError(f"tool {self.name!r} has no implementation")
        out = await self._fn(args, ctx)
        if isinstance(out, ToolResult):
            return out
        if isinstance(out, str):
            return ToolResult(text=out)
        raise TypeError(f"tool {self.name!r} returned {type(out).__name__}, not str/ToolResult")

    def openai_schema(self) -> dict[str, Any]:
        """`{"type": "function", "function": {"name", "description", "parameters"}}`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters_schema(),
            },
        }

    def with_options(
        self,
        *,
        timeout: float | None = None,
        max_output_chars: int | None = None,
        requires_confirmation: bool | None = None,
    ) -> Tool:
        """A copy with other limits (operator config); the declaration itself is unchanged."""
        clone = copy.copy(self)
        if timeout is not None:
            if timeout <= 0:
                raise ValueError("timeout must be positive")
            clone.timeout = float(timeout)
        if max_output_chars is not None:
            if max_output_chars <= 0:
                raise ValueError("max_output_chars must be positive")
            clone.max_output_chars = int(max_output_chars)
        if requires_confirmation is not None:
            clone.requires_confirmation = requires_confirmation
        return clone


class ToolArgumentsError(Exception):
    """Arguments failed validation; the message lists the problems, for the model."""


def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "read",
    timeout: float = 15.0,
    max_output_chars: int = 16000,
    requires_confirmation: bool = False,
    args_model: type[BaseModel] | None = None,
    needs: Iterable[Need] = (),
) -> Callable[[ToolFn], Tool]:
    """Declare a tool from `async def f(args: SomeArgs, ctx: ToolContext) -> str | ToolResult`.

    `SomeArgs` (the first parameter's annotation, or `args_model`) must be a pydantic model that
    forbids extra fields (subclass `ToolArgs`). The name defaults to the function's name, the
    description to its docstring (lines of a paragraph joined). `needs` says what the tool
    needs to be offered at all (see `Need`).
    """

    def decorate(fn: ToolFn) -> Tool:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"tool {fn.__name__!r} must be an async function")
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"tool {fn.__name__!r} must take (args, ctx)")
        model: Any = args_model
        if model is None:
            try:
                model = typing.get_type_hints(fn).get(params[0])
            except NameError:
                raise TypeError(
                    f"tool {fn.__name__!r}: its argument model cannot be resolved; declare it at "
                    "module level or pass args_model="
                ) from None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"tool {fn.__name__!r}: first parameter must be a pydantic model")
        if model.model_config.get("extra") != "forbid":
            raise TypeError(f"tool {fn.__name__!r}: {model.__name__} must forbid extras")
        desc = description if description is not None else _unwrap(inspect.getdoc(fn) or "")
        if not desc:
            raise TypeError(f"tool {fn.__name__!r} needs a description or a docstring")
        return Tool(
            name=name or fn.__name__,
            description=desc,
            args_model=model,
            fn=fn,
            side_effect=side_effect,
            timeout=timeout,
            max_output_chars=max_output_chars,
            requires_confirmation=requires_confirmation,
            needs=needs,
        )

    return decorate


def _unwrap(doc: str) -> str:
    """A docstring as prose: lines of a paragraph joined, paragraphs kept apart."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc.strip())]
    return "\n\n".join(p for p in paragraphs if p)


class ToolRegistry:
    """Named tools; schemas in name order; the only place a tool call is executed."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> None:
        """Add a tool; a second tool with the same name is a programming error."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is already registered")
        tool.parameters_schema()  # fail at registration, not at the first prompt
        self._tools[tool.name] = tool

    def unregister(self, name: str) -> None:
        """Remove a tool if present."""
        self._tools.pop(name, None)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def schemas(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """OpenAI tool schemas, sorted by name; `names` selects (unknown names are skipped)."""
        wanted = self.names() if names is None else sorted(set(names) & set(self._tools))
        return [self._tools[n].openai_schema() for n in wanted]

    def usable(self, names: Iterable[str], present: Iterable[Need]) -> list[str]:
        """The registered `names` (in the given order) whose needs are all `present`."""
        have = set(present)
        return [n for n in names if n in self._tools and self._tools[n].needs <= have]

    def schemas_for(self, policy: ToolPolicy) -> list[dict[str, Any]]:
        """The schemas of the tools `policy` enables."""
        return self.schemas(n for n in self._tools if policy.is_enabled(n))

    async def execute(
        self, name: str, arguments: str, ctx: ToolContext, policy: ToolPolicy
    ) -> ToolResult:
        """Run one tool call the model made. See the module docstring for the contract."""
        tool = self._tools.get(name)
        if tool is None or not policy.is_enabled(name):
            available = ", ".join(n for n in self.names() if policy.is_enabled(n)) or "none"
            return _refused(f"Unknown tool {name[:100]!r}. Available tools: {available}.")

        data = _decode_arguments(arguments)
        if isinstance(data, str):
            return _error(f"Invalid arguments for tool {name!r}: {data}")
        try:
            args = tool.parse_arguments(data)
        except ToolArgumentsError as exc:
            return _error(f"Invalid arguments for tool {name!r}: {exc}")

        if tool.side_effect == "write":
            if not policy.allows_write(name):
                log.info("tool_write_refused", tool=name, call_id=ctx.call_id)
                return _refused(
                    f"Tool {name!r} changes things and is not allowed in this conversation by "
                    "the operator's policy. It was not run. Tell the user what you would have "
                    "done instead."
                )
            if policy.needs_confirmation(tool) and ctx.call_id not in ctx.confirmed_call_ids:
                raise ConfirmationRequired(name, ctx.call_id, data)

        deadline = asyncio.timeout(tool.timeout)
        try:
            async with deadline:
                result = await tool.run(args, ctx)
        except TimeoutError:
            if not deadline.expired():  # a timeout inside the tool, not ours
                log.warning("tool_inner_timeout", tool=name, call_id=ctx.call_id)
                return _error(f"Tool {name!r} failed: an operation inside it timed out.")
            log.warning("tool_timeout", tool=name, call_id=ctx.call_id, timeout=tool.timeout)
            return _error(f"Tool {name!r} timed out after {tool.timeout:g} seconds.")
        except ToolError as exc:
            return _error(f"Tool {name!r} failed: {exc.message}")
        except ConfirmationRequired:
            raise
        except Exception as exc:
            log.exception(
                "tool_crashed", tool=name, call_id=ctx.call_id, error_type=type(exc).__name__
            )
            return _error(f"Tool {name!r} failed with an internal error.")
        return _cap(result, tool.max_output_chars)


def _error(message: str) -> ToolResult:
    return ToolResult(text=message, is_error=True)


def _refused(message: str) -> ToolResult:
    return ToolResult(text=message, is_error=True, refused=True)


def _decode_arguments(arguments: str) -> dict[str, Any] | str:
    """The arguments object, or a message saying why it is not one."""
    if arguments is None or not arguments.strip():
        return {}
    try:
        data = json.loads(arguments)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg} at position {exc.pos})."
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}."
    return data


def _describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        problems.append(f"{loc}: {err['msg']}")
    return "; ".join(problems) + "."


def _cap(result: ToolResult, cap: int) -> ToolResult:
    if len(result.text) <= cap:
        return result
    total = len(result.text)
    text = result.text[:cap] + TRUNCATION_MARKER.format(shown=cap, total=total)
    return ToolResult(
        text=text, images=result.images, is_error=result.is_error, refused=result.refused
    )


# --- canonical JSON schema -------------------------------------------------------------------

# Keys first in this order (what a reader wants first); any other key follows, sorted.
_KEY_ORDER = (
    "type",
    "description",
    "enum",
    "const",
    "default",
    "format",
    "pattern",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "items",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "additionalProperties",
    "anyOf",
    "oneOf",
    "allOf",
)
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames")
_SUBSCHEMA_LIST_KEYS = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAX_REF_DEPTH = 32


def canonical_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A strict, canonical copy of a JSON schema.

    `$ref`s to `$defs` are inlined (recursive models are rejected), `title`s dropped,
    `Optional[X] = None` simplified to `X` (not required), every object schema with declared
    properties gets `additionalProperties: false` unless it says otherwise, and keys are put in a
    fixed order. Property order is kept as declared: it is meaningful to the model.
    """
    defs = schema.get("$defs", {})
    out = _canon(schema, defs, 0)
    if out.get("type") != "object":
        raise ValueError("a tool's parameters must be a JSON object schema")
    out.setdefault("properties", {})
    return out


def _canon(node: Any, defs: dict[str, Any], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise ValueError(f"schema node must be an object, got {type(node).__name__}")
    if depth > _MAX_REF_DEPTH:
        raise ValueError("schema is recursive or too deeply nested")
    work = {k: v for k, v in node.items() if k not in ("title", "$defs", "$schema")}
    _drop_optional_null(work)
    if "$ref" in work:
        ref = work.pop("$ref")
        prefix = "#/$defs/"
        if not (isinstance(ref, str) and ref.startswith(prefix) and ref[len(prefix) :] in defs):
            raise ValueError(f"unresolvable $ref {ref!r}")
        # The referring node's own keys (description, default) win over the definition's.
        return _canon({**defs[ref[len(prefix) :]], **work}, defs, depth + 1)

    out: dict[str, Any] = {}
    for key, value in work.items():
        if key == "properties":
            out[key] = {p: _canon(s, defs, depth + 1) for p, s in value.items()}
        elif key in _SUBSCHEMA_KEYS and isinstance(value, dict):
            out[key] = _canon(value, defs, depth + 1)
        elif key in _SUBSCHEMA_LIST_KEYS:
            out[key] = [_canon(s, defs, depth + 1) for s in value]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return _ordered(out)


def _drop_optional_null(node: dict[str, Any]) -> None:
    """`anyOf: [X, {type: null}]` with default None → X (the field is optional anyway)."""
    branches = node.get("anyOf")
    if not (isinstance(branches, list) and len(branches) == 2 and node.get("default", 0) is None):
        return
    rest = [b for b in branches if b != {"type": "null"}]
    if len(rest) != 1:
        return
    del node["anyOf"]
    del node["default"]
    for key, value in rest[0].items():
        node.setdefault(key, value)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    first = [k for k in _KEY_ORDER if k in node]
    rest = sorted(k for k in node if k not in _KEY_ORDER)
    return {k: node[k] for k in first + rest}
