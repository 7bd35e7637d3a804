"""Identity-based connections: which credential each store gets, and that building them needs no network."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from azure.identity import DefaultAzureCredential as SyncDefaultAzureCredential
from azure.identity import ManagedIdentityCredential as SyncManagedIdentityCredential
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
from redis.asyncio.connection import SSLConnection
from redis_entraid.cred_provider import EntraIdCredentialsProvider

from flowcraft_core.azure.identity import (
    IdentityChoice,
    cosmos_identity,
    make_async_credential,
    queue_service_url,
    redis_identity,
    storage_identity,
)
from flowcraft_core.azure.services import build_services
from flowcraft_core.errors import FlowcraftError
from flowcraft_core.settings import Settings

IDENTITY_ONLY = {
    "AzureWebJobsStorage__accountName": "flowcraftsa",
    "COSMOS_DB_ENDPOINT": "https://flowcraft-cosmos.documents.azure.com:443/",
    "REDIS_HOST": "flowcraft-redis.redis.cache.windows.net",
}
KEYS = {
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=flowcraftsa;AccountKey=a2V5;"
                           "EndpointSuffix=core.windows.net",
    "COSMOS_DB_CONNECTION_STRING": "AccountEndpoint=https://flowcraft-cosmos.documents.azure.com:443/;AccountKey=a2V5;",
    "REDIS_URL": "rediss://:secret@flowcraft-redis.redis.cache.windows.net:6380/0",
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any connection or name lookup fails the test (and is recorded)."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"network used while building clients: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == []


def test_each_store_follows_the_functions_credential_convention() -> None:
    settings = Settings.from_env({**IDENTITY_ONLY, "AzureWebJobsStorage__credential": "managedidentity",
                                  "AzureWebJobsStorage__clientId": "uami-1", "REDIS__clientId": "uami-2"})
    assert storage_identity(settings) == IdentityChoice("managedidentity", "uami-1")
    # Cosmos DB names no identity of its own: the storage connection's user-assigned identity is used.
    assert cosmos_identity(settings) == IdentityChoice("managedidentity", "uami-1")
    assert redis_identity(settings) == IdentityChoice("managedidentity", "uami-2")
    assert storage_identity(Settings.from_env(IDENTITY_ONLY)) == IdentityChoice("", "")


def test_a_misspelt_credential_kind_is_an_error() -> None:
    with pytest.raises(FlowcraftError, match="managedidentity"):
        storage_identity(Settings.from_env({**IDENTITY_ONLY, "AzureWebJobsStorage__credential": "managedidentiy"}))


async def test_credential_kind_chooses_the_azure_identity_class() -> None:
    default = make_async_credential(IdentityChoice("", "uami-1"))
    pinned = make_async_credential(IdentityChoice("ManagedIdentity", "uami-1"))
    try:
        assert isinstance(default, DefaultAzureCredential)
        assert isinstance(pinned, ManagedIdentityCredential)
    finally:
        await default.close()
        await pinned.close()


def test_queue_endpoint_from_account_name_or_service_uri() -> None:
    assert queue_service_url(Settings.from_env(IDENTITY_ONLY)) == "https://flowcraftsa.queue.core.windows.net"
    uri = Settings.from_env({"AzureWebJobsStorage__queueServiceUri": "https://127.0.0.1:10001/devstoreaccount1/",
                             "AzureWebJobsStorage__accountName": "ignored"})
    assert queue_service_url(uri) == "https://127.0.0.1:10001/devstoreaccount1"
    with pytest.raises(FlowcraftError, match="AzureWebJobsStorage__accountName"):
        queue_service_url(Settings.from_env({}))


async def test_identity_settings_alone_build_every_client_with_a_credential(no_network: list[Any]) -> None:
    services = await build_services(Settings.from_env(IDENTITY_ONLY))
    try:
        for queue in (services.queue_client, services.poison_queue_client):
            assert isinstance(queue.credential, DefaultAzureCredential)
            assert queue.url.startswith("https://flowcraftsa.queue.core.windows.net/")
        assert services.queue_client.queue_name == "flowcraft-jobs"
        assert services.poison_queue_client.queue_name == "flowcraft-jobs-poison"
        connection = services.cosmos_client.client_connection
        assert connection.master_key is None
        assert connection.aad_credentials is services.queue_client.credential  # one token cache
        assert connection.url_connection == IDENTITY_ONLY["COSMOS_DB_ENDPOINT"]
        redis_kwargs = services.redis.connection_pool.connection_kwargs
        assert isinstance(redis_kwargs["credential_provider"], EntraIdCredentialsProvider)
        assert redis_kwargs.get("password") is None
        assert redis_kwargs["host"] == IDENTITY_ONLY["REDIS_HOST"] and redis_kwargs["port"] == 6380
        assert services.redis.connection_pool.connection_class is SSLConnection
        kinds = {type(c) for c in services.credentials}
        assert kinds == {DefaultAzureCredential, SyncDefaultAzureCredential}
    finally:
        # Closing a never-opened client makes no connection either.
        await services.close()


async def test_a_user_assigned_identity_pins_managed_identity_credential(no_network: list[Any]) -> None:
    env = {**IDENTITY_ONLY, "AzureWebJobsStorage__credential": "managedidentity",
           "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001", "REDIS_PORT": "10000"}
    services = await build_services(Settings.from_env(env))
    try:
        assert isinstance(services.queue_client.credential, ManagedIdentityCredential)
        assert services.cosmos_client.client_connection.aad_credentials is services.queue_client.credential
        assert any(isinstance(c, SyncManagedIdentityCredential) for c in services.credentials)
        assert services.redis.connection_pool.connection_kwargs["port"] == 10000
    finally:
        await services.close()


async def test_connection_strings_remain_the_fallback(no_network: list[Any]) -> None:
    services = await build_services(Settings.from_env(KEYS))
    try:
        assert services.credentials == []
        assert services.cosmos_client.client_connection.aad_credentials is None
        assert services.cosmos_client.client_connection.master_key == "a2V5"
        assert services.redis.connection_pool.connection_kwargs["password"] == "secret"
        assert "credential_provider" not in services.redis.connection_pool.connection_kwargs or \
            services.redis.connection_pool.connection_kwargs["credential_provider"] is None
    finally:
        await services.close()


async def test_missing_settings_name_both_ways_to_connect() -> None:
    with pytest.raises(FlowcraftError) as caught:
        await build_services(Settings.from_env({"COSMOS_DB_ENDPOINT": "https://c.documents.azure.com:443/"}))
    message = str(caught.value)
    assert "AzureWebJobsStorage (or AzureWebJobsStorage__accountName)" in message
    assert "REDIS_URL (or REDIS_HOST)" in message and "COSMOS_DB" not in message


async def test_the_workflows_module_may_hand_over_dependencies_middleware_event_bus_and_evaluator(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, no_network: list[Any]) -> None:
    (tmp_path / "my_workflows.py").write_text(
        "from flowcraft_core import Middleware\n"
        "from flowcraft_core.events import CollectingEventBus\n"
        "from flowcraft_core.expressions import SafeEvaluator\n"
        "registry = {}\n"
        "blueprints = {}\n"
        "dependencies = {'db': 'the-db'}\n"
        "class Audit(Middleware):\n"
        "    pass\n"
        "middleware = [Audit()]\n"
        "event_bus = CollectingEventBus()\n"
        "evaluator = SafeEvaluator()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    services = await build_services(Settings.from_env({**IDENTITY_ONLY, "FLOWCRAFT_WORKFLOWS": "my_workflows"}))
    try:
        import my_workflows  # type: ignore[import-not-found]

        engine = services.adapter.engine
        assert engine.dependencies["db"] == "the-db"
        assert engine.middleware == my_workflows.middleware
        assert engine.events is my_workflows.event_bus
        assert engine.evaluator is my_workflows.evaluator
    finally:
        await services.close()


def test_a_workflows_module_with_a_bad_part_is_a_clear_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowcraft_core.settings import load_workflow_module

    (tmp_path / "bad_workflows.py").write_text("registry = {}\nblueprints = {}\nmiddleware = 'not a list'\n",
                                               encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FlowcraftError, match="`middleware` must be a list"):
        load_workflow_module("bad_workflows")
