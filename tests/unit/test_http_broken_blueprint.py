"""A blueprint with lint errors is refused when the app starts: its runs answer 400, health lists it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import AzureTestEnv, bp

from flowcraft_core.azure.services import AzureServices, build_services
from flowcraft_core.http_api import ApiRequest, handle
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.settings import Settings

pytestmark = pytest.mark.emulators

BROKEN = WorkflowBlueprint.model_validate(
    bp([{"id": "a", "uses": "echo"}, {"id": "a", "uses": "echo"}], [("a", "ghost")], bp_id="broken"))
GOOD = WorkflowBlueprint.model_validate(bp([{"id": "a", "uses": "echo"}], bp_id="good"))


async def _echo(ctx: Any) -> Any:
    return {"output": ctx.input}


class Services:
    def __init__(self, services: AzureServices) -> None:
        self._services = services
        self.settings = services.settings

    async def services(self) -> AzureServices:
        return self._services


@pytest.fixture
async def api(azure_env: AzureTestEnv, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Services]:
    settings = Settings.from_env(azure_env.settings(COSMOS_DB_DATABASE=azure_env.cosmos_database))
    with caplog.at_level(logging.ERROR, logger="flowcraft.engine"):
        services = await build_services(settings, registry={"echo": _echo},
                                        blueprints={"broken": BROKEN, "good": GOOD}, create_resources=True)
    try:
        yield Services(services)
    finally:
        await services.close()


def post_run(blueprint_id: str) -> ApiRequest:
    return ApiRequest.build("POST", "http://localhost:7071/api/runs", headers={"Content-Type": "application/json"},
                            body=f'{{"blueprintId": "{blueprint_id}"}}'.encode())


async def test_broken_blueprint_is_refused_at_start_up(api: Services, caplog: pytest.LogCaptureFixture) -> None:
    refusals = [r.getMessage() for r in caplog.get_records("setup") if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].startswith("blueprint broken refused, 2 problem(s)")

    status, body = await handle("startRun", post_run("broken"), api)
    assert status == 400 and body["error"] == "invalid_blueprint", body
    assert body["problems"] == [
        "nodes[1].id: duplicate node id 'a' (first defined at nodes[0])",
        "edges[0].target: edge 'a' -> 'ghost': target 'ghost' is not a node"]
    status, body = await handle("startRun", post_run("good"), api)
    assert status == 202, body

    status, body = await handle("health", ApiRequest.build("GET", "http://localhost:7071/api/health"), api)
    assert status == 200 and body["status"] == "healthy", body
    assert list(body["brokenBlueprints"]) == ["broken"] and len(body["brokenBlueprints"]["broken"]) == 2
