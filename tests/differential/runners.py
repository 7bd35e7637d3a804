"""Run one generated case on the reference interpreter and on the in-process FlowRuntime."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.runtime import FlowRuntime
from tests.differential.generator import Case
from tests.differential.outcomes import Observed, Trace
from tests.differential.stand_ins import REGISTRY, behave, normalize
from tests.reference.interpreter import Reference


def blueprints_of(case: Case) -> dict[str, WorkflowBlueprint]:
    """The case's blueprints as models, by id."""
    return {str(b["id"]): WorkflowBlueprint.model_validate(b) for b in case.blueprints}


def run_reference(case: Case) -> Observed:
    """The oracle's outcome."""
    out = Reference(blueprints_of(case), behave).run(case.blueprint_id, case.context, case.resume)
    return Observed("reference", out.status, normalize(out.context), out.counts, out.failed_node, out.error or "")


class _Recorder:
    """An event bus recording the trace in emission order (one event loop: order is exact)."""

    def __init__(self) -> None:
        self.trace = Trace(ordinal=True)
        self.tick = itertools.count()
        self.finals: Counter[str] = Counter()

    async def emit(self, event: dict[str, Any]) -> None:
        self.trace.add(event, float(next(self.tick)))
        if event.get("type") in ("workflow:finish", "workflow:cancelled"):
            self.finals[str(event["payload"]["runId"])] += 1


async def run_inprocess(case: Case, *, max_resumes: int = 5) -> Observed:
    """The in-process runtime's outcome, resuming wait nodes as the case's plan says."""
    recorder = _Recorder()
    runtime = FlowRuntime(registry=REGISTRY, blueprints=blueprints_of(case), event_bus=recorder)
    result = await runtime.run(case.blueprint_id, dict(case.context))
    for _ in range(max_resumes):
        if result.status != "awaiting" or not result.awaiting:
            break
        node_id = result.awaiting[0]
        action, output = case.resume.get(node_id, (None, None))
        result = await runtime.resume(result.run_id, action, output, node_id=node_id)
    failed = str(result.errors[0].get("nodeId")) if result.status == "failed" and result.errors else None
    detail = str(result.errors[0].get("message")) if result.errors else str(result.reason or "")
    return Observed("inprocess", result.status, normalize(result.context), recorder.trace.counts(), failed,
                    detail, trace=recorder.trace, finals=recorder.finals)
