"""Tracing and log context with the OpenTelemetry API (no exporter here: see ``azure.monitoring``).

One run is one trace: the span of the request that starts a run is the parent of its first jobs' spans, and
each job's span the parent of the jobs it enqueues, because every job message carries the W3C
``traceparent`` of the span that sent it. Without an SDK configured the API is a no-op, but the trace context
still flows through the messages. While a job runs, every log record created gets ``flowcraft.run_id``,
``flowcraft.node_id`` and ``flowcraft.blueprint_id`` attributes, which Application Insights shows as custom
dimensions (and a formatter can print as ``%(flowcraft.run_id)s``).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .protocols import Job

__all__ = [
    "TRACEPARENT_MAX_LENGTH",
    "current_traceparent",
    "http_span",
    "job_span",
    "log_fields",
    "reconcile_span",
    "set_http_status",
    "tracer",
]

# Version 00 of a traceparent is 55 characters; later versions may append fields, so allow some room while
# keeping a job message far below the queue's 64 KB.
TRACEPARENT_MAX_LENGTH = 128
_PROPAGATOR = TraceContextTextMapPropagator()
_fields: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("flowcraft_log_fields",
                                                                                  default=None)
_factory_installed = False


def tracer() -> trace.Tracer:
    """Flowcraft's tracer, from the global tracer provider (a no-op one until an SDK is configured)."""
    return trace.get_tracer("flowcraft")


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when there is no valid one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    value = carrier.get("traceparent")
    return value if value and len(value) <= TRACEPARENT_MAX_LENGTH else None


def _parent(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    if not headers:
        return None
    carrier = {key.lower(): value for key, value in headers.items()
               if key.lower() in ("traceparent", "tracestate") and len(value) <= 512}
    # A malformed traceparent extracts to an empty context: the span then starts a new trace.
    return _PROPAGATOR.extract(carrier) if carrier else None


def _install_record_factory() -> None:
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _fields.get()
        if fields:
            for key, value in fields.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Attach these attributes to every log record created in this context (names as given)."""
    _install_record_factory()
    merged = {**(_fields.get() or {}), **fields}
    token = _fields.set(merged)
    try:
        yield
    finally:
        _fields.reset(token)


@contextmanager
def job_span(job: Job) -> Iterator[Span]:
    """The span of one job, child of the span that enqueued it; set ``flowcraft.outcome`` on it."""
    attributes: dict[str, str | int] = {"flowcraft.run_id": job.run_id, "flowcraft.node_id": job.node_id,
                                        "flowcraft.blueprint_id": job.blueprint_id,
                                        "flowcraft.iteration": job.iteration, "flowcraft.attempt": job.attempt}
    parent = _parent({"traceparent": job.traceparent} if job.traceparent else None)
    with tracer().start_as_current_span(f"flowcraft.job {job.node_id}", context=parent, kind=SpanKind.CONSUMER,
                                        attributes=attributes) as span, \
            log_fields(**{"flowcraft.run_id": job.run_id, "flowcraft.node_id": job.node_id,
                          "flowcraft.blueprint_id": job.blueprint_id}):
        try:
            yield span
        except BaseException:
            span.set_attribute("flowcraft.outcome", "error")
            raise


@contextmanager
def http_span(method: str, route: str, headers: Mapping[str, str] | None = None) -> Iterator[Span]:
    """The span of one HTTP request, child of the caller's ``traceparent`` header when it sent one."""
    with tracer().start_as_current_span(f"{method} /api/{route}", context=_parent(headers), kind=SpanKind.SERVER,
                                        attributes={"http.request.method": method,
                                                    "http.route": f"/api/{route}"}) as span:
        yield span


def set_http_status(span: Span, status: int) -> None:
    """Record the response status (a 5xx marks the span as an error)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


@contextmanager
def reconcile_span() -> Iterator[Span]:
    """The span of one reconciler pass (jobs it re-enqueues become its children)."""
    with tracer().start_as_current_span("flowcraft.reconcile", kind=SpanKind.INTERNAL) as span:
        yield span
