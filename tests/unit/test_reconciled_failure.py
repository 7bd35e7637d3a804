"""A run failed by a worker and finalized by the reconciler still names its failing node (fuzz seed 158).

A worker that fails a run first marks it failed (the marker holds the reason and the errors), then writes
the final status. A reconciler pass in between finds the marker and finalizes the run itself; the worker's
own final status then loses the ETag race. The reconciler's status used to carry only the reason, so the
run's ``result.errors`` (which node failed, how) was missing.
"""

from __future__ import annotations

from typing import Any

from flowcraft_core import NodeContext
from flowcraft_core.engine import Engine, EngineOptions
from flowcraft_core.memory import InMemoryCoordinationStore, InMemoryJobQueue, InMemoryRunStore, InMemoryStatusStore
from flowcraft_core.models import WorkflowBlueprint


async def boom(ctx: NodeContext) -> Any:
    raise RuntimeError("boom on purpose")


async def test_the_reconcilers_final_status_of_a_failed_run_names_the_failing_node() -> None:
    queue = InMemoryJobQueue()
    passes: list[int] = []
    reconciling: list[str] = []

    async def reconcile_before_the_final_status(step: str, run_id: str, node_id: str | None) -> None:
        if step == "before-final" and not reconciling:  # once: the reconciler's own finalize passes here too
            reconciling.append(run_id)
            passes.append(await engine.reconcile(run_id))

    engine = Engine(registry={"boom": boom, "noop": lambda ctx: None},
                    blueprints={"fails": WorkflowBlueprint.model_validate({
                        "id": "fails", "nodes": [{"id": "a", "uses": "noop"}, {"id": "x", "uses": "boom"}],
                        "edges": [{"source": "a", "target": "x"}]})},
                    run_store=InMemoryRunStore(), status_store=InMemoryStatusStore(),
                    coordination=InMemoryCoordinationStore(), queue=queue,
                    options=EngineOptions(fault_hook=reconcile_before_the_final_status))
    run_id = await engine.start_run("fails")
    while not queue.queue.empty():
        await engine.handle_job(queue.queue.get_nowait())

    assert passes == [0]  # the reconciler ran in the window and finalized the run
    status = await engine.status_store.get(run_id)
    assert status is not None and status["status"] == "failed", status
    (error,) = status["result"]["errors"]
    assert error["nodeId"] == "x" and "boom on purpose" in error["message"], error
