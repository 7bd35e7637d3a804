"""Load: 200 concurrent runs of a 5-node diamond (a -> b, c, d -> e) through one worker.

Every run carries its own token; every node stamps what it writes with it, and the join reports any
value carrying another run's token. All runs must complete, each with exactly its own five keys and
records, each join executed once, one final-status write per run, and nothing foreign in any context.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from helpers import wait_until
from rel_support import RelHarness, executions, records
from rel_workflows import blueprints, registry

from flowcraft_core.events import CollectingEventBus

pytestmark = pytest.mark.slow

RUNS = 200
NODES = ("a", "b", "c", "d", "e")


async def test_200_concurrent_diamonds_through_one_worker_complete_without_mixing(rel: RelHarness) -> None:
    bus = CollectingEventBus()
    worker = await rel.build(registry, blueprints, event_bus=bus, concurrency=32)
    tokens = {f"load-{i:03d}": f"token-{i:03d}" for i in range(RUNS)}

    gate = asyncio.Semaphore(16)

    async def start(run_id: str, token: str) -> None:
        async with gate:
            await worker.adapter.start_run("fan", rel.context(token), run_id=run_id)

    await asyncio.gather(*(start(run_id, token) for run_id, token in tokens.items()))

    def finished() -> int:
        return sum(1 for e in bus.events if e["type"] == "workflow:finish")

    await wait_until(lambda: finished() >= RUNS, timeout=120, interval=0.25, message=f"{RUNS} runs finished")

    finishes = Counter(e["payload"]["runId"] for e in bus.events if e["type"] == "workflow:finish")
    assert set(finishes) == set(tokens) and set(finishes.values()) == {1}
    for run_id, token in tokens.items():
        status = await worker.adapter.run_result(run_id)
        assert status is not None and status["status"] == "completed", status
        context = status["result"]["context"]
        assert context["token"] == token
        for node in NODES:
            assert context[f"k_{node}"] == {"token": token, "node": node}, (run_id, context)
        assert context["_outputs.e"] == {"token": token, "keys": ["k_a", "k_b", "k_c", "k_d"], "foreign": []}
        assert sorted(k for k in context if k.startswith("k_")) == [f"k_{n}" for n in NODES]
        assert executions(run_id)["e"] == 1
        assert rel.finals[run_id] == 1
    # The stored records, for a sample of runs (reading all 200 partitions adds nothing).
    for run_id in list(tokens)[::20]:
        assert await records(worker, run_id) == Counter({f"0:{n}": 1 for n in NODES})
