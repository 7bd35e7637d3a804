"""The core rules on the emulators (Storage Queue, Cosmos DB stand-in, Redis), each test named for the rule it
guards; the in-process twins are in tests/unit/test_core_rules.py (docs/testing.md lists the planted bugs
they kill)."""

from __future__ import annotations

import asyncio

import pytest
from harness import Distributed, blueprint
from helpers import wait_until

from flowcraft_core import CollectingEventBus, NodeContext, NodeResult
from flowcraft_core.engine import EngineOptions
from flowcraft_core.protocols import Job
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

pytestmark = pytest.mark.core_rules

RUN_TIMEOUT = 30.0


async def test_first_writer_wins_when_two_deliveries_execute_before_either_commits(
        distributed: Distributed) -> None:
    counting, fickle, barrier = Counting(), Fickle(), Barrier("after-execute", "x")
    registry = {"fickle": fickle, "count": counting}
    blueprints = {"first-writer": blueprint(FIRST_WRITER_BLUEPRINT)}
    commits: list[tuple[str, str | None, str | None, bool]] = []
    # Two workers on one queue, sharing the barrier: each delivery may land on either.
    workers = [await distributed.build(registry, blueprints, start=False, engine=EngineOptions(fault_hook=barrier))
               for _ in range(2)]
    for worker in workers:
        spy_commits(worker.adapter.run_store, commits)
    first = workers[0].adapter
    run_id = await first.start_run("first-writer")
    await first.job_queue.enqueue(Job(run_id, "first-writer", "x"))  # a duplicated message of x's job
    for worker in workers:
        await worker.adapter.start()

    status = await first.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.1)

    assert barrier.met, "both deliveries executed before either committed"
    assert fickle.calls == 2
    assert status["status"] == "completed", status
    winner = assert_first_writer_won(commits, counting.runs)
    state = await first.run_store.load(run_id)
    assert state is not None
    record = state.record("x")
    assert record is not None and record.action == winner
    assert status["result"]["context"]["_outputs.x"] == f"chose {winner}"


async def test_all_join_runs_once_only_after_every_branch_arrived(distributed: Distributed) -> None:
    counting, bus = Counting(), CollectingEventBus()
    d_running, release_d = asyncio.Event(), asyncio.Event()

    async def hold(ctx: NodeContext) -> NodeResult:
        d_running.set()
        await asyncio.wait_for(release_d.wait(), DEADLINE)
        return await counting(ctx)

    services = await distributed.build({"count": counting, "hold": hold},
                                       {"join-after-all": blueprint(JOIN_BLUEPRINT)}, event_bus=bus)
    adapter = services.adapter
    run_id = await adapter.start_run("join-after-all")

    def processed() -> set[str]:
        return {e["payload"]["nodeId"] for e in bus.events
                if e["type"] == "job:processed" and e["payload"]["runId"] == run_id}

    try:
        # b and c have arrived at e's gate (their jobs are over) while d is held inside its node.
        await wait_until(lambda: {"a", "b", "c"} <= processed() and d_running.is_set(), RUN_TIMEOUT,
                         message="a, b and c processed while d runs")
        enqueued = [e["payload"]["nodeId"] for e in bus.of_type("job:enqueued") if e["payload"]["runId"] == run_id]
        assert sorted(enqueued) == ["a", "b", "c", "d"], enqueued
        assert await services.queue_client.peek_messages() == []  # the queue is idle but for d, in flight
        assert counting.runs["e"] == 0, "the join started before its last branch arrived"
        status = await adapter.get_status(run_id)
        assert status is not None and status["status"] == "running"
    finally:
        release_d.set()
    status = await adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.1)

    assert status["status"] == "completed", status
    assert counting.runs["e"] == 1
    assert counting.inputs["e"] == [{"b": "B", "c": "C", "d": "D"}]
    assert status["result"]["context"]["_outputs.e"] == "E"
