"""Operating cascade: /metrics after a scripted mix (API and a worker process), its auth rules,
the access log (one line per request, no secrets) and the Grafana dashboard's metric names."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from app.api.app import create_app
from app.batches.config import load_batch_settings
from app.batches.lines import ResultRecord
from app.batches.queue import JobQueue, QueueItem
from app.config import Settings
from app.metrics import door_of
from tests.integration.conftest import Cascade, cascade_settings
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.integration.test_batch_support import (
    FAST,
    WorkerProcess,
    batch_env,
    read_lines,
    request_line,
    upload_jsonl,
    wait_final,
    wait_until,
)
from tests.redis_server import RedisServer
from tests.servers import serve_in_thread
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-observability-test-5f0c2e9a1b7d"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Api:
    url: str
    app: Any
    settings: Settings
    calls: Counter[str]
    clients: list[OpenAI] = field(default_factory=list)

    def client(self) -> OpenAI:
        """An SDK client whose answered requests are counted by door in `calls`."""

        def count(response: httpx.Response) -> None:
            self.calls[door_of(response.request.url.path)] += 1

        http = httpx.Client(event_hooks={"response": [count]}, timeout=60)
        client = OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0, http_client=http)
        self.clients.append(client)
        return client


@pytest.fixture
def api(sim: SimHandle, redis_server: RedisServer, tmp_path: Path) -> Iterator[Api]:
    settings = cascade_settings(sim, redis_server, api_keys=KEY, state_dir=tmp_path / "state")
    app = create_app(settings, batch_settings=load_batch_settings(**FAST))
    with serve_in_thread(app) as url:
        handle = Api(url, app, settings, Counter())
        yield handle
        for client in handle.clients:
            client.close()


def scrape(url: str, key: str | None = KEY) -> Samples:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def with_worker(samples: Samples, worker: str) -> dict[str, float]:
    return {
        name + str(sorted((k, v) for k, v in labels if k != "worker")): v
        for (name, labels), v in samples.items()
        if ("worker", worker) in labels
    }


def test_metrics_count_a_scripted_mix_of_turns_and_a_worker_batch(
    api: Api, sim: SimHandle, tmp_path: Path
) -> None:
    register_tools(Cascade(api.url, api.app, api.settings), Recorder())
    sim.sim.add_rule(Rule(match="look up", output=call("lookup", key="a"), times=1))
    sim.sim.add_rule(Rule(match="look up", output="It is value-of-a."))
    sim.sim.add_rule(Rule(match="ghost", output=call("no_such_tool", key="a"), times=1))
    sim.sim.add_rule(Rule(match="ghost", output="No such tool, sorry."))
    sim.sim.config.ignore_thinking_budget = True
    loop = "I keep thinking about this. " * 400
    sim.sim.add_rule(Rule(match="loop", continuation=False, output=loop + "</think>\n\nlate"))
    sim.sim.add_rule(Rule(match="loop", continuation=True, output="The short answer."))
    sim.sim.add_rule(Rule(match=None, output="An answer."))
    client = api.client()
    before = scrape(api.url)

    usages = []
    plain = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    usages.append(plain.usage)
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "stream it"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usages.append(chunks[-1].usage)
    tools = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "look up a"}],
        extra_body={"server_tools": ["lookup"]},
    )
    assert tools.choices[0].message.content == "It is value-of-a."
    usages.append(tools.usage)
    ghost = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "ghost call"}],
        extra_body={"server_tools": ["lookup"]},
    )
    usages.append(ghost.usage)
    budget = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "loop please"}],
        extra_body={"thinking": True, "thinking_budget": 64},
    )
    assert budget.choices[0].message.content == "The short answer."
    usages.append(budget.usage)

    worker = WorkerProcess(api.settings, batch_env(batch_metrics_interval=0.2), tmp_path, "wm")
    worker.start()
    try:
        file_id = upload_jsonl(client, [request_line("one", "first"), request_line("two", "2nd")])
        batch = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_final(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 2
        outputs = read_lines(client, done.output_file_id)
        name = worker.current_name

        def worker_pushed_both() -> bool:
            pushed = with_worker(scrape(api.url), name)
            return pushed.get("cascade_worker_items_total[('outcome', 'completed')]") == 2

        wait_until(worker_pushed_both, 20, "the worker's pushed metrics")
        after = scrape(api.url)
    finally:
        assert worker.stop() == 0

    served = api.app.state.services.runtime_client.served_model
    assert served
    for door, answered in api.calls.items():
        counted = sum(
            v - value(before, n, **dict(labels))
            for (n, labels), v in after.items()
            if n == "cascade_http_requests_total" and ("door", door) in labels
        )
        assert counted == answered, door
    requests = delta(
        before, after, "cascade_http_requests_total", door="chat", status="200", model=served
    )
    assert requests == 5
    assert delta(before, after, "cascade_http_request_duration_seconds_count", door="chat") == 5
    assert delta(before, after, "cascade_http_time_to_first_byte_seconds_count", door="chat") == 5
    for kind, attr in (("prompt", "prompt_tokens"), ("completion", "completion_tokens")):
        told = sum(getattr(u, attr) for u in usages)
        assert delta(before, after, "cascade_tokens_total", door="chat", kind=kind) == told
    assert delta(before, after, "cascade_budget_guard_interventions_total", reason="overrun") == 1
    assert delta(before, after, "cascade_tool_calls_total", tool="lookup", outcome="ok") == 1
    assert delta(before, after, "cascade_tool_calls_total", tool="unknown", outcome="refused") == 1
    assert value(after, "cascade_metrics_redis_ok") == 1
    assert value(after, "cascade_batch_queue_in_flight", lane="items") == 0
    assert value(after, "cascade_batch_queue_waiting", lane="items") == 0
    assert value(after, "cascade_batch_queue_delayed") == 0

    pushed = with_worker(after, name)
    assert pushed["cascade_worker_items_total[('outcome', 'completed')]"] == 2
    batch_prompt = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in outputs)
    assert pushed["cascade_tokens_total[('door', 'batch'), ('kind', 'prompt')]"] == batch_prompt
    assert pushed["process_resident_memory_bytes[]"] > 0
    # A worker that stopped is gone from /metrics at once.
    assert with_worker(scrape(api.url), name) == {}


async def test_retries_and_dead_letters_are_counted_by_the_queue(
    api: Api, redis_server: RedisServer
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        queue = JobQueue(client, prefix="cascade")
        await queue.ensure_group()
        batch_id = "batch_" + "ab" * 12
        await client.hset(queue.keys.batch(batch_id), "status", "in_progress")
        item = QueueItem("", batch_id, "c1", 1, "local", 1, b"{}")
        before = await asyncio.to_thread(scrape, api.url)
        assert await queue.retry_later(item, due=time.time() + 600, worker="w")
        assert await queue.dead_letter(item, ResultRecord("error", {"id": "x"}), worker="w")
        assert not await queue.dead_letter(item, ResultRecord("error", {"id": "x"}), worker="w")
        after = await asyncio.to_thread(scrape, api.url)
    finally:
        await client.aclose()
    assert delta(before, after, "cascade_batch_items_retried_total") == 1
    assert delta(before, after, "cascade_batch_items_dead_total") == 1  # written once
    assert value(after, "cascade_batch_queue_delayed") == 1


def test_metrics_need_a_key_unless_public(
    sim: SimHandle, redis_server: RedisServer, tmp_path: Path
) -> None:
    def served(**overrides: Any) -> Iterator[str]:
        settings = cascade_settings(sim, redis_server, state_dir=tmp_path, **overrides)
        return serve_in_thread(create_app(settings))  # type: ignore[return-value]

    with served(api_keys=KEY) as url:  # type: ignore[attr-defined]
        assert httpx.get(url + "/metrics").status_code == 401
        wrong = httpx.get(url + "/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert (
            "cascade_http_requests_total"
            in httpx.get(url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
        )
    with served(api_keys=KEY, metrics_public=True) as url:  # type: ignore[attr-defined]
        assert httpx.get(url + "/metrics").status_code == 200
    with served() as url:  # type: ignore[attr-defined]
        # Auth off (loopback only): open, as the API is.
        assert httpx.get(url + "/metrics").status_code == 200


def test_one_access_log_line_per_request_and_no_secret_in_any(api: Api, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=None, output="An answer."))
    client = api.client()
    headers = {"authorization": f"Bearer {KEY}"}
    with capture_logs() as logs:
        stored = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "remember this"}],
            extra_body={"store": True},
        )
        list(
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "stream"}], stream=True
            )
        )
        missing = httpx.get(
            api.url + "/v1/batches/batch_0123456789abcdef01234567?token=hidden-query-value",
            headers=headers,
        )
        refused = httpx.get(api.url + "/v1/models", headers={"authorization": "Bearer wrong"})
        ollama = httpx.get(api.url + "/api/tags", headers=headers)
        # A line is written just after its response was sent.
        wait_until(lambda: sum(e["event"] == "http_request" for e in logs) >= 5, 5, "lines")
    assert missing.status_code == 404 and refused.status_code == 401
    assert ollama.status_code == 200
    lines = [e for e in logs if e["event"] == "http_request"]
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("POST", "/v1/chat/completions", 200),
        ("POST", "/v1/chat/completions", 200),
        ("GET", "/v1/batches/{batch_id}", 404),
        ("GET", "/v1/models", 401),
        ("GET", "/api/tags", 200),
    ]
    session_id = stored.model_extra["session_id"] if stored.model_extra else None  # type: ignore[index]
    first, streamed = lines[0], lines[1]
    assert session_id and first["session_id"] == session_id
    assert first["prompt_tokens"] == stored.usage.prompt_tokens  # type: ignore[union-attr]
    assert first["completion_tokens"] == stored.usage.completion_tokens  # type: ignore[union-attr]
    assert streamed["completion_tokens"] > 0 and streamed["latency_ms"] > 0
    assert len({e["request_id"] for e in lines}) == 5
    owner = next(iter(api.settings.api_key_digests.values()))
    assert [e["key_id"] for e in lines] == [owner, owner, owner, None, owner]
    text = json.dumps(logs, default=str)
    assert KEY not in text and "hidden-query-value" not in text and "wrong" not in text


def test_conversation_and_response_ids_reach_the_access_log(api: Api, sim: SimHandle) -> None:
    sim.sim.add_rule(Rule(match=None, output="An answer."))
    client = api.client()
    with capture_logs() as logs:
        conversation = client.conversations.create()
        client.conversations.retrieve(conversation.id)
        response = client.responses.create(model="m", input="hi", conversation=conversation.id)
        wait_until(lambda: sum(e["event"] == "http_request" for e in logs) >= 3, 5, "lines")
    lines = [e for e in logs if e["event"] == "http_request"]
    assert [(e["path"], e["session_id"]) for e in lines] == [
        ("/v1/conversations", conversation.id),
        ("/v1/conversations/{conversation_id}", conversation.id),
        ("/v1/responses", conversation.id),
    ]
    assert lines[2]["response_id"] == response.id


def test_every_metric_the_dashboard_queries_is_exported(cascade: Cascade) -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "cascade.json").read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(exprs) >= 10
    queried = {name for expr in exprs for name in re.findall(r"\b(?:cascade|process)_\w+", expr)}
    text = httpx.get(cascade.url + "/metrics").text
    exported = set(re.findall(r"^# TYPE (\S+) (\w+)", text, re.M))
    names = set()
    for name, kind in exported:
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    assert sorted(queried - names) == []
