"""Credentials in configured URLs (runtime, Redis, SearXNG, Home Assistant, MCP) never reach a
client or the log: `/readyz`, runtime-down errors and the start-up log show them masked."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.redis_server import RedisServer, free_port
from tests.servers import serve_in_subprocess


def test_urls_are_shown_and_logged_without_credentials(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    runtime_port = free_port()  # nothing listens: the runtime is down
    env = {
        "CASCADE_RUNTIME_URL": f"http://cascade:PASS1@127.0.0.1:{runtime_port}",
        "CASCADE_REDIS_URL": redis_server.url,
        "CASCADE_SEARXNG_URL": f"http://u:PASS2@127.0.0.1:{free_port()}",
        "CASCADE_HOME_ASSISTANT_URL": f"http://u:PASS3@127.0.0.1:{free_port()}",
        "CASCADE_HOME_ASSISTANT_TOKEN": "PASS4",
        "CASCADE_MCP_SERVERS": json.dumps(
            [{"name": "house", "url": f"http://u:PASS5@127.0.0.1:{free_port()}/mcp?token=PASS6"}]
        ),
        "CASCADE_RUNTIME_MAX_RETRIES": "0",
        "CASCADE_LOG_LEVEL": "debug",
    }
    log_path = tmp_path / "serve.log"
    with serve_in_subprocess(log_path, env) as (url, _):
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["runtime"]["url"] == f"http://***@127.0.0.1:{runtime_port}"
        chat = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert chat.status_code == 503
        shown = ready.text + chat.text
    log = log_path.read_text()
    assert "api_started" in log
    assert "127.0.0.1" in log  # URLs are logged, masked
    for secret in ("PASS1", "PASS2", "PASS3", "PASS4", "PASS5", "PASS6"):
        assert secret not in shown
        assert secret not in log, secret
