"""Optional OpenTelemetry tracing behind a tiny facade: `span(name, **attrs)` and `inject`.

Tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and the `cascade[otel]` extra is
installed (`setup` imports OpenTelemetry only then, so an install without it pays nothing); it
exports over OTLP/HTTP with the SDK's batch processor, configured by the standard `OTEL_*`
variables. Off, `span` is a context manager that does nothing and `inject` returns at once.

Spans: the HTTP request (`app.api.access_log`), each agent step (`app.agent.loop`), each
runtime call and each tool call. Each runtime request carries the W3C `traceparent` of its
span (`inject`, from `app.runtime.client`), so the runtime's own traces join cascade's.

A span is made current for the code inside it (OpenTelemetry's context, a context variable).
A span opened in an async generator may be closed from another context (a stream closed by
another task); its detach is then skipped rather than logged as an error.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from typing import Any

import structlog

log = structlog.get_logger(__name__)

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


def enabled() -> bool:
    return _tracer is not None


def setup(service_name: str) -> bool:
    """Turn tracing on for this process if it is asked for and installed; whether it is on."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing_unavailable",
            detail="OTEL_EXPORTER_OTLP_ENDPOINT is set but the cascade[otel] extra is not "
            "installed: no traces",
        )
        return False
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    log.info("tracing_enabled", service=service_name)
    return True


def use_provider(provider: Any) -> None:
    """Trace through `provider` (an SDK `TracerProvider`; tests give one with an in-memory
    exporter); None turns tracing off."""
    global _tracer
    _tracer = provider.get_tracer("cascade") if provider is not None else None


def shutdown() -> None:
    """Flush and stop the exporter (at process exit); a no-op when tracing is off."""
    global _tracer
    if _tracer is None:
        return
    from opentelemetry.sdk.trace import TracerProvider

    provider = getattr(_tracer, "_tracer_provider", None)  # not part of the Tracer API
    _tracer = None
    if isinstance(provider, TracerProvider):
        provider.shutdown()


@contextlib.contextmanager
def span(name: str, **attrs: Any) -> Iterator[None]:
    """A span around the block, current inside it; an exception marks it failed. With
    tracing off, nothing. Attribute values must be str, bool, int or float (None is left out)."""
    if _tracer is None:
        yield
        return
    from opentelemetry import context, trace
    from opentelemetry.trace import Status, StatusCode

    current = _tracer.start_span(name, attributes={k: v for k, v in attrs.items() if v is not None})
    token = context.attach(trace.set_span_in_context(current))
    try:
        yield
    except (GeneratorExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        current.end()
        _detach(token)


def _detach(token: object) -> None:
    if isinstance(token, contextvars.Token):
        # Reset by hand: OpenTelemetry's `detach` logs an error when the block ended in another
        # context (see the module docstring), where there is nothing to undo.
        with contextlib.suppress(ValueError, RuntimeError):
            token.var.reset(token)
        return
    from opentelemetry import context

    context.detach(token)  # type: ignore[arg-type]


def inject(headers: dict[str, str]) -> None:
    """Add the current span's `traceparent` (W3C trace context) to a request's headers."""
    if _tracer is None:
        return
    from opentelemetry import propagate

    propagate.inject(headers)
