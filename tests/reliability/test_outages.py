"""Dependency outages: Redis restarted mid-run, Cosmos DB throttling and unavailable, the queue unreachable.

Each test pauses a run at a known point (the `hold` node of the "held" blueprint: a -> b(hold), c, d ->
e), takes a dependency away, lets the run go on so that its next step needs the dependency, waits until
the worker has logged its retries (a condition, not a sleep), brings the dependency back, and checks that
the run completes with nothing lost: every key present, the join executed once, one final status.
The outages are the real thing: a redis-server killed and restarted on the same port, an HTTPS proxy in
front of the Cosmos DB stand-in answering 429/503, a TCP proxy in front of Azurite that cuts connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from rel_support import CosmosFaultProxy, PrivateRedis, RelHarness, TcpProxy, executions, records, wait_final
from rel_workflows import HOLD_RELEASE, HOLD_STARTED, blueprints, registry

from flowcraft_core.azure.services import AzureServices
from flowcraft_core.events import CollectingEventBus
from flowcraft_dev.emulators import COSMOS_EMULATOR_KEY

NODES = ("a", "b", "c", "d", "e")


def retries(caplog: pytest.LogCaptureFixture, operation: str) -> list[str]:
    """The retry warnings logged for an operation (e.g. "redis.arrive")."""
    return [r.getMessage() for r in caplog.records
            if r.name == "flowcraft.retry" and r.levelno == logging.WARNING and r.getMessage().startswith(operation)]


def assert_intact(status: dict[str, Any], run_id: str, token: str) -> None:
    assert status["status"] == "completed", status
    context = status["result"]["context"]
    for node in NODES:
        assert context[f"k_{node}"] == {"token": token, "node": node}, context
    assert context["_outputs.e"] == {"token": token, "keys": ["k_a", "k_b", "k_c", "k_d"], "foreign": []}
    assert executions(run_id)["e"] == 1


async def hold_b(worker: AzureServices, bus: CollectingEventBus, run_id: str, token: str) -> None:
    """Start a "held" run and return once b is executing and c and d have passed e's gate."""
    HOLD_STARTED[run_id] = asyncio.Event()
    HOLD_RELEASE[run_id] = asyncio.Event()
    await worker.adapter.start_run("held", {"token": token}, run_id=run_id)
    await asyncio.wait_for(HOLD_STARTED[run_id].wait(), 20)

    def branches_done() -> bool:
        done = {e["payload"]["nodeId"] for e in bus.events
                if e["type"] == "job:processed" and e["payload"]["runId"] == run_id}
        return {"c", "d"} <= done

    await wait_until(branches_done, timeout=20, message="c and d routed")


# --- Redis -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keeps_data", [True, False], ids=["restart-keeps-data", "restart-loses-data"])
async def test_redis_restarted_mid_run(rel: RelHarness, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                       keeps_data: bool) -> None:
    """With its data back (a restart, a failover) the run just goes on; with a cache that came back empty the
    join gate forgot c and d, the run stalls, and one reconciler pass (routing every stored record again)
    completes it."""
    caplog.set_level(logging.WARNING, logger="flowcraft")
    redis = PrivateRedis(tmp_path / "redis", persistent=keeps_data)
    redis.start()
    try:
        bus = CollectingEventBus()
        worker = await rel.build(registry, blueprints, event_bus=bus, count_in_redis=False, REDIS_URL=redis.url,
                                 FLOWCRAFT_STALLED_THRESHOLD_SECONDS="0.2")
        run_id, token = f"redis-{keeps_data}", "tok-redis"
        await hold_b(worker, bus, run_id, token)

        await asyncio.to_thread(redis.stop)
        HOLD_RELEASE[run_id].set()  # b commits, then needs Redis for e's gate
        await wait_until(lambda: len(retries(caplog, "redis.arrive")) >= 2, timeout=30,
                         message="the worker retrying redis.arrive")
        await asyncio.to_thread(redis.start)

        if not keeps_data:
            def b_processed() -> bool:
                return any(e["type"] == "job:processed" and e["payload"]["runId"] == run_id
                           and e["payload"]["nodeId"] == "b" for e in bus.events)

            await wait_until(b_processed, timeout=30, message="b's job done after the restart")
            status = await worker.adapter.get_status(run_id)
            assert status is not None and status["status"] == "running"  # stalled: e's gate forgot c and d
            assert executions(run_id)["e"] == 0

            async def reconciled() -> int:
                return (await worker.reconciler.run()).reconciled_runs

            await wait_until(reconciled, timeout=10, interval=0.3, message="the reconciler resumed the run")

        status = await wait_final(worker, run_id)
        assert_intact(status, run_id, token)
        assert rel.finals[run_id] == 1
        assert await records(worker, run_id) == Counter({f"0:{n}": 1 for n in NODES})
    finally:
        await rel.close()
        redis.stop()


# --- Cosmos DB ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "count", "retry_after_ms"), [(429, 12, 20), (503, 4, None)],
                         ids=["429-throttled", "503-unavailable"])
async def test_cosmos_throttling_and_unavailability(rel: RelHarness, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture,
                                                    status: int, count: int, retry_after_ms: int | None) -> None:
    """The SDK retries a 429 nine times and a 503 about once by itself; our policy retries what it gives up on.
    Faults hit the run's creation (nothing else is running: deterministic), then again mid-run."""
    caplog.set_level(logging.WARNING, logger="flowcraft")
    port = int(re.search(r"https://127\.0\.0\.1:(\d+)/", rel.env.cosmos_connection_string).group(1))  # type: ignore[union-attr]
    proxy = CosmosFaultProxy(port, tmp_path / "tls")
    await proxy.start()
    try:
        bus = CollectingEventBus()
        worker = await rel.build(registry, blueprints, start=False, event_bus=bus,
                                 COSMOS_DB_CONNECTION_STRING=proxy.connection_string(COSMOS_EMULATOR_KEY))
        token = f"tok-{status}"
        proxy.fail_next(status, count, retry_after_ms)
        run_id = await worker.adapter.start_run("held", {"token": token}, run_id=f"cosmos-{status}")
        assert proxy.injected[status] == count
        assert retries(caplog, "cosmos.create_status"), caplog.text  # the SDK gave up, our policy did not

        HOLD_STARTED[run_id] = asyncio.Event()
        HOLD_RELEASE[run_id] = asyncio.Event()
        await worker.adapter.start()
        await asyncio.wait_for(HOLD_STARTED[run_id].wait(), 30)
        proxy.fail_next(status, count, retry_after_ms)  # b's commit (or a branch's load) meets them now
        HOLD_RELEASE[run_id].set()

        final = await wait_final(worker, run_id, timeout=60)
        assert proxy.injected[status] == 2 * count
        assert_intact(final, run_id, token)
        assert rel.finals[run_id] == 1
        assert await records(worker, run_id) == Counter({f"0:{n}": 1 for n in NODES})
        warned = [line for line in caplog.messages if "retry" in line]
        assert warned and all(f" {status}" in line for line in retries(caplog, "cosmos.")), warned
    finally:
        await rel.close()
        await proxy.close()


# --- Storage queue -----------------------------------------------------------------------------------------


def through_proxy(connection_string: str, port: int) -> str:
    return re.sub(r"(QueueEndpoint=http://127\.0\.0\.1:)\d+", rf"\g<1>{port}", connection_string)


async def test_queue_unreachable_for_a_few_seconds(rel: RelHarness, caplog: pytest.LogCaptureFixture) -> None:
    """The worker's queue goes away while b routes to e: the queue operation carrying e (the hand-on of b's
    message to e, or its send) is retried, polling backs off, and once the queue is back e runs. (The Storage
    SDK's own retries start at a 15 s back-off; the test turns them off so the outage reaches our policy at
    once — in production the SDK waits first.)"""
    caplog.set_level(logging.WARNING, logger="flowcraft")
    port = int(re.search(r"QueueEndpoint=http://127\.0\.0\.1:(\d+)/", rel.env.queue_connection_string).group(1))  # type: ignore[union-attr]
    proxy = TcpProxy(port)
    await proxy.start()
    try:
        bus = CollectingEventBus()
        worker = await rel.build(registry, blueprints, start=False, event_bus=bus,
                                 AzureWebJobsStorage=through_proxy(rel.env.queue_connection_string, proxy.port))
        await fail_fast_queue(worker)
        await worker.adapter.start()
        run_id, token = "queue-outage", "tok-queue"
        await hold_b(worker, bus, run_id, token)

        await proxy.pause()
        HOLD_RELEASE[run_id].set()
        await wait_until(lambda: len(retries(caplog, "queue.pass_on") + retries(caplog, "queue.enqueue")) >= 2,
                         timeout=30, message="the worker retrying the queue operation that carries e")
        polls = [m for m in caplog.messages if "receiving from the job queue failed" in m]
        await proxy.resume()

        final = await wait_final(worker, run_id, timeout=40)
        assert_intact(final, run_id, token)
        assert rel.finals[run_id] == 1
        assert polls, "the poller should have noticed the outage too"
    finally:
        await rel.close()
        await proxy.close()


async def fail_fast_queue(services: AzureServices) -> None:
    """Swap the worker's queue client for one without the Storage SDK's own (15 s back-off) retries."""
    from azure.storage.queue.aio import QueueClient

    old = services.queue_client
    fast = QueueClient.from_connection_string(services.settings.storage_connection_string.get_secret_value(),
                                              services.settings.queue_name, retry_total=0)
    services.queue_client = fast
    services.adapter.queue_client = fast
    services.adapter.job_queue.client = fast
    await old.close()
