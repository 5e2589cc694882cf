"""A real MCP server for the tests, written with the `mcp` package.

Run: `python -m tests.mcp_server_fixture` (stdio) or `python -m tests.mcp_server_fixture --http
PORT` (streamable HTTP on 127.0.0.1:PORT, path /mcp). Its tools:

- `add(a, b)`: the sum, as text (read-only annotation).
- `echo(text)`: the text back.
- `shout(text)`: the text upper-cased, as an MCP error result when the text is empty.
- `red_square(size)`: a red PNG, as MCP image content.
- `sleep(seconds)`: answers after a delay.
- `die()`: the process exits at once (a crashed server).
- `pid()`: the server's process id (so a test can kill it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os

from mcp.server.mcpserver import Image, MCPServer
from mcp.types import ToolAnnotations
from PIL import Image as PILImage

server = MCPServer(name="fixture", log_level="ERROR")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def add(a: int, b: int) -> str:
    """Add two integers."""
    return str(a + b)


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def shout(text: str) -> str:
    """Return the text in capitals."""
    if not text:
        raise ValueError("nothing to shout")
    return text.upper()


@server.tool()
def red_square(size: int = 8) -> Image:
    """A red square PNG of the given size."""
    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), (255, 0, 0)).save(buf, format="PNG")
    return Image(data=buf.getvalue(), format="png")


@server.tool()
async def sleep(seconds: float) -> str:
    """Answer after `seconds`."""
    await asyncio.sleep(seconds)
    return "awake"


@server.tool()
def die() -> str:
    """Exit the server process immediately."""
    os._exit(3)


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=None, help="serve streamable HTTP on PORT")
    opts = parser.parse_args()
    if opts.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=opts.http)


if __name__ == "__main__":
    main()
