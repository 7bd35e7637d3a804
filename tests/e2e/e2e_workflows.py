"""The workflows module the end-to-end tests deploy (FLOWCRAFT_WORKFLOWS=e2e_workflows).

The sample app's registry and blueprints, plus test-only blueprints for the flows the use cases do not
exercise: a long sleep to cancel, a human approval to resume, a webhook, a node that fails, and a node
that crashes its worker.
"""

from __future__ import annotations

from typing import Any

import workflows
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult


class SimulatedWorkerCrash(BaseException):
    """Not an Exception: the engine turns exceptions into node failures, but a dying worker escapes it.

    A real crash (out of memory, a killed process) ends the invocation without the engine recording
    anything; the queue redelivers the message until the host moves it to the poison queue. Raising a
    BaseException models that without killing the host under test.
    """


async def echo(ctx: NodeContext) -> NodeResult:
    """Output the node's input (or its params.value), so routes are visible in the context."""
    return NodeResult(output=ctx.params.get("value", ctx.input))


async def record_approval(ctx: NodeContext) -> NodeResult:
    """Store what the approver sent (the wait node's output) under a context key."""
    await ctx.context.set("decision", {"node": ctx.node_id, "input": ctx.input})
    return NodeResult(output=ctx.node_id)


async def always_fails(ctx: NodeContext) -> NodeResult:
    """An ordinary node failure: the engine fails the run; the message itself succeeds."""
    raise RuntimeError("the payment provider said no")


async def crash_worker(ctx: NodeContext) -> NodeResult:
    """A crash the engine cannot catch: the message is retried and finally poisoned."""
    raise SimulatedWorkerCrash(f"worker died while running {ctx.node_id}")


def _bp(bp_id: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> WorkflowBlueprint:
    return WorkflowBlueprint.model_validate({"id": bp_id, "nodes": nodes, "edges": edges,
                                             "metadata": {"version": "e2e-1"}})


_TEST_BLUEPRINTS = [
    _bp("e2e-sleep", [
        {"id": "start", "uses": "echo", "params": {"value": "started"}},
        {"id": "nap", "uses": "sleep", "params": {"duration": 60_000}},
        {"id": "after_nap", "uses": "echo"},
    ], [{"source": "start", "target": "nap"}, {"source": "nap", "target": "after_nap"}]),
    _bp("e2e-approval", [
        {"id": "draft", "uses": "echo", "params": {"value": "a draft"}},
        {"id": "approval", "uses": "wait"},
        {"id": "approved", "uses": "record-approval"},
        {"id": "rejected", "uses": "record-approval"},
    ], [
        {"source": "draft", "target": "approval"},
        {"source": "approval", "target": "approved", "action": "approve"},
        {"source": "approval", "target": "rejected", "action": "reject"},
    ]),
    _bp("e2e-webhook", [
        {"id": "order", "uses": "echo", "params": {"value": {"orderId": 7}}},
        {"id": "payment", "uses": "webhook"},
        {"id": "ship", "uses": "echo"},
    ], [{"source": "order", "target": "payment"}, {"source": "payment", "target": "ship"}]),
    _bp("e2e-fail", [
        {"id": "charge", "uses": "always-fails", "config": {"maxRetries": 1}},
        {"id": "receipt", "uses": "echo"},
    ], [{"source": "charge", "target": "receipt"}]),
    _bp("e2e-crash", [
        {"id": "explode", "uses": "crash-worker", "config": {"maxRetries": 1}},
        {"id": "never", "uses": "echo"},
    ], [{"source": "explode", "target": "never"}]),
]

registry: dict[str, Any] = {**workflows.registry, "echo": echo, "record-approval": record_approval,
                            "always-fails": always_fails, "crash-worker": crash_worker}
blueprints: dict[str, WorkflowBlueprint] = {**workflows.blueprints, **{bp.id: bp for bp in _TEST_BLUEPRINTS}}
