"""The distributed-run harness of the integration tests (the ``distributed`` fixture hands one out).

``Distributed.build`` creates the production wiring (``build_services(Settings)``) on one test's queue,
Cosmos database and Redis, starts the adapter's polling worker, and ``close`` stops and closes them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helpers import AzureTestEnv

from flowcraft_core.azure.adapter import RuntimeOptions
from flowcraft_core.azure.services import AzureServices, build_services
from flowcraft_core.engine import EngineOptions
from flowcraft_core.events import CollectingEventBus
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.settings import Settings

# Tests poll an often-empty queue: keep the worker's back-off short so a hop never waits long.
TEST_MAX_POLL_INTERVAL = 0.2


def blueprint(data: Mapping[str, Any]) -> WorkflowBlueprint:
    """A blueprint from its wire form."""
    return WorkflowBlueprint.model_validate(dict(data))


class Distributed:
    """Builds services (adapter + reconciler) for one test; every one built is closed at teardown."""

    def __init__(self, env: AzureTestEnv) -> None:
        self.env = env
        self.built: list[AzureServices] = []

    def settings(self, **extra: str) -> Settings:
        """Settings for this test's resources (plus overrides by environment name)."""
        values = self.env.settings(COSMOS_DB_DATABASE=self.env.cosmos_database, FLOWCRAFT_CREATE_RESOURCES="true",
                                   **extra)
        return Settings.from_env(values)

    async def build(self, registry: Mapping[str, Any], blueprints: Mapping[str, WorkflowBlueprint], *,
                    start: bool = True, event_bus: Any = None, engine: EngineOptions | None = None,
                    env: Mapping[str, str] | None = None, **extra: str) -> AzureServices:
        """Build the services (settings overridden by env and extra); start the worker unless start=False."""
        options = RuntimeOptions(event_bus=event_bus if event_bus is not None else CollectingEventBus(),
                                 engine=engine)
        services = await build_services(self.settings(**{**(env or {}), **extra}), registry=registry,
                                        blueprints=blueprints, runtime_options=options)
        services.adapter.worker_options.max_poll_interval = TEST_MAX_POLL_INTERVAL
        self.built.append(services)
        if start:
            await services.adapter.start()
        return services

    async def close(self) -> None:
        """Stop every worker and close every client."""
        for services in reversed(self.built):
            try:
                await services.adapter.stop(timeout=5)
            finally:
                await services.close()
        self.built.clear()
