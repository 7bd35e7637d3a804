"""OpenTelemetry: one distributed run is one trace, from its POST to its final status.

The HTTP function (``flowcraft_functions``) handles the POST inside a server span; the start job's message
carries that span's ``traceparent``; each job's span is the parent of the jobs it enqueues. Spans are
collected with the SDK's in-memory exporter, over real emulators and the real polling worker.
"""

from __future__ import annotations

import logging

import azure.functions as func
import pytest
from harness import Distributed, blueprint
from helpers import wait_until
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import flowcraft_functions
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.nodes import NodeContext, NodeResult

pytestmark = pytest.mark.emulators

FAN = 4
FAN_OUT = blueprint({
    "id": "traced",
    "nodes": [{"id": "fan", "uses": "step"}, *[{"id": f"b{i}", "uses": "step"} for i in range(FAN)],
              {"id": "join", "uses": "step", "config": {"joinStrategy": "all"}}],
    "edges": [*[{"source": "fan", "target": f"b{i}"} for i in range(FAN)],
              *[{"source": f"b{i}", "target": "join"} for i in range(FAN)]],
})
node_log = logging.getLogger("flowcraft.test.nodes")


async def step(ctx: NodeContext) -> NodeResult:
    node_log.info("running %s", ctx.node_id)
    return NodeResult(output=ctx.node_id)


class Context:
    """The ApiContext flowcraft_functions serves requests with, over this test's services."""

    def __init__(self, services: AzureServices) -> None:
        self._services = services
        self.settings = services.settings

    async def services(self) -> AzureServices:
        return self._services


async def test_a_fan_out_run_is_one_trace_with_correct_parents(
        distributed: Distributed, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    services = await distributed.build({"step": step}, {"traced": FAN_OUT})
    monkeypatch.setattr(flowcraft_functions, "services", Context(services))
    caplog.set_level(logging.INFO, logger="flowcraft.test.nodes")
    request = func.HttpRequest("POST", "http://localhost:7071/api/runs", headers={"content-type": "application/json"},
                               body=b'{"blueprintId": "traced", "runId": "traced-run-1"}')
    response = await flowcraft_functions.start_run(request)
    assert response.status_code == 202, response.get_body()
    status = await services.adapter.wait_for_run("traced-run-1", timeout=60, interval=0.1)
    assert status["status"] == "completed", status

    def job_spans() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.name.startswith("flowcraft.job ")]

    await wait_until(lambda: len(job_spans()) >= FAN + 2, timeout=30)  # the last span ends after the status
    finished = spans.get_finished_spans()
    (post,) = [s for s in finished if s.name == "POST /api/runs"]
    by_node: dict[str, ReadableSpan] = {}
    for span in job_spans():
        attributes = dict(span.attributes or {})
        assert attributes["flowcraft.run_id"] == "traced-run-1"
        assert attributes["flowcraft.blueprint_id"] == "traced"
        assert attributes["flowcraft.attempt"] >= 1 and attributes["flowcraft.outcome"]
        node = str(attributes["flowcraft.node_id"])
        assert node not in by_node, f"two spans for {node}"
        by_node[node] = span
    assert set(by_node) == {"fan", "join", *[f"b{i}" for i in range(FAN)]}

    def parent_of(span: ReadableSpan) -> int | None:
        return span.parent.span_id if span.parent is not None else None

    assert post.parent is None and post.context is not None
    trace_id = post.context.trace_id
    assert {s.context.trace_id for s in by_node.values() if s.context is not None} == {trace_id}
    assert dict(post.attributes or {})["http.response.status_code"] == 202
    assert parent_of(by_node["fan"]) == post.context.span_id
    fan_id = by_node["fan"].context.span_id  # type: ignore[union-attr]
    branch_ids = set()
    for i in range(FAN):
        assert parent_of(by_node[f"b{i}"]) == fan_id
        branch_ids.add(by_node[f"b{i}"].context.span_id)  # type: ignore[union-attr]
    # The join is enqueued by whichever branch released it last.
    assert parent_of(by_node["join"]) in branch_ids
    # Node logs carry the run and node ids as structured fields.
    records = [r for r in caplog.records if r.name == "flowcraft.test.nodes"]
    assert {(getattr(r, "flowcraft.run_id", None), getattr(r, "flowcraft.node_id", None)) for r in records} == {
        ("traced-run-1", node) for node in by_node}


async def test_a_job_without_traceparent_starts_its_own_trace(distributed: Distributed,
                                                              spans: InMemorySpanExporter) -> None:
    services = await distributed.build({"step": step}, {"traced": FAN_OUT})
    # Started outside any span: the start job's message has no traceparent (older senders, the CLI).
    run_id = await services.adapter.start_run("traced", {}, "untraced-1")
    assert (await services.adapter.wait_for_run(run_id, timeout=60, interval=0.1))["status"] == "completed"
    await wait_until(lambda: any(s.name == "flowcraft.job join" for s in spans.get_finished_spans()), timeout=30)
    (root,) = [s for s in spans.get_finished_spans() if s.name == "flowcraft.job fan"]
    assert root.parent is None and root.context is not None
    jobs = [s for s in spans.get_finished_spans() if s.name.startswith("flowcraft.job ")]
    assert len(jobs) == FAN + 2 and {s.context.trace_id for s in jobs if s.context} == {root.context.trace_id}


async def test_a_malformed_or_oversized_traceparent(distributed: Distributed, spans: InMemorySpanExporter) -> None:
    from flowcraft_core.azure.queue import parse_job
    from flowcraft_core.errors import InvalidJobError

    body = b'{"runId": "r-1", "blueprintId": "traced", "nodeId": "fan", "traceparent": "%s"}'
    assert parse_job(body % b"not-a-traceparent").traceparent == "not-a-traceparent"  # tolerated, ignored
    with pytest.raises(InvalidJobError, match="traceparent"):
        parse_job(body % (b"0" * 200))
    services = await distributed.build({"step": step}, {"traced": FAN_OUT}, start=False)
    # A job whose traceparent is garbage is judged on its own merits (here: an unknown run), in a trace of its own.
    with pytest.raises(InvalidJobError):
        await services.adapter.handle_message(body.replace(b"r-1", b"nope-1") % b"00-zz-zz-01")
    (span,) = [s for s in spans.get_finished_spans() if s.name == "flowcraft.job fan"
               and dict(s.attributes or {}).get("flowcraft.run_id") == "nope-1"]
    assert span.parent is None and dict(span.attributes or {})["flowcraft.outcome"] == "error"
