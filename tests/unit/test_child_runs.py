"""Subflows as child runs in process (issue 11): ids, parent links, awaiting, resume, retries, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

from flowcraft_core import FlowRuntime, NodeContext, NodeResult, WorkflowBlueprint
from flowcraft_core.children import child_run_id
from flowcraft_core.engine import validate_run_id
from tests.helpers import bp, wait_until


def blueprints(*dicts: dict[str, Any]) -> dict[str, WorkflowBlueprint]:
    return {d["id"]: WorkflowBlueprint.model_validate(d) for d in dicts}


async def step(ctx: NodeContext) -> NodeResult:
    return NodeResult(output={"node": ctx.node_id, "input": ctx.input})


def sub(node_id: str, child: str, **extra: Any) -> dict[str, Any]:
    config = extra.pop("config", None)
    node: dict[str, Any] = {"id": node_id, "uses": "subflow", "params": {"blueprintId": child, **extra}}
    if config:
        node["config"] = config
    return node


def test_child_run_ids_are_deterministic_valid_and_distinct() -> None:
    assert child_run_id("run1", "sub") == child_run_id("run1", "sub")
    ids = {child_run_id("a.b", "c"), child_run_id("a", "b.c"), child_run_id("run1", "sub", 1),
           child_run_id("run1", "sub", 0, 2), child_run_id("run1", "sub")}
    assert len(ids) == 5
    long_parent = "p" * 128
    for run_id in [*ids, child_run_id(long_parent, "node with spaces/and slashes" * 10, 7, 3)]:
        assert validate_run_id(run_id) == run_id and len(run_id) <= 128


THREE_LEVELS = blueprints(
    bp(["l1", {"id": "gate", "uses": "wait"}, "l2"],
       [("l1", "gate"), {"source": "gate", "target": "l2", "action": "approve"}], bp_id="leaf"),
    bp(["m1", sub("inner", "leaf", outputs={"leafDone": "l2"}), "m2"], [("m1", "inner"), ("inner", "m2")],
       bp_id="mid"),
    bp(["t1", sub("outer", "mid", outputs={"leafDone": "leafDone"}), "t2"], [("t1", "outer"), ("outer", "t2")],
       bp_id="top"),
)
STEPS = {name: step for name in ("l1", "l2", "m1", "m2", "t1", "t2", "c1", "p1", "p2")}


async def test_three_levels_wait_in_the_deepest_resumed_through_the_top() -> None:
    runtime = FlowRuntime(registry=STEPS, blueprints=THREE_LEVELS)
    result = await asyncio.wait_for(runtime.run("top"), 10)
    assert result.status == "awaiting"
    assert result.awaiting == ["outer"]
    top = await runtime.engine.status_store.get(result.run_id)
    assert top is not None
    (mid_entry,) = top["awaitingChildren"]
    mid = await runtime.result(mid_entry["runId"])
    assert mid.status == "awaiting"

    done = await asyncio.wait_for(runtime.resume(result.run_id, "approve", {"ok": True}, "gate"), 10)
    assert done.status == "completed", done.errors
    assert done.context["leafDone"] == {"node": "l2", "input": {"ok": True}}
    assert done.context["_outputs.t2"]["node"] == "t2"


async def test_resuming_the_child_by_its_own_id_continues_the_parents() -> None:
    runtime = FlowRuntime(registry=STEPS, blueprints=THREE_LEVELS)
    result = await asyncio.wait_for(runtime.run("top"), 10)
    top = await runtime.engine.status_store.get(result.run_id)
    assert top is not None
    mid = await runtime.engine.status_store.get(top["awaitingChildren"][0]["runId"])
    assert mid is not None and mid["parentRunId"] == result.run_id and mid["parentNodeId"] == "outer"
    leaf_id = mid["awaitingChildren"][0]["runId"]

    leaf = await asyncio.wait_for(runtime.resume(leaf_id, "approve", {"ok": 1}), 10)
    assert leaf.status == "completed"
    parent = await runtime.result(result.run_id)
    assert parent.status == "completed", parent.errors
    assert parent.context["leafDone"]["input"] == {"ok": 1}


async def test_a_failed_child_is_retried_as_a_new_child_run() -> None:
    attempts: list[str] = []

    async def flaky(ctx: NodeContext) -> NodeResult:
        attempts.append(ctx.run_id)
        if len(attempts) == 1:
            raise ValueError("first child fails")
        return NodeResult(output="second child ok")

    bps = blueprints(bp(["flaky"], bp_id="child"),
                     bp([sub("s", "child", config={"maxRetries": 2}), "p2"], [("s", "p2")], bp_id="parent"))
    runtime = FlowRuntime(registry={"flaky": flaky, "p2": step}, blueprints=bps)
    result = await asyncio.wait_for(runtime.run("parent"), 10)

    assert result.status == "completed", result.errors
    assert result.context["_outputs.s"] == "second child ok"
    assert len(set(attempts)) == 2  # two child runs, each its own id
    children = await runtime.engine.children.children_of(result.run_id)
    assert [(c["attempt"], c["status"]) for c in children] == [(1, "failed"), (2, "completed")]


async def test_a_failed_child_falls_back_after_its_attempts() -> None:
    async def boom(ctx: NodeContext) -> NodeResult:
        raise ValueError("child exploded")

    async def rescue(ctx: NodeContext) -> NodeResult:
        return NodeResult(output="rescued")

    bps = blueprints(bp(["boom"], bp_id="child"),
                     bp([sub("s", "child", config={"fallback": "rescue"}), "p2"], [("s", "p2")], bp_id="parent"))
    runtime = FlowRuntime(registry={"boom": boom, "rescue": rescue, "p2": step}, blueprints=bps)
    result = await asyncio.wait_for(runtime.run("parent"), 10)
    assert result.status == "completed", result.errors
    assert result.context["_outputs.s"] == "rescued"
    assert result.context["_outputs.p2"]["input"] == "rescued"


async def test_cancelling_the_parent_cancels_its_running_child() -> None:
    started = asyncio.Event()
    stopped: list[str] = []

    async def long(ctx: NodeContext) -> NodeResult:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(ctx.run_id)
            raise
        return NodeResult()

    bps = blueprints(bp(["long", "c1"], [("long", "c1")], bp_id="child"),
                     bp([sub("s", "child"), "p2"], [("s", "p2")], bp_id="parent"))
    runtime = FlowRuntime(registry={"long": long, "c1": step, "p2": step}, blueprints=bps)
    task = asyncio.create_task(runtime.run("parent", run_id="parent-run"))
    await asyncio.wait_for(started.wait(), 10)
    (child,) = await runtime.engine.children.children_of("parent-run")

    await runtime.cancel("parent-run", "stop it")
    result = await asyncio.wait_for(task, 10)
    assert result.status == "cancelled"
    child_status = await runtime.engine.status_store.get(child["runId"])
    assert child_status is not None and child_status["status"] == "cancelled"
    assert "parent-run" in child_status["reason"]
    await wait_until(lambda: stopped == [child["runId"]], timeout=5, message="child node stopped")
    assert "_outputs.p2" not in result.context


async def test_a_redelivered_subflow_job_starts_no_second_child() -> None:
    bps = blueprints(bp(["c1"], bp_id="child"), bp([sub("s", "child"), "p2"], [("s", "p2")], bp_id="parent"))
    runtime = FlowRuntime(registry=STEPS, blueprints=bps)
    engine = runtime.engine
    original = engine.queue.enqueue
    seen: list[str] = []

    async def twice(job: Any, *, delay_seconds: float = 0) -> None:
        seen.append(job.run_id)
        await original(job, delay_seconds=delay_seconds)
        if job.node_id == "s":
            await original(job, delay_seconds=delay_seconds)

    engine.queue.enqueue = twice  # type: ignore[method-assign]
    result = await asyncio.wait_for(runtime.run("parent"), 10)
    assert result.status == "completed", result.errors
    children = await engine.children.children_of(result.run_id)
    assert len(children) == 1
    child_ids = {run_id for run_id in seen if run_id != result.run_id}
    assert child_ids == {children[0]["runId"]}
    assert result.context["_outputs.p2"]["input"] == {"node": "c1", "input": None}
