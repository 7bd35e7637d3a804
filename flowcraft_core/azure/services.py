"""Builds the Azure clients, stores and adapter from Settings, once per process."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.cosmos.aio import CosmosClient
from azure.storage.queue.aio import QueueClient
from redis.asyncio import Redis

from ..runs import PurgeStores, RetentionStats, purge_expired
from ..settings import Settings, load_workflows
from .adapter import AzureQueueAdapter, RuntimeOptions, WorkerOptions
from .clients import ensure_cosmos_containers, make_cosmos_client, make_redis
from .reconciler import AzureReconciler, create_azure_reconciler
from .redis_store import RedisCoordinationStore

logger = logging.getLogger("flowcraft.azure")


def plain_queue_client(connection_string: str, queue_name: str) -> QueueClient:
    """A queue client without message policies: the adapter encodes and decodes base64 itself.

    The SDK's own retry starts at a 15 s back-off, which would hide a short outage from our retry policy
    (flowcraft_core.azure.retry) for about a minute; a short SDK retry leaves the pacing to ours.
    """
    return QueueClient.from_connection_string(connection_string, queue_name, retry_total=2,
                                              retry_backoff_factor=0.5, initial_backoff=1, increment_base=2)


@dataclass
class AzureServices:
    """Everything a worker process needs, built from settings."""

    settings: Settings
    queue_client: QueueClient
    poison_queue_client: QueueClient
    cosmos_client: CosmosClient
    redis: Redis
    adapter: AzureQueueAdapter
    reconciler: AzureReconciler

    async def close(self) -> None:
        """Close every client."""
        for closer in (self.queue_client.close, self.poison_queue_client.close, self.cosmos_client.close,
                       self.redis.aclose):
            try:
                await closer()
            except Exception as exc:  # closing is best effort at shutdown
                logger.debug("closing a client failed: %s", exc)


async def ensure_resources(settings: Settings, services: AzureServices) -> None:
    """Create the queues, database and containers if missing (local development and tests)."""
    from azure.core.exceptions import ResourceExistsError

    for client in (services.queue_client, services.poison_queue_client):
        with contextlib.suppress(ResourceExistsError):
            await client.create_queue()
    await ensure_cosmos_containers(services.cosmos_client, settings.cosmos_database,
                                   [settings.cosmos_context_container, settings.cosmos_status_container])


async def build_services(settings: Settings, *, registry: Mapping[str, Any] | None = None,
                         blueprints: Mapping[str, Any] | None = None,
                         runtime_options: RuntimeOptions | None = None,
                         create_resources: bool | None = None) -> AzureServices:
    """Create clients and the adapter; registry and blueprints default to FLOWCRAFT_WORKFLOWS."""
    settings.require("AzureWebJobsStorage", "COSMOS_DB_CONNECTION_STRING", "REDIS_URL")
    if registry is None or blueprints is None:
        registry, blueprints = load_workflows(settings.workflows_module)
    options = runtime_options or RuntimeOptions()
    options.registry = registry
    options.blueprints = blueprints
    queue_client = plain_queue_client(settings.storage_connection_string.get_secret_value(), settings.queue_name)
    poison = plain_queue_client(settings.storage_connection_string.get_secret_value(), settings.poison_queue_name)
    cosmos = make_cosmos_client(settings.cosmos_connection_string.get_secret_value(),
                                verify_tls=settings.cosmos_verify_tls)
    redis = make_redis(settings.redis_url.get_secret_value())
    adapter = AzureQueueAdapter(
        queue_client=queue_client, cosmos_client=cosmos, coordination_store=RedisCoordinationStore(redis),
        cosmos_database_name=settings.cosmos_database, context_container_name=settings.cosmos_context_container,
        status_container_name=settings.cosmos_status_container, runtime_options=options,
        worker_options=WorkerOptions(concurrency=settings.worker_concurrency,
                                     visibility_timeout=settings.visibility_timeout,
                                     heartbeat_seconds=min(30.0, settings.stalled_threshold_seconds / 3)),
        poison_queue_client=poison,
    )
    reconciler = create_azure_reconciler(adapter=adapter,
                                         stalled_threshold_seconds=settings.stalled_threshold_seconds)
    services = AzureServices(settings, queue_client, poison, cosmos, redis, adapter, reconciler)
    if settings.create_resources if create_resources is None else create_resources:
        await ensure_resources(settings, services)
    return services


async def run_retention(services: AzureServices, *, now: float | None = None,
                        page_size: int = 100, max_pages: int = 10) -> RetentionStats | None:
    """Purge ended runs older than FLOWCRAFT_RETENTION_DAYS (bounded pages); None when retention is off."""
    days = services.settings.retention_days
    if days is None:
        return None
    adapter = services.adapter
    cutoff = (time.time() if now is None else now) - days * 86_400
    return await purge_expired(PurgeStores(adapter.run_store, adapter.status_store, adapter.coordination), cutoff,
                               page_size=page_size, max_pages=max_pages)
