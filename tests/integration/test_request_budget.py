"""Request budgets, counted (not timed) against the real emulators, and Flowcraft's fan-in weakness gone.

The test drives a run's jobs one at a time from the real queue through ``adapter.handle_job`` and
records, per job, the Cosmos DB requests (``adapter.cosmos_requests``) and Redis commands
(``adapter.coordination.counter``) it cost. Flowcraft's adapter re-read the whole context item for every
``get``/``has``/``set`` (a dozen or more requests per node) and counted joins with a bare INCR; here:

- an ordinary node costs one context read (a single-partition query) and one write (its record),
  however many context operations it makes;
- a node with one predecessor costs no Redis command; a join's gate costs one command per arriving
  edge, plus one to claim the join's execution (so a duplicate delivery never runs it twice);
- the status item's ``lastUpdated`` is refreshed at most once per ``touch_interval_seconds``, not per node;
- the final status is written exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from harness import Distributed, blueprint
from helpers import AzureTestEnv
from redis.asyncio import Redis

from flowcraft_core.azure.cosmos import CosmosStatusStore, RequestCounter
from flowcraft_core.azure.queue import parse_job
from flowcraft_core.azure.redis_store import RedisCoordinationStore
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult
from flowcraft_core.protocols import FINAL_STATUSES, Job

CHAIN = 8
FAN = 4


async def busy_node(ctx: NodeContext) -> NodeResult:
    """A node that uses the context a lot: 12 operations, which cost Flowcraft a request each."""
    for i in range(3):
        await ctx.context.set(f"{ctx.node_id}.k{i}", i)
        assert await ctx.context.has(f"{ctx.node_id}.k{i}")
        assert await ctx.context.get(f"{ctx.node_id}.k{i}") == i
    await ctx.context.to_dict()
    everything = await ctx.context.to_dict()
    return NodeResult(output={"node": ctx.node_id, "keys": len(everything)})


REGISTRY: dict[str, Any] = {"busy": busy_node}

LINEAR = blueprint({
    "id": "linear",
    "nodes": [{"id": f"n{i}", "uses": "busy"} for i in range(CHAIN)],
    "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(CHAIN - 1)],
})

FAN_JOIN = blueprint({
    "id": "fan-join",
    "nodes": [{"id": "a", "uses": "busy"}, *[{"id": f"b{i}", "uses": "busy"} for i in range(FAN)],
              {"id": "j", "uses": "busy"}, {"id": "z", "uses": "busy"}],
    "edges": [*[{"source": "a", "target": f"b{i}"} for i in range(FAN)],
              *[{"source": f"b{i}", "target": "j"} for i in range(FAN)],
              {"source": "j", "target": "z"}],
})

BLUEPRINTS: dict[str, WorkflowBlueprint] = {bp.id: bp for bp in (LINEAR, FAN_JOIN)}


@dataclass
class JobCost:
    """What handling one job cost."""

    node_id: str
    cosmos: dict[str, int] = field(default_factory=dict)
    redis: int = 0

    @property
    def context_reads(self) -> int:
        return self.cosmos.get("query", 0)

    @property
    def context_writes(self) -> int:
        return self.cosmos.get("create", 0) + self.cosmos.get("upsert", 0)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def drive(services: AzureServices, run_id: str, timeout: float = 30) -> list[JobCost]:
    """Handle the run's jobs one by one from the real queue until it is final; return each job's cost."""
    adapter = services.adapter
    redis = adapter.coordination
    assert isinstance(redis, RedisCoordinationStore)
    # Poll the status with a separate counter, so that polling never counts against the run.
    poll = CosmosStatusStore(adapter.status_store.container, RequestCounter())
    costs: list[JobCost] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = [m async for m in services.queue_client.receive_messages(
            messages_per_page=1, max_messages=1, visibility_timeout=30)]
        if not messages:
            status = await poll.get(run_id)
            if status is not None and status["status"] in FINAL_STATUSES:
                return costs
            await asyncio.sleep(0.02)
            continue
        msg = messages[0]
        job: Job = parse_job(msg.content, base64_encoded=True)
        cosmos_before = dict(adapter.cosmos_requests.counts)
        redis_before = redis.counter.count
        await adapter.handle_job(job, delivery_id=msg.id)
        costs.append(JobCost(job.node_id, delta(adapter.cosmos_requests.counts, cosmos_before),
                             redis.counter.count - redis_before))
        await services.queue_client.delete_message(msg)
    raise TimeoutError(f"run {run_id} did not finish in {timeout}s; handled {[c.node_id for c in costs]}")


def final_writes(services: AzureServices) -> list[str]:
    """Record each finalize call that wrote the final status."""
    writes: list[str] = []
    store = services.adapter.status_store
    original = store.finalize

    async def finalize(run_id: str, status: Any, **kwargs: Any) -> bool:
        wrote = await original(run_id, status, **kwargs)
        if wrote:
            writes.append(run_id)
        return wrote

    store.finalize = finalize  # type: ignore[method-assign]
    return writes


async def start(distributed: Distributed, bp_id: str) -> tuple[AzureServices, str, list[str], dict[str, int]]:
    services = await distributed.build(REGISTRY, BLUEPRINTS, start=False)
    writes = final_writes(services)
    run_id = await services.adapter.start_run(bp_id, {"topic": "budgets"})
    start_cost = dict(services.adapter.cosmos_requests.counts)
    return services, run_id, writes, start_cost


def assert_ordinary(cost: JobCost) -> None:
    """One context read, one context write, nothing else but a throttled lastUpdated patch."""
    assert cost.context_reads == 1, cost
    assert cost.context_writes == 1, cost
    assert set(cost.cosmos) <= {"query", "create", "patch"}, cost


def assert_terminal(cost: JobCost) -> None:
    """The last node: its own read and write, one read of the run for the completion rule (which is also
    the final context for the result), the completed marker, and the final status."""
    assert cost.context_reads == 2, cost  # the node's load, then the run for the completion rule
    assert cost.context_writes == 2, cost  # its record, and the "completed" marker that stops late jobs
    assert cost.cosmos.get("upsert", 0) == 1, cost
    assert cost.cosmos.get("read", 0) == 1 and cost.cosmos.get("replace", 0) == 1, cost  # finalize
    assert set(cost.cosmos) <= {"query", "create", "upsert", "read", "replace", "patch"}, cost
    assert cost.redis <= 1, cost  # forgetting the run's keys (completion is decided from the records)


async def test_linear_chain_costs_one_read_one_write_and_no_redis_per_node(distributed: Distributed) -> None:
    services, run_id, writes, start_cost = await start(distributed, "linear")
    # Starting a run: the status item and the run header, nothing more.
    assert start_cost == {"create": 2}

    costs = await drive(services, run_id)

    status = await services.adapter.get_status(run_id)
    assert status is not None and status["status"] == "completed", status
    assert [c.node_id for c in costs] == [f"n{i}" for i in range(CHAIN)]
    for cost in costs[:-1]:
        assert_ordinary(cost)
        assert cost.redis == 0, cost  # one predecessor: no gate
    assert_terminal(costs[-1])
    # lastUpdated: refreshed once for the whole run (throttled), not once per node.
    assert sum(c.cosmos.get("patch", 0) for c in costs) <= 1
    assert writes == [run_id]
    totals = services.adapter.cosmos_requests.counts
    # 8 nodes with 12 context operations each: 8 reads + 8 writes, + start, result and final status.
    assert totals.get("query", 0) == CHAIN + 1
    assert totals.get("create", 0) == CHAIN + 2
    assert totals.get("replace", 0) == 1


async def test_fan_out_join_costs_one_redis_command_per_arriving_edge(distributed: Distributed) -> None:
    services, run_id, writes, _ = await start(distributed, "fan-join")

    costs = await drive(services, run_id)

    status = await services.adapter.get_status(run_id)
    assert status is not None and status["status"] == "completed", status
    by_node = {c.node_id: c for c in costs}
    assert sorted(by_node) == sorted(["a", *[f"b{i}" for i in range(FAN)], "j", "z"])
    assert len(costs) == len(by_node)  # every job handled once: the join was released once
    for cost in costs[:-1]:
        assert_ordinary(cost)
    assert_terminal(costs[-1])
    assert by_node["a"].redis == 0  # its targets have one predecessor each
    # The gate: exactly one command per arriving edge, taken by the predecessors' jobs.
    assert [by_node[f"b{i}"].redis for i in range(FAN)] == [1] * FAN
    # The join's own job: one command, the claim on its execution (duplicate deliveries are dropped).
    assert by_node["j"].redis == 1
    assert sum(c.cosmos.get("patch", 0) for c in costs) <= 1
    assert writes == [run_id]
    assert status["result"]["context"]["_outputs.j"]["node"] == "j"


# --- Flowcraft's bare-INCR fan-in is gone ---------------------------------------------------------------


def store_for(env: AzureTestEnv, redis_client: Redis) -> RedisCoordinationStore:
    return RedisCoordinationStore(redis_client, prefix=env.redis_prefix.rstrip(":"))


async def test_a_predecessor_delivered_twice_does_not_release_an_all_join_early(
    azure_env: AzureTestEnv, redis_client: Redis,
) -> None:
    store = store_for(azure_env, redis_client)
    gate = "run-dup|gate|0|join"

    async def arrive(member: str) -> tuple[str, bool]:
        return await store.arrive(gate, member, done=True, expected=3, strategy="all", ttl_seconds=60)

    assert await arrive("p1") == ("wait", False)
    assert await arrive("p1") == ("wait", False)  # the same predecessor again: still one of three
    assert await arrive("p2") == ("wait", False)
    assert await arrive("p2") == ("wait", False)
    assert await arrive("p3") == ("fire", True)
    # Later duplicates learn the decision but are not the first to take it: nobody enqueues twice.
    assert await arrive("p3") == ("fire", False)
    assert await arrive("p1") == ("fire", False)

    # What Flowcraft's INCR counter would have done with the same deliveries: released after p1, p1, p2.
    counter_key = f"{azure_env.redis_prefix}incr-join"
    counts = [await store.increment(counter_key, 60) for _member in ("p1", "p1", "p2")]
    assert counts[-1] >= 3


async def test_concurrent_duplicate_arrivals_decide_the_join_exactly_once(
    azure_env: AzureTestEnv, redis_client: Redis,
) -> None:
    store = store_for(azure_env, redis_client)
    gate = "run-race|gate|0|join"
    members = [f"p{i}" for i in range(5)] * 4  # every predecessor delivered four times, all at once

    results = await asyncio.gather(*(store.arrive(gate, m, done=True, expected=5, strategy="all", ttl_seconds=60)
                                     for m in members))

    assert [first for _decision, first in results].count(True) == 1
    assert all(decision in ("wait", "fire") for decision, _ in results)


async def test_skipped_duplicates_do_not_skip_an_any_join_early(azure_env: AzureTestEnv, redis_client: Redis) -> None:
    store = store_for(azure_env, redis_client)
    gate = "run-any|gate|0|merge"

    async def arrive(member: str, done: bool) -> tuple[str, bool]:
        return await store.arrive(gate, member, done=done, expected=2, strategy="any", ttl_seconds=60)

    # The branch not taken arrives twice as skipped: the join must still wait for the other one.
    assert await arrive("left", False) == ("wait", False)
    assert await arrive("left", False) == ("wait", False)
    assert await arrive("right", True) == ("fire", True)
    assert await arrive("right", True) == ("fire", False)
