"""The overhead bench's floor: a session turn with none of cascade's logic, served as cascade is.

A bare ASGI app (no framework) doing what a chat turn with a session minimally must, and nothing
else: read the JSON body (orjson); for a `session_id`, read the session's messages from Redis
(one GET, redis-py); POST the runtime request (model, messages, `max_completion_tokens`, and
for a stream the `stream_options` cascade asks for, so the runtime sends the same events) with
aiohttp; write the messages and the answer back (one SET); answer the JSON, or relay the
runtime's SSE stream event by event, each parsed and re-serialised as a `chat.completion.chunk`.
A request without `session_id` but with `store: true` starts a session. No validation, no
tools, no retries, no idempotency, no lock.

Served by uvicorn with the options `app.api.server.server_config` gives cascade (the loop
uvicorn picks, uvloop here; httptools; no access log; the same keep-alive) but httptools' own
protocol, and an aiohttp session configured as cascade's runtime client's is.

Run: `python -m tests.bench.floor_app --port P --redis-url URL --runtime-url URL`.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import uvicorn
import yarl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_TOKENS = 4096
SESSION_TTL_S = 86400
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def session_key(session_id: str) -> str:
    return f"floor:session:{session_id}"


class FloorApp:
    """The ASGI app; its Redis client and HTTP session are opened at lifespan startup."""

    def __init__(self, runtime_url: str, redis_url: str, model: str) -> None:
        self.chat_url = yarl.URL(runtime_url.rstrip("/") + "/v1/chat/completions")
        self.redis_url = redis_url
        self.model = model
        self.redis: aioredis.Redis | None = None
        self.http: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] != "http":
            return
        elif scope["path"] == "/healthz":
            await _answer(send, 200, {"status": "ok"})
        elif scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            await self._chat(orjson.loads(await _body(receive)), send)
        else:
            await _answer(send, 404, {"error": {"message": "not found"}})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.redis = aioredis.Redis.from_url(self.redis_url)
                self.http = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=256, limit_per_host=0, keepalive_timeout=4
                    ),
                    headers={"content-type": "application/json"},
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=3, sock_connect=3, sock_read=300
                    ),
                    skip_auto_headers=("User-Agent",),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.http is not None:
                    await self.http.close()
                if self.redis is not None:
                    await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _chat(self, request: dict[str, Any], send: Send) -> None:
        assert self.redis is not None and self.http is not None
        session_id: str | None = request.get("session_id")
        history: list[Any] = []
        if session_id is not None:
            stored = await self.redis.get(session_key(session_id))
            if stored is None:
                await _answer(send, 404, {"error": {"message": "no such session"}})
                return
            history = orjson.loads(stored)
        elif request.get("store"):
            session_id = "sess_" + secrets.token_hex(12)
        messages = [*history, *request["messages"]]
        stream = bool(request.get("stream"))
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": stream,
            "max_completion_tokens": MAX_TOKENS,
        }
        if stream:
            payload["stream_options"] = STREAM_OPTIONS
        finish_reason: Any = None
        usage: Any = None
        async with self.http.post(self.chat_url, data=orjson.dumps(payload)) as response:
            if response.status != 200:
                await _answer(send, 502, {"error": {"message": f"runtime {response.status}"}})
                return
            if stream:
                content = await self._relay(response, request.get("model"), session_id, send)
            else:
                answer = orjson.loads(await response.read())
                choice = answer["choices"][0]
                content = choice["message"].get("content") or ""
                finish_reason, usage = choice.get("finish_reason"), answer.get("usage")
        if session_id is not None:
            turn = [*messages, {"role": "assistant", "content": content}]
            await self.redis.set(session_key(session_id), orjson.dumps(turn), ex=SESSION_TTL_S)
        if stream:
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        out = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
            "session_id": session_id,
        }
        await _answer(send, 200, out)

    async def _relay(
        self, response: aiohttp.ClientResponse, model: Any, session_id: str | None, send: Send
    ) -> str:
        """Relay the runtime's events as chunks, line by line; the answer's text."""
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        head = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        parts: list[str] = []
        first = True
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].rstrip()
            if data == b"[DONE]":  # read on to the end, so the connection is reused
                continue
            event = orjson.loads(data)
            choices = event.get("choices")
            if not choices:  # the usage event
                continue
            choice = choices[0]
            delta = choice.get("delta") or {}
            out: dict[str, Any] = {}
            if delta.get("role"):
                out["role"] = delta["role"]
            text = delta.get("content")
            if text is not None:
                out["content"] = text
                parts.append(text)
            chunk: dict[str, Any] = {
                **head,
                "choices": [
                    {"index": 0, "delta": out, "finish_reason": choice.get("finish_reason")}
                ],
            }
            if first and session_id is not None:
                chunk["session_id"] = session_id
            first = False
            body = b"data: " + orjson.dumps(chunk) + b"\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": True})
        return "".join(parts)


async def _body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(parts)


async def _answer(send: Send, status: int, content: Any) -> None:
    body = orjson.dumps(content)
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--runtime-url", required=True)
    parser.add_argument("--model", default="qwen3.6-27b-cascade")
    args = parser.parse_args()
    app = FloorApp(args.runtime_url, args.redis_url, args.model)
    # As app.api.server.server_config, but httptools' own protocol (no header timer or cap).
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
