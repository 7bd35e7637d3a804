"""The HTTP core (flowcraft_core.http_api): validation and error codes, then the routes on the emulators.

Validation happens before the Azure services are touched, so the first half runs with a context whose
services() fails the test if called. The second half uses real clients on the emulators: nothing is
faked where state matters. Jobs are executed by draining the test's queue through the adapter, as the
queue function would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from helpers import AzureTestEnv
from redis.exceptions import ConnectionError as RedisConnectionError

import workflows
from flowcraft_core import http_api
from flowcraft_core.azure.services import AzureServices, build_services
from flowcraft_core.errors import BlueprintError, FlowcraftError, RunStateError, UnknownRunError
from flowcraft_core.http_api import ApiRequest, handle, render
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.settings import Settings

BASE = "http://localhost:7071/api"


class NoServices:
    """An ApiContext for requests that must be rejected before any store is touched."""

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(**settings)

    async def services(self) -> AzureServices:
        raise AssertionError("validation should have answered before the services were needed")


class RealServices:
    """An ApiContext over services built on the emulators."""

    def __init__(self, services: AzureServices) -> None:
        self._services = services
        self.settings = services.settings

    async def services(self) -> AzureServices:
        return self._services


def req(method: str, route: str, body: Any = None, *, raw: bytes | None = None, content_type: str | None =
        "application/json", params: dict[str, str] | None = None, **route_params: str) -> ApiRequest:
    """A request as the Functions host would hand it over (route values already decoded)."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    headers = {"Content-Type": content_type} if content_type else {}
    path = route.format(**route_params)
    return ApiRequest.build(method, f"{BASE}/{path}", headers=headers, params=params, route_params=route_params,
                            body=data)


# ------------------------------------------------------------------------------- validation, no services
@pytest.mark.parametrize(("raw", "content_type", "status", "code"), [
    (b"{not json", "application/json", 400, "invalid_json"),
    (b'{"blueprintId": NaN}', "application/json", 400, "invalid_json"),
    (b"\xff\xfe{}", "application/json", 400, "invalid_json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "invalid_json"),
    (b'["400"]', "application/json", 400, "invalid_request"),
    (b'"400"', "application/json", 400, "invalid_request"),
    (b"{}", "application/json", 400, "invalid_request"),
    (b'{"blueprintId": ""}', "application/json", 400, "invalid_request"),
    (b'{"blueprintId": 400}', "application/json", 400, "invalid_request"),
    (b'{"blueprintId": "400", "context": []}', "application/json", 400, "invalid_request"),
    (b'{"blueprintId": "400", "runid": "x"}', "application/json", 400, "invalid_request"),
    (b'{"blueprintId": "400", "runId": "a/b"}', "application/json", 400, "invalid_request"),
    (b'{"blueprintId": "400", "runId": "' + b"x" * 129 + b'"}', "application/json", 400, "invalid_request"),
    (b"", "application/json", 400, "missing_body"),
    (b"   ", None, 400, "missing_body"),
    (b'{"blueprintId": "400"}', "text/plain", 415, "unsupported_media_type"),
    (b'{"blueprintId": "400"}', "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
    (b"blueprintId=400", None, 400, "invalid_json"),
])
async def test_start_run_rejects_bad_bodies(raw: bytes, content_type: str | None, status: int, code: str) -> None:
    result = await handle("startRun", req("POST", "runs", raw=raw, content_type=content_type), NoServices())
    assert result[0] == status, result
    assert result[1]["error"] == code
    assert isinstance(result[1]["detail"], str) and result[1]["detail"]


async def test_every_problem_of_a_body_is_reported_at_once() -> None:
    status, body = await handle("startRun", req("POST", "runs", {"context": 1, "extra": True, "runId": "#"}),
                                NoServices())
    assert status == 400
    for where in ("blueprintId", "context", "extra: unknown field", "runId"):
        assert where in body["detail"]


async def test_body_over_the_limit_is_413_before_parsing() -> None:
    big = {"blueprintId": "400", "context": {"x": "y" * 5000}}
    small = NoServices(FLOWCRAFT_MAX_REQUEST_BYTES=4096)
    status, body = await handle("startRun", req("POST", "runs", big), small)
    assert status == 413 and body["error"] == "payload_too_large" and "4096" in body["detail"]
    status, _ = await handle("startRun", req("POST", "runs", raw=b"x" * 5000), small)
    assert status == 413


@pytest.mark.parametrize("run_id", ["a/b", "a\\b", "a?b", "a#b", "", "-leading-dash", "x" * 129, "spa ce"])
@pytest.mark.parametrize(("operation", "method", "route", "body"), [
    ("getRun", "GET", "runs/{runId}", None),
    ("cancelRun", "POST", "runs/{runId}/cancel", None),
    ("resumeRun", "POST", "runs/{runId}/resume", {"action": "approve"}),
    ("callWebhook", "POST", "webhooks/{runId}/{nodeId}", {}),
])
async def test_bad_run_ids_in_the_route_are_400(run_id: str, operation: str, method: str, route: str,
                                                body: Any) -> None:
    request = ApiRequest.build(method, f"{BASE}/x", headers={"content-type": "application/json"},
                               route_params={"runId": run_id, "nodeId": "n"},
                               body=json.dumps(body).encode() if body is not None else b"")
    status, answer = await handle(operation, request, NoServices())
    assert status == 400 and answer["error"] == "invalid_run_id", answer


@pytest.mark.parametrize(("body", "code"), [
    (None, "missing_body"),
    ({}, "invalid_request"),
    ({"action": ""}, "invalid_request"),
    ({"action": "approve", "nodeID": "x"}, "invalid_request"),
    ({"action": "x" * 257}, "invalid_request"),
])
async def test_resume_validation(body: Any, code: str) -> None:
    status, answer = await handle("resumeRun", req("POST", "runs/{runId}/resume", body, runId="r1"), NoServices())
    assert status == 400 and answer["error"] == code


async def test_cancel_and_webhook_bodies_are_validated_when_present() -> None:
    status, answer = await handle("cancelRun", req("POST", "runs/{runId}/cancel", {"why": "x"}, runId="r1"),
                                  NoServices())
    assert status == 400 and "why: unknown field" in answer["detail"]
    status, answer = await handle("callWebhook", req("POST", "webhooks/{runId}/{nodeId}", raw=b"{",
                                                     runId="r1", nodeId="n"), NoServices())
    assert status == 400 and answer["error"] == "invalid_json"
    status, answer = await handle("callWebhook", req("POST", "webhooks/{runId}/{nodeId}", {}, runId="r1",
                                                     nodeId="x" * 300), NoServices())
    assert status == 400 and answer["error"] == "invalid_node_id"


@pytest.mark.parametrize(("exc", "status", "code"), [
    (UnknownRunError("run 'x' does not exist"), 404, "run_not_found"),
    (RunStateError("run 'x' already ended"), 409, "run_state_conflict"),
    (BlueprintError("broken", ["nodes[0]: bad"]), 422, "invalid_blueprint"),
    (ServiceRequestError("connection refused"), 503, "service_unavailable"),
    (RedisConnectionError("redis down"), 503, "service_unavailable"),
    (HttpResponseError(message="throttled", response=None), 500, "internal_error"),
    (FlowcraftError("missing setting(s): REDIS_URL"), 503, "not_configured"),
    (RuntimeError("bug"), 500, "internal_error"),
])
def test_exceptions_map_to_status_codes(exc: Exception, status: int, code: str) -> None:
    got_status, body = http_api.error_result(exc, "test")
    assert (got_status, body["error"]) == (status, code)
    if status == 500:
        assert "bug" not in body["detail"] and "incident" in body["detail"]


def test_throttling_that_outlived_retries_is_503() -> None:
    exc = HttpResponseError(message="Request rate is large")
    exc.status_code = 429
    assert http_api.error_result(exc)[0] == 503


async def test_a_services_failure_is_503_not_500() -> None:
    class Broken(NoServices):
        async def services(self) -> AzureServices:
            raise FlowcraftError("missing setting(s): COSMOS_DB_CONNECTION_STRING")

    status, body = await handle("getRun", req("GET", "runs/{runId}", runId="r1"), Broken())
    assert status == 503 and "COSMOS_DB_CONNECTION_STRING" in body["detail"]
    status, body = await handle("health", req("GET", "health"), Broken())
    assert status == 503 and body["status"] == "unhealthy" and not body["checks"]["configuration"]["ok"]


def test_presentation_helpers() -> None:
    assert http_api.iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert http_api.iso_utc(1714564800.1234) == "2024-05-01T12:00:00.123Z"
    assert http_api.iso_utc(None) is None
    view = http_api.run_view({"id": "r", "runId": "r", "blueprintId": "b", "status": "awaiting",
                              "createdAt": 1.0, "lastUpdated": 2.5, "awaiting": ["w"], "_etag": "x",
                              "_rid": "y", "internal": 1})
    assert view == {"runId": "r", "blueprintId": "b", "status": "awaiting", "createdAt": "1970-01-01T00:00:01.000Z",
                    "lastUpdated": "1970-01-01T00:00:02.500Z", "awaiting": ["w"]}
    running = http_api.run_view({"runId": "r", "status": "running", "awaiting": []})
    assert "awaiting" not in running and "result" not in running
    request = ApiRequest.build("POST", "https://app.azurewebsites.net/api/runs/r1/resume?code=k")
    assert http_api.api_base_url(request, "runs/{runId}/resume") == "https://app.azurewebsites.net/api"
    assert http_api.status_url("https://h/api", "a:b") == "https://h/api/runs/a%3Ab"
    status, raw, headers = render((202, {"runId": "r", "statusUrl": "https://h/api/runs/r"}))
    assert status == 202 and json.loads(raw) == {"runId": "r", "statusUrl": "https://h/api/runs/r"}
    assert headers["Location"] == "https://h/api/runs/r" and headers["Content-Type"].startswith("application/json")


def test_json_media_types() -> None:
    assert http_api.is_json_media_type("application/json")
    assert http_api.is_json_media_type("Application/JSON; charset=utf-8")
    assert http_api.is_json_media_type("application/merge-patch+json")
    assert not http_api.is_json_media_type("text/json-ish")
    assert not http_api.is_json_media_type("text/plain")


# ----------------------------------------------------------------------------- routes on the emulators
WAIT_BP = WorkflowBlueprint.model_validate({
    "id": "t-wait", "nodes": [{"id": "ask", "uses": "wait"}, {"id": "yes", "uses": "echo"},
                              {"id": "hook", "uses": "webhook"}],
    "edges": [{"source": "ask", "target": "yes", "action": "approve"}, {"source": "yes", "target": "hook"}]})


async def _echo(ctx: Any) -> dict[str, Any]:
    return {"output": ctx.input}


@pytest.fixture
async def api(azure_env: AzureTestEnv) -> AsyncIterator[RealServices]:
    settings = Settings.from_env(azure_env.settings(COSMOS_DB_DATABASE=azure_env.cosmos_database))
    services = await build_services(settings, registry={**workflows.registry, "echo": _echo},
                                    blueprints={**workflows.blueprints, WAIT_BP.id: WAIT_BP}, create_resources=True)
    try:
        yield RealServices(services)
    finally:
        await services.close()


async def drain(ctx: RealServices, rounds: int = 20) -> None:
    """Run every queued job through the adapter, as the queue function would, until the queue is empty."""
    services = await ctx.services()
    for _ in range(rounds):
        messages = [m async for m in services.queue_client.receive_messages(max_messages=32, visibility_timeout=30)]
        if not messages:
            return
        for msg in messages:
            await services.adapter.handle_message(msg.content, base64_encoded=True)
            await services.queue_client.delete_message(msg)


async def test_start_and_read_a_run(api: RealServices) -> None:
    case = workflows.use_cases["4.content-moderation"]
    status, body = await handle("startRun", req("POST", "runs", {"blueprintId": "400",
                                                                 "context": case["initialContext"]}), api)
    assert status == 202 and body["status"] == "running"
    run_id = body["runId"]
    assert body["statusUrl"] == f"{BASE}/runs/{run_id}"
    status, view = await handle("getRun", req("GET", "runs/{runId}", runId=run_id), api)
    # 202 while running (a poller keeps polling), 200 once ended; the same body either way.
    assert status == 202 and view["status"] == "running" and view["blueprintId"] == "400"
    assert view["createdAt"].endswith("Z") and "result" not in view
    await drain(api)
    status, view = await handle("getRun", req("GET", "runs/{runId}", runId=run_id), api)
    assert status == 200 and view["status"] == "completed", view
    assert "[REDACTED]" in view["result"]["context"]["final_output"]


async def test_start_run_errors(api: RealServices) -> None:
    status, body = await handle("startRun", req("POST", "runs", {"blueprintId": "nope"}), api)
    assert status == 404 and body["error"] == "blueprint_not_found" and "400" in body["detail"]
    ok = req("POST", "runs", {"blueprintId": "t-wait", "runId": "fixed-id.1"})
    assert (await handle("startRun", ok, api))[0] == 202
    status, body = await handle("startRun", ok, api)
    assert status == 409 and body["error"] == "run_state_conflict"
    # A body without content type is fine when it is JSON (curl -d sends form encoding: also fine).
    for content_type in (None, "application/x-www-form-urlencoded"):
        status, _ = await handle("startRun", req("POST", "runs", {"blueprintId": "t-wait"},
                                                 content_type=content_type), api)
        assert status == 202


async def test_unknown_runs_are_404(api: RealServices) -> None:
    for operation, method, route, body in (("getRun", "GET", "runs/{runId}", None),
                                           ("cancelRun", "POST", "runs/{runId}/cancel", None),
                                           ("resumeRun", "POST", "runs/{runId}/resume", {"action": "approve"}),
                                           ("callWebhook", "POST", "webhooks/{runId}/{nodeId}", {})):
        status, answer = await handle(operation, req(method, route, body, runId="missing", nodeId="hook"), api)
        assert status == 404 and answer["error"] == "run_not_found", (operation, answer)


async def test_wait_resume_webhook_and_cancel_states(api: RealServices) -> None:
    status, body = await handle("startRun", req("POST", "runs", {"blueprintId": "t-wait"}), api)
    run_id = body["runId"]
    # Not awaiting yet (the wait node has not run): resume is a conflict.
    status, answer = await handle("resumeRun", req("POST", "runs/{runId}/resume", {"action": "approve"},
                                                   runId=run_id), api)
    assert status == 409, answer
    await drain(api)
    status, view = await handle("getRun", req("GET", "runs/{runId}", runId=run_id), api)
    assert view["status"] == "awaiting" and view["awaiting"] == ["ask"]
    # The wait node is not a webhook; the webhook node is not waiting yet.
    status, answer = await handle("callWebhook", req("POST", "webhooks/{runId}/{nodeId}", {}, runId=run_id,
                                                     nodeId="ask"), api)
    assert status == 409 and answer["error"] == "not_a_webhook"
    status, answer = await handle("callWebhook", req("POST", "webhooks/{runId}/{nodeId}", {}, runId=run_id,
                                                     nodeId="hook"), api)
    assert status == 409 and answer["error"] == "run_state_conflict"
    status, answer = await handle("resumeRun", req("POST", "runs/{runId}/resume",
                                                   {"action": "approve", "output": {"ok": 1}, "nodeId": "ask"},
                                                   runId=run_id), api)
    assert status == 202 and answer["resumedNodeId"] == "ask" and answer["status"] == "running"
    await drain(api)
    status, answer = await handle("callWebhook", req("POST", "webhooks/{runId}/{nodeId}", raw=b"", runId=run_id,
                                                     nodeId="hook", params={"action": "paid"}), api)
    assert status == 202, answer
    await drain(api)
    status, view = await handle("getRun", req("GET", "runs/{runId}", runId=run_id), api)
    assert view["status"] == "completed", view
    assert view["result"]["context"]["_outputs.yes"] == {"ok": 1}
    assert view["result"]["context"]["_outputs.hook"] is None
    status, answer = await handle("cancelRun", req("POST", "runs/{runId}/cancel", runId=run_id), api)
    assert status == 409 and "completed" in answer["detail"]


async def test_cancel_a_running_run(api: RealServices) -> None:
    _, body = await handle("startRun", req("POST", "runs", {"blueprintId": "t-wait"}), api)
    status, view = await handle("cancelRun", req("POST", "runs/{runId}/cancel", raw=b"", content_type=None,
                                                 runId=body["runId"]), api)
    assert status == 200 and view["status"] == "cancelled" and view["reason"] == "cancelled by request"


async def test_blueprint_routes(api: RealServices) -> None:
    status, body = await handle("listBlueprints", req("GET", "blueprints"), api)
    ids = [b["id"] for b in body["blueprints"]]
    assert status == 200 and ids == sorted(ids) and {"100", "400", "t-wait"} <= set(ids)
    entry = next(b for b in body["blueprints"] if b["id"] == "t-wait")
    assert entry["nodeCount"] == 3 and entry["edgeCount"] == 2 and entry["version"].startswith("sha1:")
    status, detail = await handle("getBlueprint", req("GET", "blueprints/{id}", id="400"), api)
    assert status == 200 and detail["id"] == "400" and detail["nodes"]
    assert detail["analysis"]["isDag"] is True and detail["mermaid"].startswith("flowchart")
    status, detail = await handle("getBlueprint", req("GET", "blueprints/{id}", id="nope"), api)
    assert status == 404 and detail["error"] == "blueprint_not_found"


async def test_health(api: RealServices, azure_env: AzureTestEnv) -> None:
    status, body = await handle("health", req("GET", "health"), api)
    assert status == 200 and body["status"] == "healthy", body
    assert set(body["checks"]) == {"queue", "cosmos", "redis"} and all(c["ok"] for c in body["checks"].values())
    # Point Redis at a port nobody listens on: 503 naming redis, the others still fine.
    settings = Settings.from_env(azure_env.settings(COSMOS_DB_DATABASE=azure_env.cosmos_database,
                                                    REDIS_URL="redis://127.0.0.1:1/0"))
    broken = await build_services(settings)
    try:
        status, body = await handle("health", req("GET", "health"), RealServices(broken))
    finally:
        await broken.close()
    assert status == 503 and body["error"] == "unhealthy" and body["detail"].startswith("redis:")
    assert body["checks"]["queue"]["ok"] and not body["checks"]["redis"]["ok"]


async def test_openapi_route() -> None:
    status, doc = await handle("openapi", req("GET", "openapi.json"), NoServices())
    assert status == 200 and doc["servers"] == [{"url": BASE}]
