"""HTTP calls to services the operator configured (SearXNG, Home Assistant).

These URLs come from operator config, not from the model, so they may be on the local network
and are not put through the SSRF-safe fetcher. Redirects are never followed (a credential must
not travel to another origin), bodies are read up to a cap, and every failure becomes a
`ToolError` that names the service and the kind of failure, never the upstream error text.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tools.registry import ToolError

DEFAULT_MAX_BYTES = 4 * 1024 * 1024


async def request_json(
    method: str,
    url: str,
    *,
    service: str,
    http_timeout: float,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    json_body: Any = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    client: httpx.AsyncClient | None = None,
    status_hints: dict[int, str] | None = None,
) -> tuple[int, Any]:
    """Send one request; return (status, decoded JSON body) for a 2xx answer.

    `http_timeout` bounds the whole exchange (connection, request, whole body); callers set it
    inside their tool's timeout so a slow service reads as "did not answer in time".

    Raises `ToolError` for connection failures, timeouts, non-2xx statuses, bodies over
    `max_bytes` and bodies that are not JSON. A status in `status_hints` is reported with that
    message; other 4xx statuses with their number only.
    """
    own = client is None
    http = client or httpx.AsyncClient(
        timeout=http_timeout, follow_redirects=False, trust_env=False
    )
    # httpx's timeout bounds each phase (connect, each read); this bounds the whole exchange.
    deadline = asyncio.timeout(http_timeout)
    try:
        async with (
            deadline,
            http.stream(method, url, headers=headers, params=params, json=json_body) as response,
        ):
            status = response.status_code
            if not 200 <= status < 300:
                hint = (status_hints or {}).get(status)
                raise ToolError(hint or _status_message(service, status))
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body.extend(chunk)
                if len(body) > max_bytes:
                    raise ToolError(f"{service} sent an answer larger than {max_bytes} bytes")
    except (httpx.TimeoutException, TimeoutError):
        raise ToolError(f"{service} did not answer in time") from None
    except httpx.HTTPError:
        raise ToolError(f"{service} cannot be reached") from None
    finally:
        if own:
            await http.aclose()
    if not body:
        return status, None
    try:
        return status, json.loads(bytes(body))
    except ValueError:
        raise ToolError(f"{service} sent an answer that is not JSON") from None


def _status_message(service: str, status: int) -> str:
    if status in (401, 403):
        return f"{service} refused the request (HTTP {status}): check cascade's credentials"
    if status == 404:
        return f"{service} has no such resource (HTTP 404)"
    if 300 <= status < 400:
        return f"{service} answered with a redirect (HTTP {status}), which is not followed"
    if status >= 500:
        return f"{service} had an internal error (HTTP {status})"
    return f"{service} rejected the request (HTTP {status})"
