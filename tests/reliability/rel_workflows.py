"""Nodes and blueprints of the reliability tests.

The crash-test worker subprocess imports this module as its ``FLOWCRAFT_WORKFLOWS``, so everything here
works in any process: executions are counted in Redis (through the worker's own coordination store),
under the key prefix the run carries in its initial context (``counterPrefix``), so the test process
can read the counts of a worker it runs in another process.

Every node stamps what it writes with the run's ``token`` (also from the initial context); a join
reports any value carrying another run's token, so runs mixed up under load show up in the output.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult

# In-process only: tests that pause a node mid-run (dependency outages) use these, keyed by run id.
HOLD_STARTED: dict[str, asyncio.Event] = {}
HOLD_RELEASE: dict[str, asyncio.Event] = {}
# Executions per (run id, node id) in this process (in-process workers); subprocesses count in Redis.
LOCAL_EXECUTIONS: Counter[tuple[str, str]] = Counter()


def exec_key(prefix: str, run_id: str, node_id: str) -> str:
    """The Redis counter of one node's executions in one run."""
    return f"{prefix}exec:{run_id}:{node_id}"


def final_key(prefix: str, run_id: str) -> str:
    """The Redis counter of successful final-status writes of one run."""
    return f"{prefix}final:{run_id}"


async def count_execution(ctx: NodeContext) -> str:
    """Count this execution (here, and in Redis when the run carries a counter prefix); return its token."""
    LOCAL_EXECUTIONS[(ctx.run_id, ctx.node_id)] += 1
    prefix = await ctx.context.get("counterPrefix")
    if prefix:
        coordination = ctx.dependencies["runtime"].coordination
        await coordination.redis.incr(exec_key(str(prefix), ctx.run_id, ctx.node_id))
    return str(await ctx.context.get("token") or "")


async def mark(ctx: NodeContext) -> NodeResult:
    """Write this node's own key, stamped with the run's token."""
    token = await count_execution(ctx)
    await ctx.context.set(f"k_{ctx.node_id}", {"token": token, "node": ctx.node_id})
    return NodeResult(output={"token": token, "node": ctx.node_id})


async def collect(ctx: NodeContext) -> NodeResult:
    """A join: list the ``k_*`` keys it sees and any value carrying another run's token."""
    token = await count_execution(ctx)
    everything = await ctx.context.to_dict()
    keys = sorted(k for k in everything if k.startswith("k_"))
    foreign = sorted(k for k in keys if (everything[k] or {}).get("token") != token)
    foreign += sorted(k for k, v in everything.items()
                      if k.startswith("_outputs.") and isinstance(v, dict) and "token" in v and v["token"] != token)
    await ctx.context.set(f"k_{ctx.node_id}", {"token": token, "node": ctx.node_id})
    return NodeResult(output={"token": token, "keys": keys, "foreign": foreign})


async def hold(ctx: NodeContext) -> NodeResult:
    """Like mark, but first tells the test it started and waits until the test releases it."""
    started = HOLD_STARTED.setdefault(ctx.run_id, asyncio.Event())
    release = HOLD_RELEASE.setdefault(ctx.run_id, asyncio.Event())
    started.set()
    await asyncio.wait_for(release.wait(), 60)
    return await mark(ctx)


async def route(ctx: NodeContext) -> NodeResult:
    """A router: takes the action named by the context's ``pick``."""
    await count_execution(ctx)
    pick = str(await ctx.context.get("pick") or "left")
    return NodeResult(output={"picked": pick}, action=pick)


async def square(ctx: NodeContext) -> NodeResult:
    """A batch worker."""
    await count_execution(ctx)
    value = int(ctx.input)
    return NodeResult(output=value * value)


async def increment(ctx: NodeContext) -> NodeResult:
    """A loop body: count += 1."""
    await count_execution(ctx)
    count = int(await ctx.context.get("count") or 0) + 1
    await ctx.context.set("count", count)
    return NodeResult(output=count)


async def boom(ctx: NodeContext) -> NodeResult:
    """Always fails."""
    await count_execution(ctx)
    raise RuntimeError("boom: this test node always fails")


registry: dict[str, Any] = {"mark": mark, "collect": collect, "hold": hold, "route": route, "square": square,
                            "increment": increment, "boom": boom}


def _bp(data: dict[str, Any]) -> WorkflowBlueprint:
    return WorkflowBlueprint.model_validate(data)


def fan(bp_id: str = "fan", middle: tuple[str, ...] = ("b", "c", "d"), uses: dict[str, str] | None = None
        ) -> WorkflowBlueprint:
    """a -> (middle...) -> e: a fan-out and an all-join (with three branches: the 5-node diamond)."""
    uses = uses or {}
    return _bp({
        "id": bp_id,
        "nodes": [{"id": "a", "uses": "mark"},
                  *[{"id": m, "uses": uses.get(m, "mark")} for m in middle],
                  {"id": "e", "uses": "collect"}],
        "edges": [*[{"source": "a", "target": m} for m in middle],
                  *[{"source": m, "target": "e"} for m in middle]],
    })


# Every kind of routing at once: a router whose branches meet in an any-join, a 4-way fan-out into an
# all-join, a batch scatter/gather over the context's `items`, and a counter loop of `loops` rounds.
MIXED = _bp({
    "id": "mixed",
    "nodes": [
        {"id": "start", "uses": "mark"},
        {"id": "router", "uses": "route"},
        {"id": "left", "uses": "mark"},
        {"id": "right", "uses": "mark"},
        {"id": "either", "uses": "collect", "config": {"joinStrategy": "any"}},
        *[{"id": f"f{i}", "uses": "mark"} for i in range(4)],
        {"id": "all", "uses": "collect"},
        {"id": "scatter", "uses": "batch-scatter", "inputs": "items",
         "params": {"workerUsesKey": "square", "gatherNodeId": "gather"}},
        {"id": "gather", "uses": "batch-gather", "params": {"gatherNodeId": "gather", "outputKey": "squares"}},
        {"id": "increment", "uses": "increment", "config": {"joinStrategy": "any"}},
        {"id": "loop", "uses": "loop-controller", "params": {"condition": "count < loops"},
         "config": {"joinStrategy": "any"}},
        {"id": "done", "uses": "collect"},
    ],
    "edges": [
        {"source": "start", "target": "router"},
        {"source": "router", "target": "left", "action": "left"},
        {"source": "router", "target": "right", "action": "right"},
        {"source": "left", "target": "either"},
        {"source": "right", "target": "either"},
        *[{"source": "either", "target": f"f{i}"} for i in range(4)],
        *[{"source": f"f{i}", "target": "all"} for i in range(4)],
        {"source": "all", "target": "scatter"},
        {"source": "scatter", "target": "gather"},
        {"source": "gather", "target": "increment"},
        {"source": "increment", "target": "loop"},
        {"source": "loop", "target": "increment", "action": "continue"},
        {"source": "loop", "target": "done", "action": "break"},
    ],
})

# The nodes of MIXED that are joins (several predecessors): each must execute exactly once per run.
MIXED_JOINS = ("either", "all", "gather")

blueprints: dict[str, WorkflowBlueprint] = {
    "fan": fan(),
    "held": fan("held", uses={"b": "hold"}),
    "mixed": MIXED,
    # A router whose taken branch holds (in-process tests release it); both branches meet in an any-join.
    "forked": _bp({"id": "forked",
                   "nodes": [{"id": "start", "uses": "mark"}, {"id": "router", "uses": "route"},
                             {"id": "left", "uses": "hold"}, {"id": "right", "uses": "mark"},
                             {"id": "z", "uses": "collect", "config": {"joinStrategy": "any"}}],
                   "edges": [{"source": "start", "target": "router"},
                             {"source": "router", "target": "left", "action": "left"},
                             {"source": "router", "target": "right", "action": "right"},
                             {"source": "left", "target": "z"}, {"source": "right", "target": "z"}]}),
    "failing": _bp({"id": "failing", "nodes": [{"id": "a", "uses": "mark"}, {"id": "x", "uses": "boom"},
                                               {"id": "z", "uses": "mark"}],
                    "edges": [{"source": "a", "target": "x"}, {"source": "x", "target": "z"}]}),
}
