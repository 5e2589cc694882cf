"""Tools from MCP servers (Model Context Protocol), through the `mcp` package.

Each configured server (a stdio command or a streamable-HTTP URL, see `McpServerConfig`) gets
one connection, owned by a background task of `McpManager`. At `start()` every server is
connected and its tools are listed and registered in the `ToolRegistry` as `server.tool`;
`refresh()` lists them again (reconnecting servers that are down).

Naming: a tool `t` of server `s` is exposed as `s.t`, with any character outside
`[A-Za-z0-9_.-]` replaced by `_` and the whole cut to 64 characters. Dots pass through
SGLang's qwen3_coder tool-call parser unchanged (it reads the name up to `>`); a client that
needs OpenAI's stricter `^[A-Za-z0-9_-]+$` never sees these names, because server tools are
run by cascade, not returned to the client. Names that collide after this mapping are skipped
with a warning. The manager keeps the exposed → original mapping, so no name is ever split.

Failure: a server that cannot be started, dies, or closes its connection makes its tools fail
with a clear tool error; the service goes on. A call to a server that is down tries to
reconnect at most once per `reconnect_interval` seconds. Calls run under the tool's timeout.

Trust: every MCP tool is a `write` tool unless the operator lists it in the server's
`read_tools`; a server's own `readOnlyHint` is not taken on its word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import jsonschema
import mcp_types
import structlog
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, Implementation

from app import __version__
from app.errors import CascadeError
from tools.config import McpServerConfig
from tools.registry import (
    SideEffect,
    Tool,
    ToolArgs,
    ToolArgumentsError,
    ToolContext,
    ToolError,
    ToolRegistry,
    ToolResult,
    canonical_schema,
)

log = structlog.get_logger("cascade.tools.mcp")

MAX_DESCRIPTION_CHARS = 2000
_CLOSE_TIMEOUT = 10.0
_LIST_PAGE_CAP = 50
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def exposed_name(server: str, tool_name: str) -> str:
    """The registry name of MCP tool `tool_name` of `server` (see the module docstring)."""
    return (server + "." + _NAME_BAD_CHARS.sub("_", tool_name))[:64]


class _RawArgs(ToolArgs):
    """Placeholder model: MCP tools validate against their JSON schema instead."""


@dataclass
class _Listed:
    original: str
    description: str
    schema: dict[str, Any]


class McpTool(Tool):
    """A tool of an MCP server, validated against the server's (canonicalised) input schema."""

    def __init__(
        self,
        *,
        connection: _Connection,
        listed: _Listed,
        name: str,
        side_effect: SideEffect,
        timeout: float,
        max_output_chars: int,
    ) -> None:
        super().__init__(
            name=name,
            description=listed.description,
            args_model=_RawArgs,
            side_effect=side_effect,
            timeout=timeout,
            max_output_chars=max_output_chars,
        )
        self.server = connection.config.name
        self.original_name = listed.original
        self._connection = connection
        self._schema = listed.schema
        self._validator = jsonschema.Draft202012Validator(listed.schema)

    def parameters_schema(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(json.dumps(self._schema))
        return result

    def parse_arguments(self, data: dict[str, Any]) -> Any:
        problems = []
        for err in sorted(self._validator.iter_errors(data), key=lambda e: list(e.path)):
            loc = ".".join(str(p) for p in err.path) or "(arguments)"
            problems.append(f"{loc}: {err.message}")
        if problems:
            raise ToolArgumentsError("; ".join(problems[:10]) + ".")
        return data

    async def run(self, args: Any, ctx: ToolContext) -> ToolResult:
        result = await self._connection.call(self.original_name, args, self.timeout)
        return await _convert_result(result, ctx)


class _Connection:
    """One MCP server: a background task holds the client session open until `close()`."""

    def __init__(
        self,
        config: McpServerConfig,
        *,
        errlog: Any = None,
        reconnect_interval: float = 30.0,
    ) -> None:
        self.config = config
        self.client: Client | None = None
        self.error: str | None = "not started"
        self.listed: list[_Listed] = []
        self._errlog = errlog
        self._reconnect_interval = reconnect_interval
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self._last_attempt = float("-inf")

    @property
    def connected(self) -> bool:
        return self.client is not None

    def _transport(self) -> Any:
        cfg = self.config
        if cfg.command is not None:
            params = StdioServerParameters(
                command=cfg.command, args=list(cfg.args), env=cfg.env, cwd=cfg.cwd
            )
            if self._errlog is not None:
                return stdio_client(params, errlog=self._errlog)
            return stdio_client(params)
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        http = httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(cfg.connect_timeout, read=300.0),
            trust_env=False,
        )
        return _HttpTransport(str(cfg.url), http)

    async def connect(self) -> None:
        """Connect (if not connected) and list the tools; on failure record why and raise."""
        async with self._lock:
            if self.client is not None:
                return
            self._last_attempt = time.monotonic()
            ready = asyncio.Event()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(
                self._own(ready, self._stop), name=f"mcp:{self.config.name}"
            )
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    await ready.wait()
            except TimeoutError:
                self.error = f"did not start within {self.config.connect_timeout:g}s"
                await self._halt()
                raise ToolError(f"MCP server {self.config.name!r} {self.error}") from None
            if self.client is None:
                await self._halt()
                raise ToolError(f"MCP server {self.config.name!r} is not available: {self.error}")
        await self.list_tools()

    async def _own(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        # The client's context (and the anyio task group inside it) is entered and left in
        # this one task, as anyio requires.
        try:
            async with Client(
                self._transport(),
                cache=None,
                client_info=Implementation(name="cascade", version=__version__),
            ) as client:
                self.client = client
                self.error = None
                ready.set()
                await stop.wait()
        except Exception as exc:  # recorded; the service goes on
            self.error = _describe_failure(exc)
            log.warning("mcp_server_failed", server=self.config.name, error=self.error)
        finally:
            self.client = None
            ready.set()

    async def list_tools(self) -> None:
        client = self._require()
        listed: list[_Listed] = []
        cursor: str | None = None
        try:
            for _ in range(_LIST_PAGE_CAP):
                page = await client.list_tools(cursor=cursor)
                for item in page.tools:
                    entry = _listed(self.config.name, item)
                    if entry is not None:
                        listed.append(entry)
                cursor = page.next_cursor
                if cursor is None:
                    break
        except Exception as exc:
            await self._lost(exc)
            raise ToolError(f"MCP server {self.config.name!r} could not list its tools") from None
        self.listed = listed

    async def call(
        self, name: str, arguments: dict[str, Any], read_timeout: float
    ) -> CallToolResult:
        if self.client is None:
            if time.monotonic() - self._last_attempt < self._reconnect_interval:
                raise ToolError(
                    f"MCP server {self.config.name!r} is not available ({self.error}); "
                    "try again later"
                )
            await self.connect()
        client = self._require()
        try:
            return await client.call_tool(name, arguments, read_timeout_seconds=read_timeout)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                await self._lost(exc)
                raise ToolError(
                    f"MCP server {self.config.name!r} stopped (connection closed) while "
                    "running the tool; it is not available now"
                ) from None
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ToolError(f"MCP server {self.config.name!r} did not answer in time") from None
            raise ToolError(
                f"MCP server {self.config.name!r} refused the call: {exc.message[:500]}"
            ) from None
        except (OSError, RuntimeError, EOFError) as exc:
            await self._lost(exc)
            raise ToolError(f"MCP server {self.config.name!r} is not reachable") from None

    def _require(self) -> Client:
        if self.client is None:
            raise ToolError(f"MCP server {self.config.name!r} is not available ({self.error})")
        return self.client

    async def _lost(self, exc: BaseException) -> None:
        self.error = _describe_failure(exc)
        log.warning("mcp_server_lost", server=self.config.name, error=self.error)
        await self._halt()

    async def _halt(self) -> None:
        """Stop the owner task (closing the client, and a stdio server process with it).

        A connected client is asked to close (its stdio transport stops the process within a
        few seconds); one still in its handshake is cancelled at once. Either way the wait is
        bounded.
        """
        task, self._task = self._task, None
        if self._stop is not None:
            self._stop.set()
        if task is None:
            self.client = None
            return
        if self.client is None:
            task.cancel()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except (asyncio.CancelledError, Exception):
            # Our own cancel of a task in its handshake, or a failure _own already recorded;
            # a cancellation of the caller itself is passed on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        self.client = None

    async def close(self) -> None:
        async with self._lock:
            await self._halt()
            self.error = "closed"


class _HttpTransport:
    """streamable_http_client plus the closing of the HTTP client it was given."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._http = http
        self._cm = streamable_http_client(url, http_client=http)

    async def __aenter__(self) -> Any:
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._cm.__aexit__(*exc)
        finally:
            await self._http.aclose()


class McpManager:
    """Owns the MCP connections and keeps their tools in a `ToolRegistry`.

    `start()` connects every server (a server that fails is logged and left out; the others
    still start), `refresh()` re-lists tools on demand, `aclose()` stops everything.
    """

    def __init__(
        self,
        servers: Sequence[McpServerConfig],
        registry: ToolRegistry,
        *,
        default_timeout: float = 15.0,
        max_output_chars: int = 16000,
        reconnect_interval: float = 30.0,
        errlog: Any = None,
    ) -> None:
        self._registry = registry
        self._default_timeout = default_timeout
        self._max_output_chars = max_output_chars
        self._connections = {
            s.name: _Connection(s, errlog=errlog, reconnect_interval=reconnect_interval)
            for s in servers
        }
        self._exposed: dict[str, list[str]] = {name: [] for name in self._connections}

    async def start(self) -> None:
        """Connect every server and register its tools; never raises for a server's failure."""
        await asyncio.gather(*(self._sync(name, reconnect=True) for name in self._connections))

    async def refresh(self, server: str | None = None) -> None:
        """List tools again (reconnecting servers that are down) and update the registry."""
        names = [server] if server is not None else list(self._connections)
        for name in names:
            if name not in self._connections:
                raise KeyError(f"unknown MCP server {name!r}")
        await asyncio.gather(*(self._sync(name, reconnect=True) for name in names))

    async def aclose(self) -> None:
        """Close every connection (stdio servers are stopped) and unregister their tools."""
        await asyncio.gather(*(c.close() for c in self._connections.values()))
        for name in self._connections:
            self._set_tools(name, [])

    def status(self) -> dict[str, str | None]:
        """Server name → None when connected, else why it is not."""
        return {name: c.error for name, c in self._connections.items()}

    def tool_names(self, server: str | None = None) -> list[str]:
        """Registered tool names of one server or of all."""
        if server is not None:
            return sorted(self._exposed.get(server, []))
        return sorted(n for names in self._exposed.values() for n in names)

    async def _sync(self, name: str, *, reconnect: bool) -> None:
        conn = self._connections[name]
        try:
            if conn.connected:
                await conn.list_tools()
            elif reconnect:
                await conn.connect()
        except ToolError as exc:
            log.warning("mcp_server_unavailable", server=name, error=exc.message)
        # Tools of a server that is down stay registered: calling them tries a reconnect and
        # otherwise fails with a clear error, and the prompt's tool list stays stable.
        if conn.connected or not self._exposed[name]:
            self._set_tools(name, conn.listed if conn.connected else [])

    def _set_tools(self, server: str, listed: list[_Listed]) -> None:
        for old in self._exposed[server]:
            self._registry.unregister(old)
        self._exposed[server] = []
        conn = self._connections[server]
        cfg = conn.config
        for entry in listed:
            name = exposed_name(server, entry.original)
            if name in self._registry:
                log.warning("mcp_tool_name_taken", server=server, tool=entry.original, name=name)
                continue
            tool = McpTool(
                connection=conn,
                listed=entry,
                name=name,
                side_effect="read" if entry.original in cfg.read_tools else "write",
                timeout=cfg.timeout or self._default_timeout,
                max_output_chars=self._max_output_chars,
            )
            self._registry.register(tool)
            self._exposed[server].append(name)


def _listed(server: str, item: mcp_types.Tool) -> _Listed | None:
    try:
        schema = canonical_schema(dict(item.input_schema or {"type": "object"}))
        jsonschema.Draft202012Validator.check_schema(schema)
    except (ValueError, jsonschema.SchemaError):
        log.warning("mcp_tool_schema_unusable", server=server, tool=item.name)
        return None
    description = (item.description or item.title or item.name).strip()
    if len(description) > MAX_DESCRIPTION_CHARS:
        description = description[:MAX_DESCRIPTION_CHARS].rstrip() + "…"
    return _Listed(original=item.name, description=description, schema=schema)


def _describe_failure(exc: BaseException) -> str:
    """A short, secret-free reason: what kind of failure, never the exceptions' text."""
    leaves = list(_leaves(exc))
    if any(isinstance(e, MCPError) and e.code == mcp_types.CONNECTION_CLOSED for e in leaves):
        return "connection closed"
    if any(isinstance(e, FileNotFoundError) for e in leaves):
        return "command not found"
    if any(isinstance(e, httpx2.ConnectError | ConnectionError) for e in leaves):
        return "cannot connect"
    return "failed (" + ", ".join(sorted({type(e).__name__ for e in leaves})) + ")"


def _leaves(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup) and depth < 8:
        for inner in exc.exceptions:
            yield from _leaves(inner, depth + 1)
    else:
        yield exc


async def _convert_result(result: CallToolResult, ctx: ToolContext) -> ToolResult:
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            texts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent):
            part = await _image_part(block.data, block.mime_type, ctx)
            if part is None:
                texts.append("[an image was returned but cannot be shown here]")
            else:
                images.append(part)
        elif isinstance(block, mcp_types.EmbeddedResource):
            res = block.resource
            if isinstance(res, mcp_types.TextResourceContents):
                texts.append(res.text)
            else:
                texts.append(f"[binary resource {res.uri} omitted]")
        elif isinstance(block, mcp_types.ResourceLink):
            texts.append(f"[resource: {block.uri}]")
        else:
            texts.append(f"[{getattr(block, 'type', 'unknown')} content omitted]")
    if not texts and result.structured_content is not None:
        texts.append(json.dumps(result.structured_content, ensure_ascii=False, sort_keys=True))
    return ToolResult(text="\n".join(texts), images=images, is_error=bool(result.is_error))


async def _image_part(data: str, mime_type: str, ctx: ToolContext) -> dict[str, Any] | None:
    """Store an MCP image through the media intake (the same checks as a user's data: URI)."""
    if ctx.media is None:
        return None
    try:
        ref = await ctx.media.ingest(f"data:{mime_type};base64,{data}", owner=ctx.owner)
    except CascadeError as exc:
        log.info("mcp_image_unusable", code=exc.code)
        return None
    part: dict[str, Any] = ref.to_part()
    return part
