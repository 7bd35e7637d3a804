"""OpenTelemetry export to Application Insights (azure-monitor-opentelemetry), only when it is configured."""

from __future__ import annotations

import logging
import threading

from ..settings import Settings

logger = logging.getLogger("flowcraft.telemetry")
_lock = threading.Lock()
_configured = False


def configure_telemetry(settings: Settings) -> bool:
    """Configure the Azure Monitor distro once per process if APPLICATIONINSIGHTS_CONNECTION_STRING is set.

    Returns whether export is on. Without the setting nothing is installed: the OpenTelemetry API stays a
    no-op (trace context still flows through job messages). Logs are collected from the ``flowcraft``
    loggers only, so the SDKs' own DEBUG logging never reaches Application Insights.
    """
    global _configured
    connection_string = settings.appinsights_connection_string.get_secret_value()
    if not connection_string:
        return False
    with _lock:
        if not _configured:
            from azure.monitor.opentelemetry import configure_azure_monitor

            configure_azure_monitor(connection_string=connection_string, logger_name="flowcraft")
            _configured = True
            logger.info("OpenTelemetry export to Application Insights is on")
    return True
