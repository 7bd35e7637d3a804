"""Subflows as durable child runs on the real emulators (issue 11; SPEC cases 10 and 24, distributed).

A subflow node starts a child run with its own status item and one job per child node; the parent's
job ends, and the parent node completes when the child's end enqueues its continuation. These tests
drive the adapter's polling worker over Azurite, the Cosmos DB stand-in and Redis, and assert on
status items, stored contexts and per-run execution counts (waiting on conditions, never on time).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from harness import Distributed, blueprint
from helpers import wait_until

from flowcraft_core import CollectingEventBus
from flowcraft_core.azure.queue import AzureJobQueue
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.http_api import get_run, purge
from flowcraft_core.nodes import NodeContext, NodeResult
from flowcraft_core.protocols import Job

RUN_TIMEOUT = 60.0


class Calls:
    """Executions per (run id, node id)."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, str]] = Counter()

    def hit(self, ctx: NodeContext) -> None:
        self.count[(ctx.run_id, ctx.node_id)] += 1

    def of_node(self, node_id: str) -> int:
        return sum(n for (_, node), n in self.count.items() if node == node_id)


def registry(calls: Calls) -> dict[str, Any]:
    async def step(ctx: NodeContext) -> NodeResult:
        calls.hit(ctx)
        return NodeResult(output={"node": ctx.node_id, "input": ctx.input})

    async def double(ctx: NodeContext) -> NodeResult:
        calls.hit(ctx)
        return NodeResult(output=2 * int(await ctx.context.get("n") or 0))

    async def until_cancelled(ctx: NodeContext) -> NodeResult:
        calls.hit(ctx)
        await asyncio.wait_for(ctx.signal.wait(), 30)
        return NodeResult(output="stopped")

    return {"step": step, "double": double, "until-cancelled": until_cancelled}


def _sub(node_id: str, child: str, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": "subflow", "params": {"blueprintId": child, **params}}


BLUEPRINTS = {bp.id: bp for bp in (
    # three levels: top -> mid -> leaf, the leaf waits for approval
    blueprint({"id": "leaf", "nodes": [{"id": "l1", "uses": "step"}, {"id": "gate", "uses": "wait"},
                                       {"id": "l2", "uses": "step"}],
               "edges": [{"source": "l1", "target": "gate"}, {"source": "gate", "target": "l2",
                                                               "action": "approve"}]}),
    blueprint({"id": "mid", "nodes": [{"id": "m1", "uses": "step"},
                                      _sub("inner", "leaf", outputs={"leafDone": "l2"}),
                                      {"id": "m2", "uses": "step"}],
               "edges": [{"source": "m1", "target": "inner"}, {"source": "inner", "target": "m2"}]}),
    blueprint({"id": "top", "nodes": [{"id": "t1", "uses": "step"},
                                      _sub("outer", "mid", outputs={"midDone": "m2", "leafDone": "leafDone"}),
                                      {"id": "t2", "uses": "step"}],
               "edges": [{"source": "t1", "target": "outer"}, {"source": "outer", "target": "t2"}]}),
    # twenty subflow nodes under an all-join
    blueprint({"id": "doubler", "nodes": [{"id": "work", "uses": "double"}], "edges": []}),
    blueprint({"id": "fan20",
               "nodes": [{"id": "start", "uses": "step"}, {"id": "join", "uses": "step"},
                         *[_sub(f"s{i:02d}", "doubler", inputs={"n": f"n{i:02d}"}, outputs={f"r{i:02d}": "work"})
                           for i in range(20)]],
               "edges": [*[{"source": "start", "target": f"s{i:02d}"} for i in range(20)],
                         *[{"source": f"s{i:02d}", "target": "join"} for i in range(20)]]}),
    # a plain parent and child, and a child that runs until cancelled
    blueprint({"id": "child2", "nodes": [{"id": "c1", "uses": "step"}, {"id": "c2", "uses": "step"}],
               "edges": [{"source": "c1", "target": "c2"}]}),
    blueprint({"id": "parent2", "nodes": [{"id": "p1", "uses": "step"}, _sub("sub", "child2", outputs={"got": "c2"}),
                                          {"id": "p2", "uses": "step"}],
               "edges": [{"source": "p1", "target": "sub"}, {"source": "sub", "target": "p2"}]}),
    blueprint({"id": "longchild", "nodes": [{"id": "long", "uses": "until-cancelled"}, {"id": "after", "uses": "step"}],
               "edges": [{"source": "long", "target": "after"}]}),
    blueprint({"id": "longparent", "nodes": [_sub("sub", "longchild"), {"id": "next", "uses": "step"}],
               "edges": [{"source": "sub", "target": "next"}]}),
)}


async def build(distributed: Distributed, calls: Calls, **extra: Any) -> AzureServices:
    return await distributed.build(registry(calls), BLUEPRINTS, **extra)


async def final(services: AzureServices, run_id: str) -> dict[str, Any]:
    return await services.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)


def child_starts(bus: CollectingEventBus, parent: str) -> list[str]:
    return [e["payload"]["runId"] for e in bus.of_type("workflow:start")
            if e["payload"].get("parentRunId") == parent]


async def test_three_levels_with_a_wait_in_the_deepest(distributed: Distributed) -> None:
    calls = Calls()
    services = await build(distributed, calls)
    adapter = services.adapter
    top = await adapter.start_run("top", {})

    status = await final(services, top)
    assert status["status"] == "awaiting", status
    (mid_entry,) = status["awaitingChildren"]
    assert mid_entry["nodeId"] == "outer"
    mid = await adapter.get_status(mid_entry["runId"])
    assert mid is not None and mid["status"] == "awaiting"
    assert mid["parentRunId"] == top and mid["parentNodeId"] == "outer"
    (leaf_entry,) = mid["awaitingChildren"]
    leaf = await adapter.get_status(leaf_entry["runId"])
    assert leaf is not None and leaf["status"] == "awaiting" and leaf["awaiting"] == ["gate"]
    assert leaf["parentRunId"] == mid["runId"] and leaf["parentNodeId"] == "inner"

    # Resume through the top-level run, naming the deepest waiting node.
    resumed = await adapter.resume_with_action(top, "approve", {"by": "reviewer"}, "gate")
    assert resumed == "gate"
    done = await wait_until(lambda: _final_status(services, top), timeout=RUN_TIMEOUT, message="top ended")
    assert done["status"] == "completed", done
    context = done["result"]["context"]
    assert context["leafDone"] == {"node": "l2", "input": {"by": "reviewer"}}
    assert context["midDone"]["node"] == "m2"
    assert context["_outputs.t2"]["node"] == "t2"
    for run_id in (mid["runId"], leaf["runId"]):
        child = await adapter.get_status(run_id)
        assert child is not None and child["status"] == "completed"
    assert calls.of_node("l2") == 1 and calls.of_node("m2") == 1 and calls.of_node("t2") == 1
    children = await adapter.engine.children.children_of(top)
    assert [(c["runId"], c["nodeId"], c["status"]) for c in children] == [(mid["runId"], "outer", "completed")]


async def _final_status(services: AzureServices, run_id: str) -> dict[str, Any] | None:
    item = await services.adapter.get_status(run_id)
    return item if item is not None and item["status"] in ("completed", "failed", "cancelled") else None


async def test_twenty_subflows_under_an_all_join(distributed: Distributed) -> None:
    calls = Calls()
    services = await build(distributed, calls)
    top = await services.adapter.start_run("fan20", {f"n{i:02d}": i for i in range(20)})

    status = await final(services, top)
    assert status["status"] == "completed", status
    context = status["result"]["context"]
    assert {f"r{i:02d}": context[f"r{i:02d}"] for i in range(20)} == {f"r{i:02d}": 2 * i for i in range(20)}
    assert calls.of_node("join") == 1
    code, view = await get_run(services, top)
    assert code == 200
    children = view["children"]
    assert len(children) == 20 and {c["status"] for c in children} == {"completed"}
    assert sorted(c["nodeId"] for c in children) == [f"s{i:02d}" for i in range(20)]
    assert len({c["runId"] for c in children}) == 20
    code, child_view = await get_run(services, children[0]["runId"])
    assert child_view["parentRunId"] == top and child_view["parentNodeId"] == children[0]["nodeId"]

    # Purging the parent purges its children.
    await purge(services, top)
    for child in children:
        assert await services.adapter.get_status(child["runId"]) is None
        assert await services.adapter.run_store.load(child["runId"]) is None
    assert await services.adapter.get_status(top) is None


class DoublingQueue:
    """Sends every job twice: every parent job (and every continuation) is delivered twice."""

    def __init__(self, inner: AzureJobQueue) -> None:
        self.inner = inner

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        await self.inner.enqueue(job, delay_seconds=delay_seconds)
        await self.inner.enqueue(job, delay_seconds=delay_seconds)


async def test_every_parent_job_delivered_twice_starts_one_child(distributed: Distributed) -> None:
    calls = Calls()
    bus = CollectingEventBus()
    services = await build(distributed, calls, event_bus=bus)
    services.adapter.engine.queue = DoublingQueue(services.adapter.job_queue)
    top = await services.adapter.start_run("parent2", {})

    status = await final(services, top)
    assert status["status"] == "completed", status
    assert len(set(child_starts(bus, top))) == 1
    assert len(child_starts(bus, top)) == 1  # the second delivery found the child and started none
    children = await services.adapter.engine.children.children_of(top)
    assert len(children) == 1 and children[0]["status"] == "completed"
    assert status["result"]["context"]["got"]["node"] == "c2"
    state = await services.adapter.run_store.load(top)
    assert state is not None
    assert sorted(r.key for r in state.records.values()) == ["0:p1", "0:p2", "0:sub"]


async def test_cancelling_a_parent_mid_child_cancels_the_child(distributed: Distributed) -> None:
    calls = Calls()
    services = await build(distributed, calls)
    top = await services.adapter.start_run("longparent", {})
    await wait_until(lambda: calls.of_node("long") == 1, timeout=RUN_TIMEOUT, message="child node started")
    (child,) = await services.adapter.engine.children.children_of(top)
    assert child["status"] == "running"

    await services.adapter.cancel(top, "operator said stop")

    child_status = await wait_until(lambda: _final_status(services, child["runId"]), timeout=RUN_TIMEOUT,
                                    message="child ended")
    assert child_status["status"] == "cancelled"
    assert top in child_status["reason"]
    parent = await services.adapter.get_status(top)
    assert parent is not None and parent["status"] == "cancelled"
    await wait_until(lambda: not services.adapter._in_flight, timeout=RUN_TIMEOUT, message="worker idle")
    assert calls.of_node("after") == 0 and calls.of_node("next") == 0


class DroppingContinuations:
    """Loses every job of one node of one run after its first: the child's end never reaches the parent."""

    def __init__(self, inner: AzureJobQueue, node_id: str) -> None:
        self.inner = inner
        self.node_id = node_id
        self.seen: Counter[str] = Counter()

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        if job.node_id == self.node_id and "." not in job.run_id:
            self.seen[job.run_id] += 1
            if self.seen[job.run_id] > 1:
                return
        await self.inner.enqueue(job, delay_seconds=delay_seconds)


async def test_the_reconciler_repairs_a_lost_continuation(distributed: Distributed) -> None:
    calls = Calls()
    services = await build(distributed, calls)
    adapter = services.adapter
    dropping = DroppingContinuations(adapter.job_queue, "sub")
    adapter.engine.queue = dropping
    top = await adapter.start_run("parent2", {})
    await wait_until(lambda: calls.of_node("c2") == 1, timeout=RUN_TIMEOUT, message="child finished")
    (_child,) = await wait_until(lambda: _completed_children(services, top), timeout=RUN_TIMEOUT,
                                message="child completed")
    await wait_until(lambda: not adapter._in_flight, timeout=RUN_TIMEOUT, message="worker idle")
    parent = await adapter.get_status(top)
    assert parent is not None and parent["status"] == "running"  # the continuation was lost

    adapter.engine.queue = adapter.job_queue
    assert await adapter.reconcile(top) >= 1
    status = await final(services, top)
    assert status["status"] == "completed", status
    assert status["result"]["context"]["got"]["node"] == "c2"
    assert calls.of_node("p2") == 1


async def _completed_children(services: AzureServices, run_id: str) -> list[dict[str, Any]] | None:
    children = await services.adapter.engine.children.children_of(run_id)
    return children if children and all(c["status"] == "completed" for c in children) else None
