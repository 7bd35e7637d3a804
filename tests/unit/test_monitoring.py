"""Azure Monitor export is configured only when APPLICATIONINSIGHTS_CONNECTION_STRING is set, and only once."""

from __future__ import annotations

from typing import Any

import azure.monitor.opentelemetry
import pytest

from flowcraft_core.azure import monitoring
from flowcraft_core.settings import Settings


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(azure.monitor.opentelemetry, "configure_azure_monitor", lambda **kw: seen.append(kw))
    monkeypatch.setattr(monitoring, "_configured", False)
    return seen


def test_nothing_is_configured_without_the_setting(calls: list[dict[str, Any]]) -> None:
    assert monitoring.configure_telemetry(Settings.from_env({})) is False
    assert calls == []


def test_the_distro_is_configured_once_for_the_flowcraft_loggers(calls: list[dict[str, Any]]) -> None:
    connection = "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=https://x.invalid/"
    settings = Settings.from_env({"APPLICATIONINSIGHTS_CONNECTION_STRING": connection})
    assert monitoring.configure_telemetry(settings) is True
    assert monitoring.configure_telemetry(settings) is True
    assert calls == [{"connection_string": connection, "logger_name": "flowcraft"}]
