"""The reconciler: finds runs that stopped making progress and re-enqueues what they should be doing."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from azure.cosmos.aio import CosmosClient

from ..telemetry import log_fields, reconcile_span
from .adapter import AzureQueueAdapter
from .cosmos import CosmosStatusStore

logger = logging.getLogger("flowcraft.reconciler")


@dataclass
class ReconciliationStats:
    """What one reconciliation pass found and did."""

    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0

    def to_dict(self) -> dict[str, int]:
        """camelCase form for logs and HTTP."""
        return {"stalledRuns": self.stalled_runs, "reconciledRuns": self.reconciled_runs,
                "failedRuns": self.failed_runs}


class AzureReconciler:
    """Queries the statuses container for running runs not updated within the threshold and reconciles each."""

    def __init__(self, *, adapter: AzureQueueAdapter, status_store: CosmosStatusStore,
                 stalled_threshold_seconds: float = 300, batch_limit: int = 200) -> None:
        self.adapter = adapter
        self.status_store = status_store
        self.stalled_threshold_seconds = stalled_threshold_seconds
        self.batch_limit = batch_limit

    async def run(self) -> ReconciliationStats:
        """One pass: reconcile every stalled run; never raises for a single run's failure."""
        stats = ReconciliationStats()
        with reconcile_span() as span:
            threshold = time.time() - self.stalled_threshold_seconds
            run_ids = await self.status_store.list_stalled(threshold, limit=self.batch_limit)
            stats.stalled_runs = len(run_ids)
            for run_id in run_ids:
                try:
                    with log_fields(**{"flowcraft.run_id": run_id}):
                        enqueued = await self.adapter.reconcile(run_id)
                    if enqueued:
                        stats.reconciled_runs += 1
                except Exception:
                    stats.failed_runs += 1
                    logger.exception("reconciling run %s failed", run_id)
            span.set_attributes({"flowcraft.stalled_runs": stats.stalled_runs,
                                 "flowcraft.reconciled_runs": stats.reconciled_runs,
                                 "flowcraft.failed_runs": stats.failed_runs})
        if run_ids:
            logger.info("reconciliation: %s", stats.to_dict())
        return stats


def create_azure_reconciler(*, adapter: AzureQueueAdapter, cosmos_client: CosmosClient | None = None,
                            cosmos_database_name: str = "flowcraftDb", status_container_name: str = "statuses",
                            stalled_threshold_seconds: float = 300, **_: Any) -> AzureReconciler:
    """Build a reconciler for the adapter's runs (the seed's factory, same arguments)."""
    if cosmos_client is None:
        store = adapter.status_store
    else:
        store = CosmosStatusStore.from_client(cosmos_client, cosmos_database_name, status_container_name)
    return AzureReconciler(adapter=adapter, status_store=store, stalled_threshold_seconds=stalled_threshold_seconds)
