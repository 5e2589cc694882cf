"""Tracing with the OpenTelemetry SDK's in-memory exporter: the span tree of a two-step tool
turn, and the traceparent each runtime request carried."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from tests.integration.conftest import Cascade
from tests.integration.test_agent_tools import Recorder, call, register_tools
from tests.integration.test_batch_support import wait_until
from tests.sglang_sim.script import Rule
from tests.sglang_sim.testing import SimHandle


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_provider(None)
        provider.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_two_step_tool_turn_is_one_trace_passed_on_to_the_runtime(
    exporter: InMemorySpanExporter, client: OpenAI, cascade: Cascade, sim: SimHandle
) -> None:
    register_tools(cascade, Recorder())
    sim.sim.add_rule(Rule(match="look up", output=call("lookup", key="a"), times=1))
    sim.sim.add_rule(Rule(match="look up", output="It is value-of-a."))
    answer = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "look up a"}],
        extra_body={"server_tools": ["lookup"]},
    )
    assert answer.choices[0].message.content == "It is value-of-a."

    # The request's span ends just after its response was sent.
    wait_until(
        lambda: any(s.name == "http_request" for s in exporter.get_finished_spans()),
        5,
        "the request's span",
    )
    spans = exporter.get_finished_spans()
    (request,) = [s for s in spans if s.name == "http_request"]
    assert request.attributes is not None and request.attributes["path"] == "/v1/chat/completions"
    assert request.parent is None
    steps = sorted((s for s in spans if s.name == "agent_step"), key=lambda s: s.start_time or 0)
    assert [s.attributes["step"] for s in steps if s.attributes] == [1, 2]
    assert all(parent_of(s) == request.context.span_id for s in steps)
    calls = sorted((s for s in spans if s.name == "runtime_call"), key=lambda s: s.start_time or 0)
    assert [parent_of(s) for s in calls] == [s.context.span_id for s in steps]
    (tool,) = [s for s in spans if s.name == "tool_call"]
    assert tool.attributes is not None and tool.attributes["tool"] == "lookup"
    assert parent_of(tool) == steps[0].context.span_id
    trace_id = request.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}

    # version-trace id-parent span id-flags: each request names its runtime call's span.
    seen = [(r.traceparent or "").split("-")[:3] for r in sim.sim.requests]
    assert seen == [["00", f"{trace_id:032x}", f"{s.context.span_id:016x}"] for s in calls]


def test_without_a_provider_spans_do_nothing_and_no_header_is_sent(
    client: OpenAI, sim: SimHandle
) -> None:
    assert not tracing.enabled()
    with tracing.span("unused", attr="x"):
        pass
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert [r.traceparent for r in sim.sim.requests] == [None]
