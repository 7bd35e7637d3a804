"""The polling worker keeps its slots busy without losing or doubling a job (real emulators).

With a backlog, the poller receives a batch at a time and, while jobs are short, lets up to twice the
concurrency of received messages wait for a slot, so that a finishing job's slot takes the next one at
once. A waiting message must stay invisible to other workers however long it waits, nothing waits once
jobs are long, a message does not wait behind a slot that a chain holds, and a stopping worker gives the
waiting ones back at once. A finished job's slot is
freed while its message's delete is still in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from harness import Distributed, blueprint
from helpers import wait_until

from flowcraft_core.azure import adapter as adapter_module
from flowcraft_core.azure.queue import parse_message
from flowcraft_core.nodes import NodeContext, NodeResult

RUN_TIMEOUT = 60.0


def fan(width: int) -> Any:
    return blueprint({
        "id": "fan",
        "nodes": [{"id": "a", "uses": "step"}, *[{"id": f"b{i}", "uses": "step"} for i in range(width)],
                  {"id": "j", "uses": "step"}],
        "edges": [*[{"source": "a", "target": f"b{i}"} for i in range(width)],
                  *[{"source": f"b{i}", "target": "j"} for i in range(width)]],
    })


class Steps:
    """Counts each node's executions; the branches take `seconds` (or wait for `release`)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.runs: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.release.set()
        self.branch_started = asyncio.Event()

    async def node(self, ctx: NodeContext) -> NodeResult:
        self.runs[ctx.node_id] += 1
        if ctx.node_id.startswith("b"):
            self.branch_started.set()
            await asyncio.sleep(self.seconds)
            await self.release.wait()
        return NodeResult(output=ctx.node_id)


async def test_a_backlog_runs_each_job_once_on_few_slots_with_fewer_receives_than_jobs(
        distributed: Distributed) -> None:
    steps = Steps(seconds=0.05)
    services = await distributed.build({"step": steps.node}, {"fan": fan(24)},
                                       FLOWCRAFT_WORKER_CONCURRENCY="4")
    adapter = services.adapter
    receives = Counter[str]()
    original = adapter.queue_client.receive_messages

    def counting(*args: Any, **kwargs: Any) -> Any:
        receives["calls"] += 1
        return original(*args, **kwargs)

    adapter.queue_client.receive_messages = counting  # type: ignore[method-assign]
    run_id = await adapter.start_run("fan", {})
    status = await adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert steps.runs == Counter({"a": 1, "j": 1, **{f"b{i}": 1 for i in range(24)}})
    # 4 slots and up to 8 messages waiting: a receive takes several messages at a time.
    assert receives["calls"] < 24, receives


async def test_a_message_that_waits_long_for_a_slot_stays_invisible_to_other_workers(
        distributed: Distributed, monkeypatch: Any) -> None:
    # One slot, a 2 s visibility timeout and branches of 1.6 s: a received branch waits longer than half
    # the timeout for the slot, so it must be extended before it runs, or the second worker (polling the
    # same queue all along) would receive it once it reappears and run it a second time. (Jobs of 1.6 s
    # count as short here, so that messages wait for a slot at all.)
    monkeypatch.setattr(adapter_module, "READY_JOB_SECONDS", 5.0)
    steps = Steps(seconds=1.6)
    registry, blueprints = {"step": steps.node}, {"fan": fan(4)}
    first = await distributed.build(registry, blueprints, start=False, FLOWCRAFT_WORKER_CONCURRENCY="1")
    first.adapter.worker_options.visibility_timeout = 2
    second = await distributed.build(registry, blueprints, start=False, FLOWCRAFT_WORKER_CONCURRENCY="1")
    second.adapter.worker_options.visibility_timeout = 2
    await first.adapter.start()
    await second.adapter.start()
    run_id = await first.adapter.start_run("fan", {})
    status = await first.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert steps.runs == Counter({"a": 1, "j": 1, **{f"b{i}": 1 for i in range(4)}})


async def test_no_message_waits_for_a_slot_once_the_jobs_are_long(distributed: Distributed) -> None:
    # Jobs of 1.5 s are not short (READY_JOB_SECONDS): once the worker has measured a few, it stops taking
    # messages it has no slot for, and leaves them on the queue for other workers.
    steps = Steps(seconds=1.5)
    waiting_at_start: dict[str, int] = {}
    worker: dict[str, Any] = {}

    async def observed(ctx: NodeContext) -> NodeResult:
        waiting_at_start.setdefault(ctx.node_id, len(worker["adapter"]._ready))
        return await steps.node(ctx)

    services = await distributed.build({"step": observed}, {"fan": fan(5)}, start=False,
                                       FLOWCRAFT_WORKER_CONCURRENCY="1")
    adapter = worker["adapter"] = services.adapter
    await adapter.start()
    run_id = await adapter.start_run("fan", {})
    status = await adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert steps.runs == Counter({"a": 1, "j": 1, **{f"b{i}": 1 for i in range(5)}})
    started = [n for n in waiting_at_start if n.startswith("b")]
    assert waiting_at_start[started[-1]] == 0 and waiting_at_start[started[-2]] == 0, waiting_at_start


async def test_a_stopping_worker_gives_its_waiting_messages_back_at_once(distributed: Distributed) -> None:
    steps = Steps()
    steps.release.clear()
    # Every job through the queue (no hand-on), so that a's slot frees and the poller sees slots turn over.
    services = await distributed.build({"step": steps.node}, {"fan": fan(6)}, start=False,
                                       FLOWCRAFT_WORKER_CONCURRENCY="2", FLOWCRAFT_WORKER_EAGER_DISPATCH="false")
    adapter = services.adapter
    adapter.worker_options.visibility_timeout = 120
    await adapter.start()
    await adapter.start_run("fan", {})
    # Both slots hold a branch (the gate keeps them), so what the poller receives next waits.
    await wait_until(lambda: len(adapter._ready) > 0, timeout=10,
                     message="a received branch waiting for one of the two busy slots")
    waiting = len(adapter._ready)
    props = await services.queue_client.get_queue_properties()
    never_received = int(props.approximate_message_count) - 2 - waiting  # the count includes invisible ones
    await adapter.stop(timeout=0)  # the two running branches are cancelled and stay invisible for 120 s

    async def visible() -> int:
        return len(await services.queue_client.peek_messages(max_messages=32))

    # Long before the 120 s timeout: the waiting messages are visible again, beside the ones never received.
    seen = await wait_until(lambda: _at_least(visible, never_received + waiting), timeout=10,
                            message="the waiting messages visible again")
    assert seen == never_received + waiting and not adapter._ready
    # A given-back delivery never ran its job, so it does not count towards poisoning the job: each
    # visible message carries as many uncounted deliveries as it has had.
    for message in await services.queue_client.peek_messages(max_messages=32):
        carried = parse_message(message.content, base64_encoded=True)
        assert carried.dequeue_base == message.dequeue_count, (carried.node_id, message.dequeue_count)
    assert sum(m.dequeue_count for m in await services.queue_client.peek_messages(max_messages=32)) == waiting


async def test_a_message_waiting_behind_a_slot_held_by_a_chain_goes_back_to_other_workers(
        distributed: Distributed) -> None:
    # One slot. A chain run hands its message on from job to job, so the slot does not free for the whole
    # chain; a message received for that slot meanwhile must go back to the queue (after READY_MAX_WAIT)
    # for another worker instead of waiting until the chain ends.
    async def step(ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(0.15 if ctx.node_id.startswith("n") else 0.0)
        return NodeResult(output=ctx.node_id)

    blueprints = {
        "one": blueprint({"id": "one", "nodes": [{"id": "only", "uses": "step"}], "edges": []}),
        "chain": blueprint({"id": "chain", "nodes": [{"id": f"n{i}", "uses": "step"} for i in range(40)],
                            "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(39)]}),
    }
    first = await distributed.build({"step": step}, blueprints, FLOWCRAFT_WORKER_CONCURRENCY="1")
    adapter = first.adapter
    warm = await adapter.start_run("one", {})  # runs and ends: the slot has just turned over
    chain = await adapter.start_run("chain", {})
    other = await adapter.start_run("one", {})
    await wait_until(lambda: len(adapter._ready) == 1, timeout=10,
                     message="the other run's job waiting behind the chain's slot")
    assert (await adapter.get_status(warm) or {}).get("status") == "completed"
    second = await distributed.build({"step": step}, blueprints, FLOWCRAFT_WORKER_CONCURRENCY="1")
    status = await second.adapter.wait_for_run(other, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    # Given back long before the 40-node chain (6 s) ended, and run by the second worker.
    assert (await adapter.get_status(chain) or {}).get("status") == "running"
    assert second.adapter.processed >= 1


async def _at_least(count: Any, wanted: int) -> int:
    n = int(await count())
    return n if n >= wanted else 0


async def test_a_finished_jobs_slot_is_free_before_its_delete_is_answered(distributed: Distributed) -> None:
    steps = Steps()
    services = await distributed.build({"step": steps.node}, {"fan": fan(3)}, FLOWCRAFT_WORKER_CONCURRENCY="2")
    adapter = services.adapter
    deletes_started = asyncio.Event()
    answer = asyncio.Event()
    original = adapter.queue_client.delete_message

    async def slow_delete(*args: Any, **kwargs: Any) -> Any:
        deletes_started.set()
        await answer.wait()
        return await original(*args, **kwargs)

    adapter.queue_client.delete_message = slow_delete  # type: ignore[method-assign]
    run_id = await adapter.start_run("fan", {})
    # With every delete held, the run still completes: no slot waits for its message's delete.
    status = await adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert deletes_started.is_set() and adapter._retiring
    answer.set()
    await wait_until(lambda: not adapter._retiring, timeout=10, message="the held deletes answered")
    props = await services.queue_client.get_queue_properties()
    assert int(props.approximate_message_count) == 0
