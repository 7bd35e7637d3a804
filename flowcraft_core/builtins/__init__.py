"""Node types every runtime provides without registration (see README, "Built-in nodes")."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..context import input_key, output_key
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


def _child_value(context: dict[str, Any], key: str) -> Any:
    value = context.get(output_key(key))
    return context.get(key) if value is None else value


async def subflow_node(ctx: NodeContext) -> NodeResult:
    """Run another blueprint to completion and map its outputs back (inputs: child<-parent keys)."""
    from ..runtime import FlowRuntime

    params = ctx.params
    blueprint_id = params.get("blueprintId")
    if blueprint_id is None:
        raise FlowcraftError(f"subflow node {ctx.node_id!r} is missing params.blueprintId")
    blueprint_id = str(blueprint_id)
    engine = ctx.dependencies["runtime"]
    if blueprint_id not in engine.blueprints:
        raise FlowcraftError(f"subflow node {ctx.node_id!r}: blueprint {blueprint_id!r} is not registered")
    child_bp = engine.blueprints[blueprint_id]
    initial: dict[str, Any] = {}
    inputs = params.get("inputs")
    if isinstance(inputs, dict):
        for child_key, parent_key in inputs.items():
            value = await ctx.context.get(str(parent_key))
            if value is None:
                value = await ctx.context.get(output_key(str(parent_key)))
            initial[child_key] = value
    elif ctx.input is not None:
        from ..graph import compile_graph

        for start in compile_graph(child_bp).start_node_ids:
            initial[input_key(start)] = ctx.input

    child = FlowRuntime(registry=engine.registry,
                        dependencies={k: v for k, v in engine.dependencies.items() if k != "runtime"},
                        evaluator=engine.evaluator, event_bus=engine.events, middleware=engine.middleware)
    # The parent's blueprints were linted when registered: share them instead of linting every one again
    # for each child run.
    child.engine.blueprints.update(engine.blueprints)
    child.engine.broken.update(engine.broken)
    run_id = f"{ctx.run_id}.{ctx.node_id}"
    watcher = asyncio.create_task(_forward_cancel(ctx, child, run_id))
    try:
        result = await child.run(blueprint_id, initial, run_id=run_id, _trusted_id=True)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if result.status != "completed":
        detail = result.errors[0].get("message") if result.errors else result.reason
        raise FlowcraftError(f"subflow {blueprint_id!r} ended {result.status}: {detail}")
    final = result.context
    outputs = params.get("outputs")
    if isinstance(outputs, dict) and outputs:
        for parent_key, child_key in outputs.items():
            await ctx.context.set(str(parent_key), _child_value(final, str(child_key)))
        return NodeResult(output=final)
    terminals = child.engine.graph(blueprint_id).terminal_node_ids
    if len(terminals) == 1:
        return NodeResult(output=final.get(output_key(terminals[0])))
    return NodeResult(output={t: final.get(output_key(t)) for t in terminals})


async def _forward_cancel(ctx: NodeContext, child: Any, run_id: str) -> None:
    await ctx.signal.wait()
    with contextlib.suppress(FlowcraftError):
        await child.cancel(run_id, ctx.signal.reason or "parent run cancelled")


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
