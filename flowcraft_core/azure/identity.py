"""Which identity each store connects with: a key (connection string) or Microsoft Entra ID (azure-identity).

The Functions convention for identity-based connections is followed for every store: ``<prefix>__credential``
= ``managedidentity`` picks ``ManagedIdentityCredential`` and ``<prefix>__clientId`` a user-assigned identity;
without them ``DefaultAzureCredential`` runs its chain (environment, workload identity, managed identity, then
the developer's Azure CLI or azd login), so the same settings work on Azure and on a laptop. The prefixes are
``AzureWebJobsStorage`` (queues), ``COSMOS_DB`` and ``REDIS``; Cosmos DB and Redis fall back to the storage
connection's choice, so a user-assigned identity is named once. Credentials are lazy: building one makes no
network call; the first token request does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import FlowcraftError
from ..settings import Settings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "COSMOS_SCOPE",
    "REDIS_SCOPE",
    "STORAGE_SCOPE",
    "IdentityChoice",
    "cosmos_identity",
    "make_async_credential",
    "make_sync_credential",
    "queue_service_url",
    "redis_identity",
    "storage_identity",
]

STORAGE_SCOPE = "https://storage.azure.com/.default"
COSMOS_SCOPE = "https://cosmos.azure.com/.default"
# Azure Cache for Redis (and Azure Managed Redis) accept Entra tokens for this audience.
REDIS_SCOPE = "https://redis.azure.com/.default"

MANAGED_IDENTITY = "managedidentity"


@dataclass(frozen=True)
class IdentityChoice:
    """One connection's identity: ``managedidentity`` or the default chain, and a user-assigned client id."""

    credential: str = ""
    client_id: str = ""

    @property
    def managed_identity_only(self) -> bool:
        """True for ``__credential = managedidentity`` (no developer-login fallback)."""
        return self.credential.strip().lower() == MANAGED_IDENTITY

    def describe(self) -> str:
        """For logs: which credential, and which user-assigned identity (client ids are not secrets)."""
        kind = "ManagedIdentityCredential" if self.managed_identity_only else "DefaultAzureCredential"
        return f"{kind}{f' (client id {self.client_id})' if self.client_id else ''}"


def _choice(settings: Settings, credential: str, client_id: str) -> IdentityChoice:
    choice = IdentityChoice(credential or settings.storage_credential, client_id or settings.storage_client_id)
    if choice.credential and not choice.managed_identity_only:
        raise FlowcraftError(f"unknown identity credential {choice.credential!r}: the only value is "
                             f"{MANAGED_IDENTITY!r} (leave it unset for DefaultAzureCredential)")
    return choice


def storage_identity(settings: Settings) -> IdentityChoice:
    """AzureWebJobsStorage__credential / __clientId."""
    return _choice(settings, settings.storage_credential, settings.storage_client_id)


def cosmos_identity(settings: Settings) -> IdentityChoice:
    """COSMOS_DB__credential / __clientId, else the storage connection's."""
    return _choice(settings, settings.cosmos_credential, settings.cosmos_client_id)


def redis_identity(settings: Settings) -> IdentityChoice:
    """REDIS__credential / __clientId, else the storage connection's."""
    return _choice(settings, settings.redis_credential, settings.redis_client_id)


def queue_service_url(settings: Settings) -> str:
    """The queue endpoint of an identity-based connection (``__queueServiceUri`` wins over ``__accountName``)."""
    if settings.storage_queue_service_uri:
        return settings.storage_queue_service_uri.rstrip("/")
    if settings.storage_account_name:
        return f"https://{settings.storage_account_name}.queue.core.windows.net"
    raise FlowcraftError("missing setting(s): AzureWebJobsStorage, or AzureWebJobsStorage__accountName / "
                         "AzureWebJobsStorage__queueServiceUri for an identity-based connection")


def make_async_credential(choice: IdentityChoice) -> AsyncTokenCredential:
    """An asyncio credential (for the Storage and Cosmos DB asyncio clients); no network until a token is due."""
    from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential

    if choice.managed_identity_only:
        return ManagedIdentityCredential(client_id=choice.client_id or None)
    return DefaultAzureCredential(managed_identity_client_id=choice.client_id or None)


def make_sync_credential(choice: IdentityChoice) -> TokenCredential:
    """A synchronous credential: redis-entraid's token manager calls ``get_token`` synchronously."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if choice.managed_identity_only:
        return ManagedIdentityCredential(client_id=choice.client_id or None)
    return DefaultAzureCredential(managed_identity_client_id=choice.client_id or None)
