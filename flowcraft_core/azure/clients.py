"""Factories for the async Azure/Redis clients, so every caller configures them the same way.

All clients here are asyncio clients: create them inside the event loop that uses them and close
them there (``async with`` or ``await client.close()``); they are bound to that loop.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos import PartitionKey
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient
from redis.asyncio import Redis

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "PARTITION_KEY_PATH",
    "cosmos_transport",
    "ensure_cosmos_containers",
    "ensure_queue",
    "http_env_settings",
    "make_cosmos_client",
    "make_cosmos_client_with_identity",
    "make_queue_client",
    "make_queue_client_with_identity",
    "make_redis",
    "make_redis_with_identity",
]

# Every container is partitioned by run: all of a run's documents share one logical partition, so
# point reads and queries stay single-partition (cheap) and per-run writes never fan out.
PARTITION_KEY_PATH = "/runId"


def _environment_configures_http() -> bool:
    """True when aiohttp's trust_env would find something: a proxy variable or a netrc file."""
    if urllib.request.getproxies():
        return True
    netrc = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    return os.path.exists(netrc)


def http_env_settings() -> dict[str, Any]:
    """Transport keyword arguments for the Azure SDK clients: ``use_env_settings=False`` when nothing uses it.

    With the SDK's default (environment settings on), aiohttp looks up the netrc file and the proxy
    variables on every request, each in a thread-pool call: two thread hand-offs per request, a sizeable
    share of the worker's CPU at several requests per node. When the environment sets no proxy and has no
    netrc file, those lookups can only come back empty, so they are switched off; otherwise the SDK's
    default stays, and proxies and netrc work as before.
    """
    return {} if _environment_configures_http() else {"use_env_settings": False}


def cosmos_transport() -> dict[str, Any]:
    """``transport=`` for a Cosmos client with http_env_settings (the Cosmos client does not pass them on)."""
    settings = http_env_settings()
    return {"transport": AioHttpTransport(**settings)} if settings else {}


def make_queue_client(connection_string: str, queue_name: str) -> QueueClient:
    """A queue client that speaks the Functions host's default message encoding (base64 text).

    Without these policies the SDK sends raw text, which a queue-triggered function (default
    ``messageEncoding: base64``) fails to decode and eventually moves to ``<queue>-poison``.
    """
    return QueueClient.from_connection_string(
        connection_string,
        queue_name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
        **http_env_settings(),
    )


def make_cosmos_client(connection_string: str, *, verify_tls: bool = True) -> CosmosClient:
    """A Cosmos client from ``AccountEndpoint=...;AccountKey=...;``.

    ``verify_tls=False`` exists only for the local stand-in, whose certificate is self-signed; the
    project setting (``COSMOS_DB_VERIFY_TLS``) defaults to verifying.
    """
    if verify_tls:
        return CosmosClient.from_connection_string(connection_string, **cosmos_transport())
    return CosmosClient.from_connection_string(connection_string, connection_verify=False, **cosmos_transport())


def make_queue_client_with_identity(queue_service_url: str, queue_name: str, credential: AsyncTokenCredential,
                                    **kwargs: Any) -> QueueClient:
    """A queue client authenticated with Microsoft Entra ID (role Storage Queue Data Contributor).

    No message policies: like ``services.plain_queue_client``, the adapter encodes base64 itself.
    """
    return QueueClient(queue_service_url, queue_name, credential=credential, **{**http_env_settings(), **kwargs})


def make_cosmos_client_with_identity(endpoint: str, credential: AsyncTokenCredential, *,
                                     verify_tls: bool = True) -> CosmosClient:
    """A Cosmos client authenticated with Microsoft Entra ID (Cosmos DB data-plane RBAC), no account key."""
    if verify_tls:
        return CosmosClient(endpoint, credential=credential, **cosmos_transport())
    return CosmosClient(endpoint, credential=credential, connection_verify=False, **cosmos_transport())


def make_redis_with_identity(host: str, port: int, credential: TokenCredential, *, ssl: bool = True,
                             scope: str = "https://redis.azure.com/.default") -> Redis:
    """A Redis client using Microsoft Entra authentication through redis-entraid.

    redis-entraid is Redis' own package for this: its streaming credential provider renews the token before
    it expires and re-authenticates open connections, which a plain ``credential_provider`` would not. Its
    token manager calls ``credential.get_token`` synchronously (hence a synchronous azure-identity
    credential): the event loop waits for that request, about once an hour. The user name is the token's
    ``oid``, which is what Azure Cache for Redis expects for an Entra ID user.
    """
    from redis.auth.token_manager import RetryPolicy, TokenManagerConfig
    from redis_entraid.cred_provider import (
        DEFAULT_DELAY_IN_MS,
        DEFAULT_EXPIRATION_REFRESH_RATIO,
        DEFAULT_LOWER_REFRESH_BOUND_MILLIS,
        DEFAULT_MAX_ATTEMPTS,
        DEFAULT_TOKEN_REQUEST_EXECUTION_TIMEOUT_IN_MS,
        EntraIdCredentialsProvider,
    )
    from redis_entraid.identity_provider import DefaultAzureCredentialProvider

    # DefaultAzureCredentialProvider only calls get_token(), so it takes any azure-identity credential
    # (ManagedIdentityCredential for a pinned user-assigned identity included).
    identity = DefaultAzureCredentialProvider(credential, (scope,))
    config = TokenManagerConfig(DEFAULT_EXPIRATION_REFRESH_RATIO, DEFAULT_LOWER_REFRESH_BOUND_MILLIS,
                                DEFAULT_TOKEN_REQUEST_EXECUTION_TIMEOUT_IN_MS,
                                RetryPolicy(DEFAULT_MAX_ATTEMPTS, DEFAULT_DELAY_IN_MS))
    provider = EntraIdCredentialsProvider(identity, config)
    return Redis(host=host, port=port, ssl=ssl, credential_provider=provider, decode_responses=True,
                 health_check_interval=30)


def make_redis(url: str) -> Redis:
    """A Redis client from ``redis://`` or ``rediss://`` (TLS, as Azure Cache for Redis requires).

    ``decode_responses=True`` so callers get ``str`` back. The health check re-validates idle
    connections: Azure Cache for Redis closes connections idle for 10 minutes, and without it the
    first command after a quiet period fails with a connection error.
    """
    # from_url is untyped in redis-py; the annotation restores the type for callers.
    client: Redis = Redis.from_url(url, decode_responses=True, health_check_interval=30)
    return client


async def ensure_cosmos_containers(
    client: CosmosClient, database: str, containers: list[str]
) -> dict[str, ContainerProxy]:
    """Create ``database`` and each container (partition key ``/runId``) unless they exist.

    Returns the container proxies by name. Meant for start-up and tests; in Azure the resources are
    normally provisioned by infrastructure code, and these calls are then cheap no-ops.
    """
    db = await client.create_database_if_not_exists(id=database)
    proxies: dict[str, ContainerProxy] = {}
    for name in containers:
        proxies[name] = await db.create_container_if_not_exists(
            id=name, partition_key=PartitionKey(path=PARTITION_KEY_PATH)
        )
    return proxies


async def ensure_queue(queue_client: QueueClient) -> None:
    """Create the queue unless it exists (concurrent creators race harmlessly)."""
    with contextlib.suppress(ResourceExistsError):
        await queue_client.create_queue()
