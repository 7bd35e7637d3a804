"""Node types every runtime provides without registration (see README, "Built-in nodes")."""

from __future__ import annotations

from typing import Any

from ..children import SUBFLOW_DIRECTIVE, subflow_spec
from ..context import output_key
from ..errors import FlowcraftError
from ..nodes import NodeContext, NodeResult
from .durations import duration_ms
from .names import (
    BATCH_GATHER,
    BATCH_SCATTER,
    BUILTIN_NODE_TYPES,
    LOOP_CONTROLLER,
    SLEEP,
    SUBFLOW,
    WAIT,
    WEBHOOK,
)


async def sleep_node(ctx: NodeContext) -> NodeResult:
    """Pause the branch for ``params.duration`` (ms or "5s"-style) without holding a worker; passes its input on."""
    try:
        duration = duration_ms(ctx.params.get("duration"))
    except ValueError as exc:
        raise FlowcraftError(f"sleep node {ctx.node_id!r}: {exc}") from None
    return NodeResult(output=ctx.input, directives={"sleep_seconds": duration / 1000})


async def wait_node(ctx: NodeContext) -> NodeResult:
    """Human in the loop: the run awaits ``resume(run, action, output)``."""
    return NodeResult(directives={"await": "wait"})


async def webhook_node(ctx: NodeContext) -> NodeResult:
    """Like wait, resumed by ``POST /api/webhooks/{runId}/{nodeId}`` with the body as output."""
    return NodeResult(directives={"await": "webhook"})


async def subflow_node(ctx: NodeContext) -> NodeResult:
    """Start a child run of ``params.blueprintId`` (inputs: child<-parent keys); see flowcraft_core.children.

    The node only says what to start; the engine commits it as a child run and completes the node
    (outputs mapped back) when that run ends, without holding a worker meanwhile.
    """
    blueprint_id = subflow_spec(ctx.params, ctx.node_id, ctx.dependencies["runtime"].blueprints)
    initial: dict[str, Any] = {}
    inputs = ctx.params.get("inputs")
    if isinstance(inputs, dict):
        for child_key, parent_key in inputs.items():
            value = await ctx.context.get(str(parent_key))
            if value is None:
                value = await ctx.context.get(output_key(str(parent_key)))
            initial[str(child_key)] = value
    spec: dict[str, Any] = {"blueprintId": blueprint_id, "context": initial}
    if not isinstance(inputs, dict) and ctx.input is not None:
        spec["input"] = ctx.input
    return NodeResult(directives={SUBFLOW_DIRECTIVE: spec})


async def batch_scatter_node(ctx: NodeContext) -> NodeResult:
    """Fan a list out to one dynamic worker node per item (``workerUsesKey``), gathered by ``gatherNodeId``."""
    items = ctx.input if ctx.input is not None else []
    if not isinstance(items, list):
        raise FlowcraftError(f"batch-scatter node {ctx.node_id!r} needs a list as input, got "
                             f"{type(items).__name__}")
    worker = ctx.params.get("workerUsesKey")
    gather = ctx.params.get("gatherNodeId")
    if not worker or not gather:
        raise FlowcraftError(f"batch-scatter node {ctx.node_id!r} needs params.workerUsesKey and "
                             "params.gatherNodeId")
    worker_params = ctx.params.get("workerParams") or {}
    worker_ids = [f"{ctx.node_id}_{i}" for i in range(len(items))]
    dynamic = []
    for i, item in enumerate(items):
        item_key = f"_batch.{ctx.node_id}.{i}"
        await ctx.context.set(item_key, item)
        dynamic.append({"id": worker_ids[i], "uses": worker, "inputs": item_key, "params": worker_params,
                        "gatherNodeId": gather, "batchSize": len(items), "batchIndex": i})
    await ctx.context.set(f"{gather}_allWorkerIds", worker_ids)
    await ctx.context.set(f"{gather}_hasMore", False)
    return NodeResult(output={"gatherNodeId": gather, "hasMore": False},
                      dynamic_nodes=dynamic or None)


async def batch_gather_node(ctx: NodeContext) -> NodeResult:
    """Collect the workers' outputs in input order into ``params.outputKey`` (and the node's output)."""
    gather = ctx.params.get("gatherNodeId") or ctx.node_id
    worker_ids = await ctx.context.get(f"{gather}_allWorkerIds") or []
    results = [await ctx.context.get(output_key(w)) for w in worker_ids]
    out_key = ctx.params.get("outputKey") or ctx.node_id
    await ctx.context.set(str(out_key), results)
    return NodeResult(output=results)


async def loop_controller_node(ctx: NodeContext) -> NodeResult:
    """Decide whether a loop runs again: action ``continue`` while the condition holds, else ``break``."""
    from ..context import nested_view

    condition = ctx.params.get("condition")
    if not isinstance(condition, str) or not condition.strip():
        raise FlowcraftError(f"loop-controller {ctx.node_id!r} needs params.condition")
    limit = ctx.params.get("maxIterations", 1000)
    counter_key = f"_loop.{ctx.node_id}.iterations"
    done = int(await ctx.context.get(counter_key) or 0) + 1
    engine = ctx.dependencies["runtime"]
    nested = nested_view(await ctx.context.to_dict())
    scope = {**nested, "context": nested, "input": ctx.input, "iteration": done}
    keep_going = bool(engine.evaluator.evaluate(condition, scope))
    if keep_going and done >= int(limit):
        if ctx.params.get("onMaxIterations", "fail") == "break":
            keep_going = False
        else:
            raise FlowcraftError(f"loop {ctx.node_id!r} reached maxIterations={limit} while its condition "
                                 f"{condition!r} still held")
    # The counter restarts when the loop exits so that an enclosing loop can run it again.
    await ctx.context.set(counter_key, done if keep_going else 0)
    # Flowcraft's controller has no output (null): the loop's body and exit read the context instead.
    return NodeResult(output=None, action="continue" if keep_going else "break")


BUILTIN_IMPLEMENTATIONS: dict[str, Any] = {
    SLEEP: sleep_node,
    WAIT: wait_node,
    WEBHOOK: webhook_node,
    SUBFLOW: subflow_node,
    BATCH_SCATTER: batch_scatter_node,
    BATCH_GATHER: batch_gather_node,
    LOOP_CONTROLLER: loop_controller_node,
}
assert set(BUILTIN_IMPLEMENTATIONS) == BUILTIN_NODE_TYPES

__all__ = ["BUILTIN_IMPLEMENTATIONS", "BUILTIN_NODE_TYPES"]
