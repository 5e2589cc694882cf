"""`web_search`: web search through a SearXNG instance's JSON API.

`GET {base}/search?q=...&format=json` (the instance must list `json` under `search.formats` in
its settings.yml; otherwise it answers 403, reported as such). Results are numbered
title / URL / snippet lines; SearXNG's direct `answers`, when present, come first.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tools.builtin._http import request_json
from tools.registry import Tool, ToolArgs, ToolContext, ToolError, tool

_SNIPPET_CHARS = 400
_FORMAT_DISABLED = (
    "the search service refused JSON output (HTTP 403): its operator must enable the json "
    "format in SearXNG's settings (search.formats)"
)


class WebSearchArgs(ToolArgs):
    query: str = Field(min_length=1, max_length=400, description="What to search the web for.")
    max_results: int | None = Field(
        default=None, ge=1, le=20, description="How many results to return (default 5)."
    )
    language: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2,3}(-[A-Za-z]{2})?$",
        description="Result language, e.g. en or de-CH. Default: the instance's.",
    )


def make_web_search_tool(base_url: str, *, default_results: int = 5, timeout: float = 15.0) -> Tool:
    """The web_search tool for the SearXNG instance at `base_url`."""
    endpoint = base_url.rstrip("/") + "/search"
    # The HTTP timeout sits a little inside the tool's, so a slow instance reads as "did not
    # answer in time" rather than the generic tool timeout.
    http_timeout = max(0.1, timeout * 0.8)

    @tool(name="web_search", timeout=timeout)
    async def web_search(args: WebSearchArgs, ctx: ToolContext) -> str:
        """Search the web. Returns the top results as title, URL and snippet; use fetch_url to
        read a result in full."""
        params = {"q": args.query, "format": "json"}
        if args.language:
            params["language"] = args.language
        _, data = await request_json(
            "GET",
            endpoint,
            service="the search service",
            http_timeout=http_timeout,
            params=params,
            status_hints={403: _FORMAT_DISABLED},
        )
        if not isinstance(data, dict):
            raise ToolError("the search service sent an unexpected answer")
        limit = args.max_results or default_results
        return format_results(args.query, data, limit)

    return web_search


def format_results(query: str, data: dict[str, Any], limit: int) -> str:
    """Numbered results (title, URL, snippet) from a SearXNG JSON answer."""
    lines: list[str] = []
    answers = [a for a in data.get("answers") or [] if isinstance(a, str | dict)]
    for answer in answers[:3]:
        text = answer if isinstance(answer, str) else str(answer.get("answer", ""))
        if text:
            lines.append(f"Answer: {_clean(text)}")
    results = [r for r in data.get("results") or [] if isinstance(r, dict) and r.get("url")]
    for n, item in enumerate(results[:limit], start=1):
        title = _clean(str(item.get("title") or "(no title)"))
        snippet = _clean(str(item.get("content") or ""))
        if len(snippet) > _SNIPPET_CHARS:
            snippet = snippet[:_SNIPPET_CHARS].rstrip() + "…"
        lines.append(f"{n}. {title}\n   {item['url']}" + (f"\n   {snippet}" if snippet else ""))
    if not results:
        lines.append(f"No results for {query!r}.")
    return "\n".join(lines)


def _clean(text: str) -> str:
    return " ".join(text.split())
