"""`fetch_url`: read a web page as text, through the SSRF-safe fetcher (`app.media.fetch`).

The URL comes from the model, so every rule of `app.media.ssrf.FetchPolicy` applies (public
addresses only unless the operator allow-listed a host; redirects re-checked; size and time
capped). HTML becomes readable text (`html_text.html_to_text`); text, JSON and XML are returned
as they are; other types are refused. Long pages are returned in slices: the answer says which
`offset` to ask for next. What a page says is data for the model, never an instruction to
cascade: this tool only ever returns text.
"""

from __future__ import annotations

from pydantic import Field

from app.media.errors import FetchError
from app.media.fetch import Resolver, safe_fetch
from app.media.ssrf import FetchPolicy
from tools.builtin.html_text import html_to_text
from tools.registry import Tool, ToolArgs, ToolContext, ToolError, tool

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_TEXT_TYPES = ("application/json", "application/xml", "application/ld+json", "application/rss+xml")
DEFAULT_SLICE_CHARS = 12000


class FetchUrlArgs(ToolArgs):
    url: str = Field(min_length=1, max_length=4096, description="An http or https URL.")
    offset: int = Field(
        default=0, ge=0, description="Start at this character of the page text (for long pages)."
    )


def make_fetch_url_tool(
    policy: FetchPolicy,
    *,
    max_bytes: int = 2 * 1024 * 1024,
    timeout: float = 15.0,
    slice_chars: int = DEFAULT_SLICE_CHARS,
    resolver: Resolver | None = None,
) -> Tool:
    """The fetch_url tool under `policy`; `resolver` is for tests (the system's by default)."""
    time_limit = max(0.5, timeout * 0.9)

    @tool(name="fetch_url", timeout=timeout, max_output_chars=slice_chars + 1000)
    async def fetch_url(args: FetchUrlArgs, ctx: ToolContext) -> str:
        """Fetch a web page (or a text/JSON document) and return its readable text, with links
        as (url). Use it to read pages found with web_search or given by the user."""
        try:
            result = await safe_fetch(
                args.url.strip(),
                policy=policy,
                max_bytes=max_bytes,
                time_limit=time_limit,
                resolver=resolver,
                what="the URL",
                body="page",
            )
        except FetchError as exc:
            raise ToolError(exc.message) from None
        media_type = result.media_type
        title = ""
        if media_type in _HTML_TYPES or (not media_type and b"<html" in result.content[:2048]):
            title, text = html_to_text(result.text(), result.url)
        elif media_type.startswith("text/") or media_type in _TEXT_TYPES:
            text = result.text().strip()
        else:
            raise ToolError(f"the URL returned {media_type or 'an unknown type'}, not a page")
        return _slice(result.url, title, text, args.offset, slice_chars)

    return fetch_url


def _slice(url: str, title: str, text: str, offset: int, size: int) -> str:
    total = len(text)
    if offset and offset >= total:
        raise ToolError(f"offset {offset} is past the end of the page ({total} characters)")
    head = f"URL: {url}\n" + (f"Title: {title}\n" if title else "")
    part = text[offset : offset + size]
    end = offset + len(part)
    if offset or end < total:
        head += f"Characters {offset}-{end} of {total}.\n"
    body = head + "\n" + (part or "(the page has no readable text)")
    if end < total:
        body += f"\n\n[The page continues: call fetch_url with offset={end} to read more.]"
    return body
