"""What a job reads from Cosmos DB does not grow with its run, and what it reads is never less than a
whole read of the run would show (against the real stand-in, bytes counted inside it).

- The last branch of a 200-wide fan-out reads within 2x the bytes of the first branch (every job used to
  read the whole run: the last branch read 200 times more records than the first).
- Loads follow continuation tokens: with a page size of 2 a run of many items is still read whole.
- A worker's cache sees what another worker (another process, its own cache) wrote after it: records,
  and the stop marker that cancels the run; two workers finish one wide run together.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from harness import Distributed, blueprint

from bench.traffic import database_traffic
from flowcraft_core.azure.cosmos import CosmosRunStore, RequestCounter
from flowcraft_core.azure.queue import parse_job
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.nodes import NodeContext
from flowcraft_core.protocols import FINAL_STATUSES, NodeRecord

WIDTH = 200


async def node(ctx: NodeContext) -> dict[str, Any]:
    """Writes a key of its own and returns a small output, as real nodes do."""
    await ctx.context.set(f"seen.{ctx.node_id}", True)
    return {"output": {"node": ctx.node_id}}


REGISTRY: dict[str, Any] = {"node": node}


def fan(width: int) -> Any:
    workers = [f"w{i}" for i in range(width)]
    return blueprint({
        "id": f"fan-{width}",
        "nodes": [{"id": "start", "uses": "node"}, *({"id": w, "uses": "node"} for w in workers),
                  {"id": "join", "uses": "node"}],
        "edges": [*({"source": "start", "target": w} for w in workers),
                  *({"source": w, "target": "join"} for w in workers)],
    })


async def drive_measuring_bytes(services: AzureServices, run_id: str, timeout: float = 240) -> list[tuple[str, int]]:
    """Handle the run's jobs one at a time from the real queue; (node, bytes the stand-in sent) per job."""
    adapter = services.adapter
    conn, database = services.settings.cosmos_connection_string, services.settings.cosmos_database
    costs: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = [m async for m in services.queue_client.receive_messages(
            messages_per_page=32, max_messages=32, visibility_timeout=60)]
        if not messages:
            status = await adapter.get_status(run_id)
            if status is not None and status["status"] in FINAL_STATUSES:
                return costs
            await asyncio.sleep(0.02)
            continue
        for msg in messages:
            job = parse_job(msg.content, base64_encoded=True)
            before = await database_traffic(conn, database)
            await adapter.handle_job(job, delivery_id=msg.id)
            after = await database_traffic(conn, database)
            costs.append((job.node_id, (after - before).read))
            await services.queue_client.delete_message(msg)
    raise TimeoutError(f"run {run_id} did not finish in {timeout}s")


async def test_the_last_branch_of_a_wide_fan_out_reads_no_more_than_the_first(distributed: Distributed) -> None:
    bp = fan(WIDTH)
    services = await distributed.build(REGISTRY, {bp.id: bp}, start=False)
    run_id = await services.adapter.start_run(bp.id, {"topic": "bytes"})

    costs = await drive_measuring_bytes(services, run_id)

    status = await services.adapter.get_status(run_id)
    assert status is not None and status["status"] == "completed", status
    context = status["result"]["context"]
    assert all(context[f"seen.w{i}"] is True for i in range(WIDTH))
    branches = [(n, read) for n, read in costs if n.startswith("w")]
    assert len(branches) == WIDTH
    (first, first_bytes), (last, last_bytes) = branches[0], branches[-1]
    assert first_bytes > 0
    assert last_bytes <= 2 * first_bytes, (first, first_bytes, last, last_bytes)
    assert max(read for _, read in branches) <= 2 * first_bytes, branches


async def commit(store: CosmosRunStore, run_id: str, node_id: str, **changes: Any) -> None:
    _stored, new = await store.commit(run_id, NodeRecord(node_id=node_id, output=node_id, changes=changes))
    assert new


async def test_loads_follow_continuation_tokens_whole_and_incremental(distributed: Distributed) -> None:
    bp = fan(3)
    services = await distributed.build(REGISTRY, {bp.id: bp}, start=False)
    run_id = await services.adapter.start_run(bp.id, {"topic": "pages"})
    counter = RequestCounter()
    store = CosmosRunStore(services.adapter.run_store.container, counter, page_size=2)
    for i in range(9):
        await commit(store, run_id, f"n{i}", **{f"k{i}": i})

    state = await store.load(run_id)
    assert state is not None
    assert sorted(r.node_id for r in state.records.values()) == [f"n{i}" for i in range(9)]
    assert all(state.context[f"k{i}"] == i for i in range(9))
    assert counter.counts["query"] == 5  # the header and 9 records, two per page

    for i in range(9, 14):
        await commit(store, run_id, f"n{i}", **{f"k{i}": i})
    counter.reset()
    state = await store.load(run_id)
    assert state is not None
    assert sorted(r.node_id for r in state.records.values()) == sorted(f"n{i}" for i in range(14))
    assert state.context["k13"] == 13 and state.context["topic"] == "pages"
    # Only the five new records (and whatever the same second re-listed, minus what the cache held).
    assert counter.counts["query"] == 3


async def test_a_workers_cache_sees_records_and_the_stop_marker_another_worker_wrote(distributed: Distributed) -> None:
    bp = fan(3)
    services = await distributed.build(REGISTRY, {bp.id: bp}, start=False)
    run_id = await services.adapter.start_run(bp.id, {})
    container = services.adapter.run_store.container
    mine, theirs = CosmosRunStore(container), CosmosRunStore(container)

    first = await mine.load(run_id)
    assert first is not None and not first.stopped and not first.records
    await commit(theirs, run_id, "start", shared=1)
    await commit(theirs, run_id, "w0", shared=2)
    seen = await mine.load(run_id)
    assert seen is not None
    assert {r.node_id for r in seen.records.values()} == {"start", "w0"}
    assert seen.context["shared"] == 2

    await theirs.mark(run_id, "cancelled", {"reason": "stopped elsewhere"})
    stopped = await mine.load(run_id)
    assert stopped is not None and stopped.cancelled == "stopped elsewhere"
    assert mine.items_read == 1 + 2 + 1  # the header, then the two records, then the marker: each once


async def test_two_workers_with_their_own_caches_finish_one_wide_run(distributed: Distributed) -> None:
    bp = fan(60)
    # Four jobs at a time each: neither worker can take every message, so both work on the run.
    one = await distributed.build(REGISTRY, {bp.id: bp}, FLOWCRAFT_WORKER_CONCURRENCY="4")
    two = await distributed.build(REGISTRY, {bp.id: bp}, FLOWCRAFT_WORKER_CONCURRENCY="4")
    assert one.adapter.run_store.cache is not two.adapter.run_store.cache
    run_id = await one.adapter.start_run(bp.id, {})

    status = await one.adapter.wait_for_run(run_id, timeout=120, interval=0.1)

    assert status["status"] == "completed", status
    context = status["result"]["context"]
    assert all(context[f"seen.w{i}"] is True for i in range(60)) and context["_outputs.join"] == {"node": "join"}
    assert one.adapter.processed > 0 and two.adapter.processed > 0
    assert one.adapter.processed + two.adapter.processed >= 62
