"""The Azure SDK clients skip aiohttp's per-request environment lookups only when nothing could be found."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowcraft_core.azure.clients import http_env_settings, make_cosmos_client, make_queue_client

STORAGE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
           "QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;")
COSMOS = "AccountEndpoint=https://127.0.0.1:1/;AccountKey=a2V5;"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))


def env_settings_of_clients() -> tuple[bool, bool]:
    async def build() -> tuple[bool, bool]:
        queue = make_queue_client(STORAGE, "q")
        cosmos = make_cosmos_client(COSMOS, verify_tls=False)
        try:
            return (queue._client._client._pipeline._transport._use_env_settings,
                    cosmos.client_connection.pipeline_client._pipeline._transport._use_env_settings)
        finally:
            await queue.close()
            await cosmos.close()
    return asyncio.run(build())


@pytest.mark.usefixtures("plain_environment")
def test_without_proxy_or_netrc_the_lookups_are_off() -> None:
    assert http_env_settings() == {"use_env_settings": False}
    assert env_settings_of_clients() == (False, False)


@pytest.mark.usefixtures("plain_environment")
def test_a_proxy_variable_keeps_the_sdk_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert http_env_settings() == {}
    assert env_settings_of_clients() == (True, True)


@pytest.mark.usefixtures("plain_environment")
def test_a_netrc_file_keeps_the_sdk_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.invalid login u password p\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert http_env_settings() == {}
