"""Duplicates and reordering: every job delivered 2-3 times, in shuffled order, some copies late.

A wrapper around the workers' job queue (over the real Azurite queue) sends each job two or three
times; jobs enqueued close together are sent in a shuffled order, and some copies are delayed by a
second, so successors often arrive before, among or long after their duplicates. The outcome must be
the clean run's: the same final context, the same committed records (one per node execution key),
every join executed exactly once, and exactly one final-status write per run.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from helpers import wait_until
from rel_support import RelHarness, executions, records, wait_final
from rel_workflows import MIXED_JOINS, blueprints, registry

from flowcraft_core.azure.queue import AzureJobQueue
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.protocols import Job

CASES: list[dict[str, Any]] = [
    {"blueprint": "mixed", "context": {"pick": "left", "items": [1, 2, 3, 4, 5], "loops": 3}},
    {"blueprint": "mixed", "context": {"pick": "right", "items": [7, 8], "loops": 2}},
    {"blueprint": "fan", "context": {}},
]


class DuplicatingQueue:
    """Sends every job 2-3 times; a batch of jobs enqueued together goes out shuffled, some copies 1 s late."""

    def __init__(self, inner: AzureJobQueue, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng
        self.buffer: list[tuple[Job, float]] = []
        self.copies: Counter[str] = Counter()
        self.pending = 0
        self._flush: asyncio.Task[None] | None = None

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        n = self.rng.choice((2, 3))
        self.copies[f"{job.run_id}/{job.key}"] += n
        for _ in range(n):
            self.buffer.append((job, delay_seconds + self.rng.choice((0, 0, 1))))
        self.pending += n
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._send_soon())

    async def _send_soon(self) -> None:
        await asyncio.sleep(0.05)  # gather what the same and neighbouring jobs enqueue, then shuffle it
        batch, self.buffer = self.buffer, []
        self.rng.shuffle(batch)
        for job, delay in batch:
            await self.inner.enqueue(job, delay_seconds=delay)
            self.pending -= 1
        if self.buffer:
            await self._send_soon()


def duplicate_jobs(services: AzureServices, seed: int) -> DuplicatingQueue:
    wrapper = DuplicatingQueue(services.adapter.job_queue, random.Random(seed))
    services.adapter.engine.queue = wrapper
    return wrapper


async def run_cases(rel: RelHarness, starter: AzureServices, tag: str) -> dict[str, dict[str, Any]]:
    run_ids = [await starter.adapter.start_run(case["blueprint"], rel.context("tok", **case["context"]),
                                               run_id=f"{tag}-{i}") for i, case in enumerate(CASES)]
    return {run_id: await wait_final(starter, run_id, timeout=60) for run_id in run_ids}


async def test_every_job_delivered_two_or_three_times_out_of_order_gives_the_clean_outcome(rel: RelHarness) -> None:
    clean_worker = await rel.build(registry, blueprints)
    clean = await run_cases(rel, clean_worker, "clean")
    clean_records = {run_id: await records(clean_worker, run_id) for run_id in clean}
    await rel.close()

    first = await rel.build(registry, blueprints)
    second = await rel.build(registry, blueprints)
    wrappers = [duplicate_jobs(first, seed=1), duplicate_jobs(second, seed=2)]
    dup = await run_cases(rel, first, "dup")

    async def drained() -> bool:
        props = await first.queue_client.get_queue_properties()
        idle = not first.adapter._in_flight and not second.adapter._in_flight
        return idle and props.approximate_message_count == 0 and all(w.pending == 0 for w in wrappers)

    await wait_until(drained, timeout=30, interval=0.2, message="every duplicate consumed")

    copies = sum((w.copies for w in wrappers), Counter())
    assert copies and min(copies.values()) >= 2, copies
    assert sum(copies.values()) >= 2.3 * len(copies)  # a good share of jobs really went out three times
    print(f"\n{len(copies)} distinct jobs sent {sum(copies.values())} times")

    for i, case in enumerate(CASES):
        clean_id, dup_id = f"clean-{i}", f"dup-{i}"
        assert dup[dup_id]["status"] == clean[clean_id]["status"] == "completed", (dup[dup_id], case)
        assert dup[dup_id]["result"]["context"] == clean[clean_id]["result"]["context"], case
        assert await records(first, dup_id) == clean_records[clean_id], case
        assert set(clean_records[clean_id].values()) == {1}
        assert rel.finals[dup_id] == 1, (case, rel.finals)
        ran = executions(dup_id)
        # Executions of every node, built-ins included (batch-gather), from both workers' events.
        started = Counter(e["payload"]["nodeId"] for worker in (first, second)
                          for e in worker.adapter.engine.events.events  # type: ignore[attr-defined]
                          if e["type"] == "node:start" and e["payload"]["runId"] == dup_id)
        joins = MIXED_JOINS if case["blueprint"] == "mixed" else ("e",)
        for join in joins:
            assert started[join] == 1, (case, join, started)
        # Non-join nodes may run more than once (at-least-once), but never fewer than in the clean run.
        assert all(ran[node] >= n for node, n in executions(clean_id).items()), (ran, executions(clean_id))
