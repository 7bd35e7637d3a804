"""The core rules in process, each test named for the rule it guards (docs/testing.md lists the planted
bug each one kills): first writer wins, an action edge also needs its condition, a join runs after all of
its branches. The same rules on the emulators: tests/integration/test_core_rules_distributed.py; the
stores' side of them: tests/integration/test_store_contracts.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowcraft_core import CollectingEventBus, FlowRuntime, NodeContext, NodeResult
from flowcraft_core.engine import Engine, EngineOptions
from flowcraft_core.memory import InMemoryCoordinationStore, InMemoryJobQueue, InMemoryRunStore, InMemoryStatusStore
from flowcraft_core.models import WorkflowBlueprint
from tests.core_rules import (
    DEADLINE,
    FIRST_WRITER_BLUEPRINT,
    JOIN_BLUEPRINT,
    Barrier,
    Counting,
    Fickle,
    assert_first_writer_won,
    spy_commits,
)
from tests.helpers import wait_until


async def test_first_writer_wins_when_two_deliveries_execute_before_either_commits() -> None:
    counting, barrier, queue = Counting(), Barrier("after-execute", "x"), InMemoryJobQueue()
    engine = Engine(registry={"fickle": Fickle(), "count": counting},
                    blueprints={"first-writer": WorkflowBlueprint.model_validate(FIRST_WRITER_BLUEPRINT)},
                    run_store=InMemoryRunStore(), status_store=InMemoryStatusStore(),
                    coordination=InMemoryCoordinationStore(), queue=queue,
                    options=EngineOptions(fault_hook=barrier))
    commits = spy_commits(engine.run_store)
    run_id = await engine.start_run("first-writer")
    job = queue.queue.get_nowait()

    # Two deliveries of x's job (a duplicated queue message), both held after executing.
    await asyncio.wait_for(asyncio.gather(engine.handle_job(job), engine.handle_job(job)), DEADLINE)
    assert barrier.met, "both deliveries executed before either committed"
    while not queue.queue.empty():
        await asyncio.wait_for(engine.handle_job(queue.queue.get_nowait()), DEADLINE)

    winner = assert_first_writer_won(commits, counting.runs)
    status = await engine.status_store.get(run_id)
    assert status is not None and status["status"] == "completed", status
    state = await engine.run_store.load(run_id)
    assert state is not None
    record = state.record("x")
    assert record is not None and record.action == winner
    assert status["result"]["context"]["_outputs.x"] == f"chose {winner}"


@pytest.mark.parametrize(("flag", "taken"), [(False, "fallback"), (True, "guarded")])
async def test_an_action_edge_needs_its_condition_too_else_the_default_edge_applies(flag: bool, taken: str) -> None:
    counting = Counting()

    async def router(ctx: NodeContext) -> NodeResult:
        return NodeResult(output="routed", action="go")

    blueprint = {
        "id": "action-and-condition",
        "nodes": [{"id": "a", "uses": "router"}, {"id": "guarded", "uses": "count"},
                  {"id": "fallback", "uses": "count"}],
        "edges": [{"source": "a", "target": "guarded", "action": "go", "condition": "flag == true"},
                  {"source": "a", "target": "fallback"}],
    }
    bus = CollectingEventBus()
    result = await asyncio.wait_for(
        FlowRuntime(registry={"router": router, "count": counting}, event_bus=bus).run(blueprint, {"flag": flag}),
        DEADLINE)

    assert result.status == "completed", result
    assert dict(counting.runs) == {taken: 1}
    # The action edge's condition was evaluated, and the evaluation is reported.
    assert [e["payload"] for e in bus.of_type("edge:evaluate")] == [{
        "source": "a", "target": "guarded", "condition": "flag == true", "result": flag, "runId": result.run_id}]


async def test_conditions_and_transforms_see_the_result_action_and_the_node_input() -> None:
    counting = Counting()

    async def router(ctx: NodeContext) -> NodeResult:
        return NodeResult(output={"n": ctx.input["n"] + 1}, action="go")

    blueprint = {
        "id": "scope",
        "nodes": [{"id": "start", "uses": "start"}, {"id": "a", "uses": "router"},
                  {"id": "by_action", "uses": "count"}, {"id": "never", "uses": "count"}],
        "edges": [{"source": "start", "target": "a"},
                  {"source": "a", "target": "by_action", "condition": "result.action == 'go'",
                   "transform": "{'before': nodeInput['n'], 'after': input['n']}"},
                  {"source": "a", "target": "never", "condition": "result.action != 'go'"}],
    }

    async def start(ctx: NodeContext) -> NodeResult:
        return NodeResult(output={"n": 1})

    result = await asyncio.wait_for(
        FlowRuntime(registry={"start": start, "router": router, "count": counting}).run(blueprint), DEADLINE)

    assert result.status == "completed", result
    assert dict(counting.runs) == {"by_action": 1}
    assert counting.inputs["by_action"] == [{"before": 1, "after": 2}]


async def test_a_failing_transform_fails_the_run_naming_the_edge() -> None:
    counting = Counting()
    blueprint = {"id": "bad-transform", "nodes": [{"id": "a", "uses": "count"}, {"id": "b", "uses": "count"}],
                 "edges": [{"source": "a", "target": "b", "transform": "int(input)"}]}
    result = await asyncio.wait_for(FlowRuntime(registry={"count": counting}).run(blueprint), DEADLINE)

    assert result.status == "failed", result
    assert "transform of edge a->b failed" in (result.reason or ""), result.reason
    assert counting.runs["b"] == 0


async def test_all_join_runs_once_only_after_every_branch_arrived() -> None:
    counting, bus = Counting(), CollectingEventBus()
    d_running, release_d = asyncio.Event(), asyncio.Event()

    async def hold(ctx: NodeContext) -> NodeResult:
        d_running.set()
        await asyncio.wait_for(release_d.wait(), DEADLINE)
        return await counting(ctx)

    runtime = FlowRuntime(registry={"count": counting, "hold": hold}, event_bus=bus)
    finished: list[str] = []
    handle = runtime.engine.handle_job

    async def recording(job: Any, **kwargs: Any) -> Any:
        try:
            return await handle(job, **kwargs)
        finally:
            finished.append(job.node_id)

    runtime.engine.handle_job = recording  # type: ignore[method-assign]
    run = asyncio.create_task(runtime.run(JOIN_BLUEPRINT))
    try:
        # b and c have arrived at e's gate (their jobs are over) while d is held inside its node.
        await wait_until(lambda: {"a", "b", "c"} <= set(finished) and d_running.is_set(), DEADLINE,
                         message="a, b and c done while d runs")
        enqueued = [e["payload"]["nodeId"] for e in bus.of_type("job:enqueued")]
        assert sorted(enqueued) == ["a", "b", "c", "d"], enqueued  # nothing else waits: the queue is idle
        assert counting.runs["e"] == 0, "the join started before its last branch arrived"
    finally:
        release_d.set()
    result = await asyncio.wait_for(run, DEADLINE)

    assert result.status == "completed", result
    assert counting.runs["e"] == 1
    assert counting.inputs["e"] == [{"b": "B", "c": "C", "d": "D"}]


async def test_a_run_completes_once_every_terminal_ran_or_was_skipped() -> None:
    counting = Counting()

    async def router(ctx: NodeContext) -> NodeResult:
        return NodeResult(output="r", action="two")

    # Three terminal branches behind a router: one runs, two are skipped, and each counts as ended.
    blueprint = {"id": "terminals", "nodes": [{"id": "r", "uses": "router"}] + [
        {"id": t, "uses": "count"} for t in ("one", "two", "three")],
        "edges": [{"source": "r", "target": t, "action": t} for t in ("one", "two", "three")]}
    result = await asyncio.wait_for(FlowRuntime(registry={"router": router, "count": counting}).run(blueprint),
                                    DEADLINE)

    assert result.status == "completed", result
    assert dict(counting.runs) == {"two": 1}
