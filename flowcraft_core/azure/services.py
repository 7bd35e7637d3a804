"""Builds the Azure clients, stores and adapter from Settings, once per process."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.cosmos.aio import CosmosClient
from azure.storage.queue.aio import QueueClient
from redis.asyncio import Redis

from ..errors import FlowcraftError
from ..runs import PurgeStores, RetentionStats, purge_expired
from ..settings import Settings, load_workflow_module
from .adapter import AzureQueueAdapter, RuntimeOptions, WorkerOptions
from .clients import (
    ensure_cosmos_containers,
    http_env_settings,
    make_cosmos_client,
    make_cosmos_client_with_identity,
    make_queue_client_with_identity,
    make_redis,
    make_redis_with_identity,
)
from .identity import (
    IdentityChoice,
    cosmos_identity,
    make_async_credential,
    make_sync_credential,
    queue_service_url,
    redis_identity,
    storage_identity,
)
from .monitoring import configure_telemetry
from .reconciler import AzureReconciler, create_azure_reconciler
from .redis_store import RedisCoordinationStore

logger = logging.getLogger("flowcraft.azure")


def plain_queue_client(connection_string: str, queue_name: str) -> QueueClient:
    """A queue client without message policies: the adapter encodes and decodes base64 itself.

    The SDK's own retry starts at a 15 s back-off, which would hide a short outage from our retry policy
    (flowcraft_core.azure.retry) for about a minute; a short SDK retry leaves the pacing to ours.
    """
    return QueueClient.from_connection_string(connection_string, queue_name, **QUEUE_RETRY, **http_env_settings())


# The SDK's retry, kept short (see plain_queue_client).
QUEUE_RETRY: dict[str, Any] = {"retry_total": 2, "retry_backoff_factor": 0.5, "initial_backoff": 1,
                               "increment_base": 2}


@dataclass
class StoreClients:
    """The four clients, and the Entra ID credentials they share (closed with them)."""

    queue_client: QueueClient
    poison_queue_client: QueueClient
    cosmos_client: CosmosClient
    redis: Redis
    credentials: list[Any] = field(default_factory=list)
    # How each store authenticates ("key" or the credential), for the start-up log line.
    auth: dict[str, str] = field(default_factory=dict)


def build_clients(settings: Settings) -> StoreClients:
    """Every store's client: Entra ID when its identity setting is set, else its connection string.

    No network call: clients and credentials connect (and fetch tokens) on first use.
    """
    missing = [f"{key} (or {identity})" for key, identity, present in (
        ("AzureWebJobsStorage", "AzureWebJobsStorage__accountName",
         settings.storage_connection_string.get_secret_value() or settings.storage_account_name
         or settings.storage_queue_service_uri),
        ("COSMOS_DB_CONNECTION_STRING", "COSMOS_DB_ENDPOINT",
         settings.cosmos_connection_string.get_secret_value() or settings.cosmos_endpoint),
        ("REDIS_URL", "REDIS_HOST", settings.redis_url.get_secret_value() or settings.redis_host)) if not present]
    if missing:
        raise FlowcraftError(f"missing setting(s): {', '.join(missing)} (see local.settings.json.example)")
    credentials: list[Any] = []
    auth: dict[str, str] = {}
    async_credentials: dict[IdentityChoice, Any] = {}

    def async_credential(choice: IdentityChoice) -> Any:
        # One credential per distinct identity: the queues and Cosmos DB then share its token cache.
        if choice not in async_credentials:
            async_credentials[choice] = make_async_credential(choice)
            credentials.append(async_credentials[choice])
        return async_credentials[choice]

    if settings.storage_account_name or settings.storage_queue_service_uri:
        choice = storage_identity(settings)
        url = queue_service_url(settings)
        queue = make_queue_client_with_identity(url, settings.queue_name, async_credential(choice), **QUEUE_RETRY)
        poison = make_queue_client_with_identity(url, settings.poison_queue_name, async_credential(choice),
                                                 **QUEUE_RETRY)
        auth["queues"] = choice.describe()
    else:
        connection = settings.storage_connection_string.get_secret_value()
        queue = plain_queue_client(connection, settings.queue_name)
        poison = plain_queue_client(connection, settings.poison_queue_name)
        auth["queues"] = "connection string"
    if settings.cosmos_endpoint:
        choice = cosmos_identity(settings)
        cosmos = make_cosmos_client_with_identity(settings.cosmos_endpoint, async_credential(choice),
                                                  verify_tls=settings.cosmos_verify_tls)
        auth["cosmos"] = choice.describe()
    else:
        cosmos = make_cosmos_client(settings.cosmos_connection_string.get_secret_value(),
                                    verify_tls=settings.cosmos_verify_tls)
        auth["cosmos"] = "connection string"
    if settings.redis_host:
        choice = redis_identity(settings)
        sync_credential = make_sync_credential(choice)
        credentials.append(sync_credential)
        redis = make_redis_with_identity(settings.redis_host, settings.redis_port, sync_credential,
                                         ssl=settings.redis_ssl)
        auth["redis"] = choice.describe()
    else:
        redis = make_redis(settings.redis_url.get_secret_value())
        auth["redis"] = "URL"
    return StoreClients(queue, poison, cosmos, redis, credentials, auth)


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
    credentials: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        """Close every client, then the credentials."""
        for closer in (self.queue_client.close, self.poison_queue_client.close, self.cosmos_client.close,
                       self.redis.aclose):
            try:
                await closer()
            except Exception as exc:  # closing is best effort at shutdown
                logger.debug("closing a client failed: %s", exc)
        for credential in self.credentials:
            try:
                result = credential.close()
                if hasattr(result, "__await__"):
                    await result
            except Exception as exc:
                logger.debug("closing a credential failed: %s", exc)


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
    """Create clients and the adapter; registry and blueprints default to FLOWCRAFT_WORKFLOWS.

    The workflows module may also expose ``dependencies``, ``middleware``, ``event_bus`` and ``evaluator``;
    they fill the runtime options that the caller did not set.
    """
    options = runtime_options or RuntimeOptions()
    if registry is None or blueprints is None:
        workflows = load_workflow_module(settings.workflows_module)
        registry, blueprints = workflows.registry, workflows.blueprints
        options.dependencies = options.dependencies or workflows.dependencies
        options.middleware = options.middleware or workflows.middleware
        options.event_bus = options.event_bus if options.event_bus is not None else workflows.event_bus
        options.evaluator = options.evaluator if options.evaluator is not None else workflows.evaluator
    options.registry = registry
    options.blueprints = blueprints
    configure_telemetry(settings)
    clients = build_clients(settings)
    queue_client, poison, cosmos, redis = (clients.queue_client, clients.poison_queue_client,
                                           clients.cosmos_client, clients.redis)
    logger.info("connections: queues %s, Cosmos DB %s, Redis %s", clients.auth["queues"], clients.auth["cosmos"],
                clients.auth["redis"])
    adapter = AzureQueueAdapter(
        queue_client=queue_client, cosmos_client=cosmos, coordination_store=RedisCoordinationStore(redis),
        cosmos_database_name=settings.cosmos_database, context_container_name=settings.cosmos_context_container,
        status_container_name=settings.cosmos_status_container, runtime_options=options,
        worker_options=WorkerOptions(concurrency=settings.worker_concurrency,
                                     visibility_timeout=settings.visibility_timeout,
                                     eager_dispatch=settings.worker_eager_dispatch,
                                     heartbeat_seconds=min(30.0, settings.stalled_threshold_seconds / 3)),
        poison_queue_client=poison,
    )
    reconciler = create_azure_reconciler(adapter=adapter,
                                         stalled_threshold_seconds=settings.stalled_threshold_seconds)
    services = AzureServices(settings, queue_client, poison, cosmos, redis, adapter, reconciler,
                             clients.credentials)
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
