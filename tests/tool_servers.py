"""Local HTTP servers the tool tests call, on 127.0.0.1 in a background thread.

- `HomeAssistantServer`: the parts of Home Assistant's REST API the tools use: `GET /api/`,
  `GET /api/states`, `GET /api/states/<entity_id>` (404 `{"message": "Entity not found."}`),
  `POST /api/services/<domain>/<service>` (answers the list of states it changed; 400 for an
  unknown service), all behind `Authorization: Bearer <token>` (401 otherwise).
- `SearxngServer`: SearXNG's `GET /search?q=...&format=json` answer shape (`query`,
  `number_of_results`, `results` of `{url, title, content, engine, score}`, `answers`, …);
  403 when `format` is not json, as an instance without the json format does.
- `PageServer`: fixed pages by path (HTML, text, redirects) for `fetch_url`.

Each records the requests it got (`requests`) and can be made to fail: `fail_status` answers
every request with that status; `delay` sleeps before answering (a slow server). `stop()`
releases sleeping handlers at once.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, data: Any) -> Reply:
    return Reply(status, json.dumps(data).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LocalServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection (or giving up on a slow answer) is normal.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        rec = Recorded(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        with owner.lock:
            owner.requests.append(rec)
        if owner.delay:
            owner.released.wait(owner.delay)
        if owner.fail_status is not None:
            reply = json_reply(owner.fail_status, {"message": "simulated failure"})
        else:
            reply = owner.route(rec)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_GET = _handle
    do_POST = _handle
    do_HEAD = _handle


class LocalServer:
    """A threaded HTTP server on 127.0.0.1; subclasses implement `route`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.fail_status: int | None = None
        self.delay: float = 0.0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._httpd.server_address[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def route(self, req: Recorded) -> Reply:
        raise NotImplementedError


def ha_state(entity_id: str, state: str, **attributes: Any) -> dict[str, Any]:
    return {
        "entity_id": entity_id,
        "state": state,
        "attributes": attributes,
        "last_changed": "2025-01-01T12:00:00+00:00",
        "last_updated": "2025-01-01T12:00:00+00:00",
        "context": {"id": "01J000000000000000000000", "parent_id": None, "user_id": None},
    }


class HomeAssistantServer(LocalServer):
    """A small Home Assistant: entities with states; light/switch services change them."""

    SERVICES: ClassVar[dict[str, set[str]]] = {
        "light": {"turn_on", "turn_off", "toggle"},
        "switch": {"turn_on", "turn_off", "toggle"},
        "lock": {"lock", "unlock"},
    }

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.states: dict[str, dict[str, Any]] = {
            s["entity_id"]: s
            for s in (
                ha_state("light.kitchen", "off", friendly_name="Kitchen light"),
                ha_state("light.porch", "on", friendly_name="Porch light", brightness=180),
                ha_state("switch.heater", "off", friendly_name="Heater"),
                ha_state("lock.front_door", "locked", friendly_name="Front door"),
                ha_state(
                    "sensor.outside_temperature",
                    "21.5",
                    friendly_name="Outside temperature",
                    unit_of_measurement="°C",
                ),
            )
        }

    def route(self, req: Recorded) -> Reply:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return json_reply(401, {"message": "401: Unauthorized"})
        parts = req.path.strip("/").split("/")
        if req.method == "GET" and req.path == "/api/":
            return json_reply(200, {"message": "API running."})
        if req.method == "GET" and parts[:2] == ["api", "states"]:
            if len(parts) == 2:
                return json_reply(200, list(self.states.values()))
            state = self.states.get(parts[2])
            if state is None:
                return json_reply(404, {"message": "Entity not found."})
            return json_reply(200, state)
        if req.method == "POST" and parts[:2] == ["api", "services"] and len(parts) == 4:
            return self._call(parts[2], parts[3], json.loads(req.body or b"{}"))
        return json_reply(404, {"message": "Not found"})

    def _call(self, domain: str, service: str, data: dict[str, Any]) -> Reply:
        if service not in self.SERVICES.get(domain, set()):
            return json_reply(400, {"message": f"Service {domain}.{service} not found."})
        targets = data.get("entity_id", [])
        if isinstance(targets, str):
            targets = [targets]
        changed = []
        for entity_id in targets:
            state = self.states.get(entity_id)
            if state is None or not entity_id.startswith(domain + "."):
                continue
            new = {
                "turn_on": "on",
                "turn_off": "off",
                "toggle": "off" if state["state"] == "on" else "on",
                "lock": "locked",
                "unlock": "unlocked",
            }[service]
            state["state"] = new
            for key, value in data.items():
                if key != "entity_id":
                    state["attributes"][key] = value
            changed.append(state)
        return json_reply(200, changed)


class SearxngServer(LocalServer):
    """A SearXNG-shaped search: results are made up from the query."""

    def __init__(self, results: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        super().__init__()
        self.results = results or self.default_results

    @staticmethod
    def default_results(query: str) -> list[dict[str, Any]]:
        return [
            {
                "url": f"https://example.org/{n}",
                "title": f"Result {n} about {query}",
                "content": f"Snippet {n}: all about {query}.",
                "engine": "duckduckgo",
                "engines": ["duckduckgo"],
                "score": 1.0 / n,
                "category": "general",
            }
            for n in range(1, 13)
        ]

    def route(self, req: Recorded) -> Reply:
        if req.path != "/search":
            return Reply(404, b"Not Found", "text/plain")
        if req.query.get("format") != ["json"]:
            return Reply(403, b"Forbidden", "text/html")
        query = (req.query.get("q") or [""])[0]
        results = self.results(query)
        return json_reply(
            200,
            {
                "query": query,
                "number_of_results": len(results),
                "results": results,
                "answers": [],
                "corrections": [],
                "infoboxes": [],
                "suggestions": [],
                "unresponsive_engines": [],
            },
        )


class PageServer(LocalServer):
    """Fixed pages: path → Reply."""

    def __init__(self, pages: dict[str, Reply] | None = None) -> None:
        super().__init__()
        self.pages: dict[str, Reply] = dict(pages or {})

    def route(self, req: Recorded) -> Reply:
        return self.pages.get(req.path, Reply(404, b"<h1>Not found</h1>", "text/html"))


def html_page(body: str, *, status: int = 200, charset: str = "utf-8") -> Reply:
    return Reply(status, body.encode(charset), f"text/html; charset={charset}")
