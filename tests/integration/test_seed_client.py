"""The seed's client pattern works unchanged against our status items (real emulators).

Flowcraft's documented client polls the statuses container by point read (``item(runId, runId).read()``)
until ``status`` is no longer ``running``, then reads ``result`` (with ``result.context``) or ``reason``;
its adapter wrote ``finalStatus`` instead, so that loop never saw a result. Its reconciler queries
``status = 'running' AND lastUpdated < threshold``. Both are reproduced here, in Python, exactly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from azure.cosmos.aio import ContainerProxy
from harness import Distributed
from helpers import wait_until

import workflows
from flowcraft_core.azure.clients import make_cosmos_client
from flowcraft_core.azure.services import AzureServices
from workflows import llm

USE_CASE = "4.content-moderation"


@pytest.fixture(autouse=True)
def _offline_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(llm.COMPLETION_ENV_VAR, raising=False)
    llm.set_completion_function(None)


async def wait_for_workflow(container: ContainerProxy, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The seed's ``waitForWorkflow``, line for line (polling faster than its 1 s)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            resource = await container.read_item(run_id, partition_key=run_id)
            if resource and resource["status"] != "running":
                return {
                    "status": resource["status"],
                    "payload": resource.get("result") if resource["status"] == "completed" else None,
                    "reason": resource.get("reason"),
                }
        except Exception:  # noqa: S110 - the seed's loop: the item might not exist yet, keep polling
            pass
        await asyncio.sleep(0.1)
    return {"status": "failed", "reason": f"Timeout: Client did not receive a result within {timeout_s}s."}


class SeedClient:
    """A Cosmos client of its own, as the seed's client process has."""

    def __init__(self, services: AzureServices) -> None:
        settings = services.settings
        self.client = make_cosmos_client(settings.cosmos_connection_string.get_secret_value(),
                                         verify_tls=settings.cosmos_verify_tls)
        database = self.client.get_database_client(settings.cosmos_database)
        self.statuses = database.get_container_client(settings.cosmos_status_container)

    async def stalled(self, threshold: float) -> list[str]:
        """The reconciler's query, as the seed describes it."""
        query = "SELECT * FROM c WHERE c.status = 'running' AND c.lastUpdated < @threshold"
        return [item["id"] async for item in self.statuses.query_items(
            query, parameters=[{"name": "@threshold", "value": threshold}])]

    async def close(self) -> None:
        await self.client.close()


async def test_seed_client_loop_sees_the_completed_result(distributed: Distributed) -> None:
    services = await distributed.build(workflows.registry, workflows.blueprints)
    seed = SeedClient(services)
    try:
        run_id = await services.adapter.start_run(
            workflows.use_cases[USE_CASE]["entryWorkflowId"], workflows.initial_context(USE_CASE))
        final = await wait_for_workflow(seed.statuses, run_id, 30)
    finally:
        await seed.close()

    assert final["status"] == "completed", final
    # The seed prints payload.context.moderation_result.
    assert final["payload"]["context"]["moderation_result"].startswith("Post Edited for PII.")
    assert final["reason"] is None


async def test_seed_client_loop_sees_the_reason_of_a_cancelled_run(distributed: Distributed) -> None:
    services = await distributed.build(workflows.registry, workflows.blueprints, start=False)
    seed = SeedClient(services)
    try:
        run_id = await services.adapter.start_run(
            workflows.use_cases[USE_CASE]["entryWorkflowId"], workflows.initial_context(USE_CASE))
        await services.adapter.cancel(run_id, "changed my mind")
        final = await wait_for_workflow(seed.statuses, run_id, 10)
    finally:
        await seed.close()

    assert final == {"status": "cancelled", "payload": None, "reason": "changed my mind"}


async def test_reconciler_query_finds_a_stalled_run_and_the_run_then_completes(distributed: Distributed) -> None:
    # No worker yet, and the start job is lost: the run is "running" but nothing moves.
    services = await distributed.build(workflows.registry, workflows.blueprints, start=False,
                                       FLOWCRAFT_STALLED_THRESHOLD_SECONDS="1")
    seed = SeedClient(services)
    try:
        run_id = await services.adapter.start_run(
            workflows.use_cases[USE_CASE]["entryWorkflowId"], workflows.initial_context(USE_CASE))
        await services.queue_client.clear_messages()
        item = await services.adapter.get_status(run_id)
        assert item is not None and item["status"] == "running"
        assert isinstance(item["lastUpdated"], int | float)  # epoch seconds, comparable in the query

        # A fresh run is not stalled for a 5-minute threshold...
        assert run_id not in await seed.stalled(time.time() - 300)
        # ...and is found once it has been quiet longer than the 1 s threshold.
        await wait_until(lambda: _contains(seed.stalled(time.time() - 1), run_id), timeout=10,
                         message="stalled run found by the seed's query")

        stats = await services.reconciler.run()
        assert stats.stalled_runs == 1 and stats.reconciled_runs == 1 and stats.failed_runs == 0

        await services.adapter.start()
        final = await wait_for_workflow(seed.statuses, run_id, 30)
    finally:
        await seed.close()

    assert final["status"] == "completed", final
    assert final["payload"]["context"]["moderation_result"].startswith("Post Edited for PII.")


async def _contains(ids: Any, run_id: str) -> bool:
    return run_id in await ids


async def test_client_helpers_do_the_seed_clients_work_in_one_call_each(distributed: Distributed) -> None:
    from flowcraft_core.azure.client import get_run_status, start_run, wait_for_run

    services = await distributed.build(workflows.registry, workflows.blueprints)
    run_id = await start_run(services.adapter, workflows.use_cases[USE_CASE]["entryWorkflowId"],
                             workflows.initial_context(USE_CASE), run_id="client-helper-run")
    final = await wait_for_run(services.adapter, run_id, timeout=30)
    status = await get_run_status(services.adapter, run_id)

    assert run_id == "client-helper-run"
    assert final["status"] == "completed", final
    assert "[REDACTED]" in final["result"]["context"]["final_output"]
    assert status is not None and status["result"]["context"] == final["result"]["context"]
    assert await get_run_status(services.adapter, "no-such-run") is None
