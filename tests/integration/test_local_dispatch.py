"""A polling worker runs the jobs it sends itself, and a crash loses none of them (real emulators).

When a job ends, the worker hands its message on to one successor due now (one queue update gives the
message the successor's job) and runs that job next in the same slot; further successors are sent
invisible and run in free slots with the send's pop receipt. Either way each job has a durable message
on the queue until it is done, so a worker that dies leaves it for another worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace
from typing import Any

from harness import Distributed, blueprint
from helpers import wait_until

from flowcraft_core.azure.queue import encode_job, parse_message
from flowcraft_core.nodes import NodeContext, NodeResult
from flowcraft_core.protocols import Job

CHAIN = 6
RUN_TIMEOUT = 30.0


class Gate:
    """Holds node n2 until released, so a test can stop a worker while n2 runs."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def node(self, ctx: NodeContext) -> NodeResult:
        if ctx.node_id == "n2" and not self.release.is_set():
            self.started.set()
            await self.release.wait()
        return NodeResult(output=ctx.node_id)


def chain_blueprint(size: int = CHAIN) -> Any:
    return blueprint({
        "id": "chain",
        "nodes": [{"id": f"n{i}", "uses": "step"} for i in range(size)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(size - 1)],
    })


FAN = blueprint({
    "id": "fan",
    "nodes": [{"id": "a", "uses": "step"}, *[{"id": f"b{i}", "uses": "step"} for i in range(4)],
              {"id": "j", "uses": "step"}],
    "edges": [*[{"source": "a", "target": f"b{i}"} for i in range(4)],
              *[{"source": f"b{i}", "target": "j"} for i in range(4)]],
})


async def queue_empty(services: Any) -> bool:
    props = await services.queue_client.get_queue_properties()
    return int(props.approximate_message_count) == 0


async def test_a_chain_runs_on_one_message_handed_on_from_job_to_job(distributed: Distributed) -> None:
    gate = Gate()
    services = await distributed.build({"step": gate.node}, {"chain": chain_blueprint()})
    adapter = services.adapter
    run_id = await adapter.start_run("chain", {})
    status = await adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert {k: v for k, v in status["result"]["context"].items() if k.startswith("_outputs.")} == {
        f"_outputs.n{i}": f"n{i}" for i in range(CHAIN)}
    # One send (the start node's, run at once in a free slot), then every job carried by that message.
    assert adapter.job_queue.sent == 1 and adapter.dispatched == 1
    assert adapter.handed_on == CHAIN - 1
    await wait_until(lambda: queue_empty(services), timeout=5, message="the last job deleted the message")
    assert adapter.processed == CHAIN


async def test_a_fan_out_hands_on_one_branch_and_runs_the_others_in_free_slots(distributed: Distributed) -> None:
    gate = Gate()
    services = await distributed.build({"step": gate.node}, {"fan": FAN})
    adapter = services.adapter
    run_id = await adapter.start_run("fan", {})
    status = await adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert set(status["result"]["context"]) >= {"_outputs.a", "_outputs.j", *(f"_outputs.b{i}" for i in range(4))}
    # a's message goes on to one branch, the other three branches are sent; the last branch to arrive
    # at the join hands its message on to the join.
    assert adapter.handed_on == 2 and adapter.job_queue.sent == 1 + 3
    await wait_until(lambda: queue_empty(services), timeout=5, message="every message deleted")
    assert adapter.processed == 6


async def test_a_worker_that_dies_in_a_handed_on_job_leaves_that_job_for_another_worker(
        distributed: Distributed) -> None:
    gate = Gate()
    gate.release.clear()
    registry, blueprints = {"step": gate.node}, {"chain": chain_blueprint()}
    first = await distributed.build(registry, blueprints, start=False)
    first.adapter.worker_options.visibility_timeout = 2
    await first.adapter.start()
    run_id = await first.adapter.start_run("chain", {})
    await asyncio.wait_for(gate.started.wait(), RUN_TIMEOUT)
    assert first.adapter.handed_on == 2  # n0's message carried n1, then n2
    # The worker dies inside n2: its job is cancelled, nothing is deleted or sent.
    await first.adapter.stop(timeout=0)

    async def visible() -> list[Any]:
        return list(await first.queue_client.peek_messages(max_messages=32))

    await wait_until(visible, timeout=15, message="n2's job visible again after the visibility timeout")
    (message,) = await visible()
    carried = parse_message(message.content, base64_encoded=True)
    # The message n0 was sent as (invisible, to the worker's own slot, so never received) now names n2.
    assert (carried.node_id, carried.dequeue_base, message.dequeue_count) == ("n2", 0, 0)

    gate.release.set()
    second = await distributed.build(registry, blueprints)
    status = await second.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "completed", status
    assert {k for k in status["result"]["context"] if k.startswith("_outputs.")} == {
        f"_outputs.n{i}" for i in range(CHAIN)}


async def test_a_handed_on_message_counts_the_deliveries_of_its_job_not_its_own(distributed: Distributed) -> None:
    gate = Gate()
    services = await distributed.build({"step": gate.node}, {"chain": chain_blueprint(2)}, start=False)
    adapter = services.adapter
    limit = adapter.worker_options.max_dequeue_count
    run_id = await adapter.start_run("chain", {})
    # Received for the sixth time, but carried on from a job that had five of them: n0's first delivery.
    text = encode_job(Job(run_id, "chain", "n0"), dequeue_base=limit)
    (sent,) = [m async for m in services.queue_client.receive_messages(max_messages=1)]
    await adapter._process(SimpleNamespace(id=sent.id, content=text, dequeue_count=limit + 1,
                                           pop_receipt=sent.pop_receipt, expires_on=None))
    state = await adapter.run_store.load(run_id)
    assert state is not None and state.record("n0", 0) is not None  # executed, not poisoned
    status = await adapter.get_status(run_id)
    assert status is not None and status["status"] == "running"

    # A job that itself had more deliveries than the limit is poisoned as before.
    poisoned = encode_job(Job(run_id, "chain", "n1"), dequeue_base=1)
    await adapter._process(SimpleNamespace(id="m", content=poisoned, dequeue_count=limit + 2, pop_receipt="p",
                                           expires_on=None))
    status = await adapter.get_status(run_id)
    assert status is not None and status["status"] == "failed", status
    assert f"after {limit + 1} deliveries" in status["reason"]


def test_the_dequeue_base_travels_in_the_message_and_defaults_to_zero() -> None:
    job = Job("run-1", "bp", "a", 2)
    assert parse_message(encode_job(job), base64_encoded=True).dequeue_base == 0
    assert "dequeueBase" not in json.loads(base64.b64decode(encode_job(job)))
    carried = parse_message(encode_job(job, dequeue_base=3), base64_encoded=True)
    assert (carried.dequeue_base, carried.to_job()) == (3, job)
