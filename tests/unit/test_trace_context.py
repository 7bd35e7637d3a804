"""Trace context in job messages and run/node ids on log records, without emulators (in-memory spans)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowcraft_core import telemetry
from flowcraft_core.azure.queue import AzureJobQueue, parse_job
from flowcraft_core.errors import InvalidJobError
from flowcraft_core.protocols import Job


class RecordingQueueClient:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_message(self, content: str, visibility_timeout: int | None = None) -> None:
        self.sent.append(json.loads(base64.b64decode(content)))


async def test_no_span_no_traceparent() -> None:
    client = RecordingQueueClient()
    await AzureJobQueue(client).enqueue(Job("run-1", "bp", "a"))  # type: ignore[arg-type]
    assert client.sent == [{"runId": "run-1", "blueprintId": "bp", "nodeId": "a"}]
    assert telemetry.current_traceparent() is None


async def test_a_job_enqueued_inside_a_span_carries_its_traceparent(spans: InMemorySpanExporter) -> None:
    client = RecordingQueueClient()
    with telemetry.http_span("POST", "runs") as span:
        await AzureJobQueue(client).enqueue(Job("run-1", "bp", "a"))  # type: ignore[arg-type]
        context = span.get_span_context()
    (message,) = client.sent
    assert message["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")
    assert len(message["traceparent"]) <= telemetry.TRACEPARENT_MAX_LENGTH
    job = parse_job(json.dumps(message))
    with telemetry.job_span(job) as child:
        assert child.get_span_context().trace_id == context.trace_id
    (job_span,) = [s for s in spans.get_finished_spans() if s.name == "flowcraft.job a"]
    assert job_span.parent is not None and job_span.parent.span_id == context.span_id


def test_traceparent_is_optional_and_size_checked() -> None:
    assert parse_job('{"runId": "r", "blueprintId": "b", "nodeId": "n"}').traceparent is None
    with pytest.raises(InvalidJobError, match="traceparent"):
        parse_job(json.dumps({"runId": "r", "blueprintId": "b", "nodeId": "n", "traceparent": "0" * 129}))


def test_job_span_puts_run_and_node_ids_on_log_records(spans: InMemorySpanExporter,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcraft.test")
    with telemetry.job_span(Job("run-9", "bp-9", "node-9", attempt=3)) as span:
        logging.getLogger("flowcraft.test").info("inside")
        span.set_attribute("flowcraft.outcome", "completed")
    logging.getLogger("flowcraft.test").info("outside")
    inside, outside = caplog.records
    assert (getattr(inside, "flowcraft.run_id"), getattr(inside, "flowcraft.node_id"),
            getattr(inside, "flowcraft.blueprint_id")) == ("run-9", "node-9", "bp-9")
    assert not hasattr(outside, "flowcraft.run_id")
    (finished,) = spans.get_finished_spans()
    assert dict(finished.attributes or {}) == {
        "flowcraft.run_id": "run-9", "flowcraft.node_id": "node-9", "flowcraft.blueprint_id": "bp-9",
        "flowcraft.iteration": 0, "flowcraft.attempt": 3, "flowcraft.outcome": "completed"}


def test_a_failing_job_span_records_the_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError), telemetry.job_span(Job("run-8", "bp", "n")):
        raise RuntimeError("node crashed")
    (finished,) = spans.get_finished_spans()
    assert dict(finished.attributes or {})["flowcraft.outcome"] == "error"
    assert finished.status.status_code == trace.StatusCode.ERROR
    assert any(event.name == "exception" for event in finished.events)
