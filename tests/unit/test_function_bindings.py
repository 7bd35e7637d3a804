"""function_app.py as the Functions host sees it: every trigger's binding, the routes against the OpenAPI
document, host.json, local.settings.json.example and .funcignore, and the local host's binding logic.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from helpers import wait_until

import function_app
from flowcraft_core import http_api
from flowcraft_core.azure.clients import ensure_queue, make_queue_client
from flowcraft_core.http_api import openapi_document
from flowcraft_core.settings import NOT_IN_EXAMPLE, Settings
from scripts.devhost import (
    DevHost,
    DevHostError,
    HostedFunction,
    HostOptions,
    QueueOptions,
    RouteTemplate,
    hosted_functions,
    parse_env_file,
    parse_timespan,
    resolve_expression,
    schedule_iterator,
)

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ROUTES = {
    ("runs", "POST", "function"), ("runs/{runId}", "GET", "function"), ("runs/{runId}/cancel", "POST", "function"),
    ("runs/{runId}/resume", "POST", "function"), ("webhooks/{runId}/{nodeId}", "POST", "function"),
    ("blueprints", "GET", "function"), ("blueprints/{id}", "GET", "function"), ("health", "GET", "anonymous"),
    ("openapi.json", "GET", "anonymous"), ("runs", "GET", "function"), ("runs/{runId}", "DELETE", "function"),
    ("runs/{runId}/history", "GET", "function"), ("view", "GET", "function"),
}


@pytest.fixture(scope="module")
def functions() -> dict[str, HostedFunction]:
    # get_functions() may be called once per app object: the local host's cache is shared with everyone.
    return {f.name: f for f in hosted_functions(function_app.app)}


def _http(functions: dict[str, HostedFunction]) -> list[HostedFunction]:
    return [f for f in functions.values() if f.kind == "httpTrigger"]


def test_the_app_requires_function_keys_by_default() -> None:
    assert function_app.app.auth_level == func.AuthLevel.FUNCTION


def test_job_queue_trigger(functions: dict[str, HostedFunction]) -> None:
    trigger = functions["run_job"].trigger
    assert trigger == {"direction": "IN", "type": "queueTrigger", "name": "msg", "queueName": "%FLOWCRAFT_QUEUE_NAME%",
                       "connection": "AzureWebJobsStorage"}


def test_poison_queue_trigger_follows_the_host_naming(functions: dict[str, HostedFunction]) -> None:
    trigger = functions["fail_poisoned_job"].trigger
    assert trigger["type"] == "queueTrigger" and trigger["connection"] == "AzureWebJobsStorage"
    # The host resolves every %NAME% inside the string (INameResolver.ResolveWholeString), so a suffix works;
    # it must name the queue the host moves failed messages to, which is what Settings calls it too.
    assert trigger["queueName"] == "%FLOWCRAFT_QUEUE_NAME%-poison"
    resolved = resolve_expression(trigger["queueName"], {"FLOWCRAFT_QUEUE_NAME": "my-jobs"})
    assert resolved == "my-jobs-poison" == Settings(FLOWCRAFT_QUEUE_NAME="my-jobs").poison_queue_name


def test_reconciler_timer_trigger(functions: dict[str, HostedFunction]) -> None:
    trigger = functions["reconcile_stalled_runs"].trigger
    assert trigger["type"] == "timerTrigger" and trigger["schedule"] == "%FLOWCRAFT_RECONCILE_SCHEDULE%"
    assert not trigger.get("runOnStartup")  # would reconcile on every scale-out and restart
    # The default schedule is a valid six-field NCRONTAB expression firing every minute.
    following = schedule_iterator(Settings().reconcile_schedule)
    first = following(datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC))
    assert first == datetime(2024, 1, 1, 0, 1, tzinfo=UTC) and following(first).minute == 2


def test_http_routes_methods_and_auth_levels(functions: dict[str, HostedFunction]) -> None:
    found = set()
    for fn in _http(functions):
        methods = fn.trigger["methods"]
        assert len(methods) == 1, fn.name
        found.add((fn.trigger["route"], methods[0], fn.trigger["authLevel"].lower()))
    assert found == EXPECTED_ROUTES
    assert {f.kind for f in functions.values()} == {"httpTrigger", "queueTrigger", "timerTrigger"}
    assert len(functions) == len(EXPECTED_ROUTES) + 3


def test_every_function_is_async(functions: dict[str, HostedFunction]) -> None:
    # Sync functions run on the worker's thread pool, where the asyncio clients cannot be used.
    import inspect

    assert all(inspect.iscoroutinefunction(f.user_function) for f in functions.values())


async def test_each_route_dispatches_to_the_operation_it_is_declared_for(
        functions: dict[str, HostedFunction], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def fake_handle(operation_id: str, request: http_api.ApiRequest, context: Any) -> http_api.ApiResult:
        seen.append(operation_id)
        assert request.route_params == {"runId": "r1"} and request.header("X-Test") == "yes"
        return 200, {"operation": operation_id}

    monkeypatch.setattr(http_api, "handle", fake_handle)
    for fn in _http(functions):
        req = func.HttpRequest(fn.trigger["methods"][0], f"http://localhost/api/{fn.trigger['route']}",
                               headers={"x-test": "yes"}, route_params={"runId": "r1"}, body=b"")
        response = await fn.user_function(req)
        assert isinstance(response, func.HttpResponse)
        operation = http_api.OPERATIONS[seen[-1]]
        assert (operation.route, operation.method, operation.auth) == (
            fn.trigger["route"], fn.trigger["methods"][0], fn.trigger["authLevel"].lower()), fn.name
        assert json.loads(response.get_body()) == {"operation": seen[-1]}
        assert response.mimetype == "application/json"
    assert sorted(seen) == sorted(http_api.OPERATIONS)


def test_openapi_document_lists_exactly_the_app_routes(functions: dict[str, HostedFunction]) -> None:
    doc = openapi_document()
    documented = {(path.lstrip("/"), method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = {(f.trigger["route"], f.trigger["methods"][0]) for f in _http(functions)}
    assert documented == served
    for fn in _http(functions):
        op = doc["paths"]["/" + fn.trigger["route"]][fn.trigger["methods"][0].lower()]
        anonymous = fn.trigger["authLevel"].lower() == "anonymous"
        assert (op.get("security") == []) is anonymous, fn.name
        assert ("401" in op["responses"]) is not anonymous
        path_params = set(re.findall(r"{(\w+)}", fn.trigger["route"]))
        assert {p["name"] for p in op.get("parameters", []) if p["in"] == "path"} == path_params
        for code, response in op["responses"].items():
            if fn.trigger["route"] == "view" and code == "200":
                assert set(response["content"]) == {"text/html"}  # the run view is a page
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            assert ref.split("/")[-1] in doc["components"]["schemas"]


def test_openapi_document_structure() -> None:
    doc = openapi_document("https://example.net/api")
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "https://example.net/api"}]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["functionKeyHeader"] == {"type": "apiKey", "in": "header", "name": "x-functions-key",
                                            "description": schemes["functionKeyHeader"]["description"]}
    assert schemes["functionKeyQuery"]["in"] == "query" and schemes["functionKeyQuery"]["name"] == "code"
    assert doc["security"] == [{"functionKeyHeader": []}, {"functionKeyQuery": []}]
    start = doc["paths"]["/runs"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StartRunRequest"}
    schema = doc["components"]["schemas"]["StartRunRequest"]
    # The request schema is the model's: aliases on the wire, extra fields forbidden, blueprintId required.
    assert set(schema["properties"]) == {"blueprintId", "context", "runId"}
    assert schema["required"] == ["blueprintId"] and schema["additionalProperties"] is False
    assert set(doc["components"]["schemas"]["ErrorResponse"]["required"]) == {"error", "detail"}
    for schema_name in ("ResumeRequest", "CancelRequest", "RunView", "HealthReport", "BlueprintDetail"):
        assert schema_name in doc["components"]["schemas"]
    # Every $ref anywhere in the document resolves.
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc))
    assert refs and set(refs) <= set(doc["components"]["schemas"])


def test_openapi_document_is_valid_json_schema() -> None:
    from jsonschema import Draft202012Validator

    for schema in openapi_document()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


# ---------------------------------------------------------------------------------- host.json and settings
def test_host_json() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    queues = host["extensions"]["queues"]
    assert queues["maxPollingInterval"] == "00:00:02" and queues["maxDequeueCount"] == 5
    assert queues["visibilityTimeout"] == "00:00:10" and queues["messageEncoding"] == "base64"
    assert 1 <= queues["batchSize"] <= 32 and 0 <= queues["newBatchThreshold"] <= queues["batchSize"]
    assert host["extensions"]["http"]["routePrefix"] == "api"
    # The local host reads the same file.
    options = HostOptions.from_host_json(ROOT / "host.json")
    assert options.route_prefix == "api" and options.queues.max_polling_interval == 2.0
    assert options.queues.visibility_timeout == 10.0 and options.queues.max_dequeue_count == 5
    assert options.function_timeout == parse_timespan(host["functionTimeout"]) and options.log_level == "INFO"


def test_local_settings_example_has_every_setting() -> None:
    values = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    aliases = {info.alias for info in Settings.model_fields.values()} - NOT_IN_EXAMPLE
    assert aliases <= set(values), aliases - set(values)
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert all(isinstance(v, str) for v in values.values())  # the host only takes strings
    settings = Settings.from_env(values)
    assert settings.redis_url.get_secret_value().startswith("redis://localhost") and settings.cosmos_verify_tls is False
    assert settings.function_key.get_secret_value() == "local-dev-key" and settings.create_resources is True
    # The %SETTING% names the bindings use resolve from the example.
    assert resolve_expression("%FLOWCRAFT_QUEUE_NAME%-poison", values) == "flowcraft-jobs-poison"
    schedule_iterator(resolve_expression("%FLOWCRAFT_RECONCILE_SCHEDULE%", values))


def test_funcignore_keeps_the_app_and_drops_the_rest() -> None:
    ignored = {line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "node_modules", "tests", "bench", "infra", ".git", "local.settings.json",
            "flowcraft_dev"} <= ignored
    assert not {"function_app.py", "host.json", "requirements.txt", "flowcraft_core", "flowcraft_functions",
                "workflows"} & ignored


def test_lazy_services_reads_settings_once_and_reports_missing_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from flowcraft_core.errors import FlowcraftError

    for name in ("AzureWebJobsStorage", "AZURE_STORAGE_CONNECTION_STRING", "COSMOS_DB_CONNECTION_STRING",
                 "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    lazy = function_app.LazyServices()
    assert lazy.settings is lazy.settings
    with pytest.raises(FlowcraftError, match="AzureWebJobsStorage"):
        asyncio.run(lazy.services())
    # Nothing half-built is kept: the next call tries again.
    with pytest.raises(FlowcraftError):
        asyncio.run(lazy.services())


async def test_invalid_app_settings_are_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCRAFT_QUEUE_NAME", "Not_A_Queue_Name")
    lazy = function_app.LazyServices()
    request = http_api.ApiRequest.build("POST", "http://localhost/api/runs", body=b'{"blueprintId": "400"}')
    status, body = await http_api.handle("startRun", request, lazy)
    assert status == 503 and body["error"] == "not_configured" and "FLOWCRAFT_QUEUE_NAME" in body["detail"]


# ---------------------------------------------------------------------------------- the local host's parts
@pytest.mark.parametrize(("text", "seconds"), [
    ("00:00:02", 2.0), ("00:10:00", 600.0), ("1.00:00:00", 86400.0), ("00:00:00.5", 0.5), ("-1", None), (None, None),
])
def test_timespans(text: str | None, seconds: float | None) -> None:
    assert parse_timespan(text) == seconds


def test_bad_timespan() -> None:
    with pytest.raises(DevHostError):
        parse_timespan("2 minutes")


def test_binding_expressions() -> None:
    env = {"A": "x", "B": "y"}
    assert resolve_expression("%A%-%B%-poison", env) == "x-y-poison"
    assert resolve_expression("plain", env) == "plain"
    # Unset but known to Settings: its default, with a warning (the real host would refuse to start).
    assert resolve_expression("%FLOWCRAFT_QUEUE_NAME%", {}) == "flowcraft-jobs"
    with pytest.raises(DevHostError, match="NOT_A_SETTING"):
        resolve_expression("%NOT_A_SETTING%", env)
    with pytest.raises(DevHostError, match="unbalanced"):
        resolve_expression("%A", env)


def test_route_templates() -> None:
    route = RouteTemplate.parse("runs/{runId}/resume")
    assert route.match(["runs", "r1", "resume"]) == {"runId": "r1"}
    assert route.match(["RUNS", "r1", "Resume"]) == {"runId": "r1"}  # literals are case-insensitive
    assert route.match(["runs", "r1"]) is None and route.match(["runs", "r1", "resume", "x"]) is None
    assert RouteTemplate.parse("items/{id:int?}").match(["items"]) == {}
    assert RouteTemplate.parse("files/{*path}").match(["files", "a", "b"]) == {"path": "a/b"}
    assert RouteTemplate.parse("blueprints").specificity > RouteTemplate.parse("{x}").specificity
    with pytest.raises(DevHostError):
        RouteTemplate.parse("a/pre{x}")


def test_schedules() -> None:
    at = datetime(2024, 1, 1, 0, 0, 7, tzinfo=UTC)
    assert schedule_iterator("*/5 * * * * *")(at) == datetime(2024, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert schedule_iterator("0 30 9 * * 1-5")(at) == datetime(2024, 1, 1, 9, 30, tzinfo=UTC)  # seconds first
    assert schedule_iterator("00:00:30")(at) == datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)
    for bad in ("* * *", "61 * * * * *", "00:00:00"):
        with pytest.raises(DevHostError):
            schedule_iterator(bad)


def test_env_files(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("# emulators\n"
                    "AzureWebJobsStorage='DefaultEndpointsProtocol=http;AccountName=a;QueueEndpoint=http://h/a;'\n"
                    "export REDIS_URL=redis://127.0.0.1:1/0\n"
                    "PLAIN=a;b=c\n"
                    "QUOTED=\"it's\"\n\n")
    assert parse_env_file(path) == {
        "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=a;QueueEndpoint=http://h/a;",
        "REDIS_URL": "redis://127.0.0.1:1/0", "PLAIN": "a;b=c", "QUOTED": "it's"}
    path.write_text("no equals sign\n")
    with pytest.raises(DevHostError):
        parse_env_file(path)


# ------------------------------------------------------------------- the local host, driving a small app
def _tiny_app(calls: list[Any], *, queue_outcomes: list[str] | None = None) -> func.FunctionApp:
    """An app with one route of each kind and a queue function whose outcomes the test scripts."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    outcomes = list(queue_outcomes or [])

    @app.route(route="items/{itemId}", methods=["GET"])
    async def get_item(req: func.HttpRequest) -> func.HttpResponse:
        calls.append((req.method, req.route_params, req.params.get("q"), req.headers.get("x-extra")))
        return func.HttpResponse(json.dumps({"item": req.route_params["itemId"]}), mimetype="application/json",
                                 status_code=201)

    @app.route(route="open", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
    def sync_open(req: func.HttpRequest) -> func.HttpResponse:  # sync: run on a thread, as the worker does
        return func.HttpResponse(req.get_body(), status_code=200)

    @app.route(route="boom", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    async def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("function bug")

    @app.queue_trigger(arg_name="msg", queue_name="%TINY_QUEUE%", connection="AzureWebJobsStorage")
    async def work(msg: func.QueueMessage) -> None:
        calls.append((msg.get_body(), msg.dequeue_count))
        if (outcomes.pop(0) if outcomes else "ok") == "fail":
            raise RuntimeError("transient")

    return app


async def test_local_host_serves_routes_with_function_keys() -> None:
    calls: list[Any] = []
    host = DevHost(_tiny_app(calls), options=HostOptions(), env={"TINY_QUEUE": "unused", "AzureWebJobsStorage":
                                                                  "UseDevelopmentStorage=true"},
                   function_key="k1", port=0)
    host.functions = [f for f in host.functions if f.kind == "httpTrigger"]  # no queue polling here
    await host.start()
    try:
        async with aiohttp.ClientSession() as session:
            async def call(method: str, path: str, **kw: Any) -> tuple[int, Any]:
                async with session.request(method, f"{host.url}{path}", **kw) as resp:
                    return resp.status, await resp.read()

            assert (await call("GET", "/api/items/a%20b?q=1"))[0] == 401
            assert (await call("GET", "/api/items/x", headers={"x-functions-key": "wrong"}))[0] == 401
            status, body = await call("GET", "/api/items/a%20b?q=1&code=k1", headers={"x-extra": "e"})
            assert status == 201 and json.loads(body) == {"item": "a b"}
            assert calls[-1] == ("GET", {"itemId": "a b"}, "1", "e")
            status, _ = await call("GET", "/api/ITEMS/x", headers={"x-functions-key": "k1"})
            assert status == 201  # route literals are case-insensitive, as in ASP.NET routing
            assert (await call("POST", "/api/open", data=b"echo"))[1] == b"echo"
            status, body = await call("POST", "/api/items/x", headers={"x-functions-key": "k1"})
            assert status == 404 and b"allowed: GET" in body
            assert (await call("GET", "/api/nothing"))[0] == 404
            assert (await call("GET", "/items/x"))[0] == 404  # outside the route prefix
            status, body = await call("GET", "/api/boom")
            assert status == 500 and json.loads(body)["error"] == "internal_error"
    finally:
        await host.stop()
    assert host.invocation_counts["get_item"] == 2


async def test_local_host_refuses_to_start_with_an_unknown_setting() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="%NO_SUCH_SETTING%", connection="AzureWebJobsStorage")
    async def work(msg: func.QueueMessage) -> None:
        return None

    host = DevHost(app, env={"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, function_key="k", port=0)
    with pytest.raises(DevHostError, match="NO_SUCH_SETTING"):
        await host.start()
    await host.stop()


async def test_local_host_retries_then_poisons_queue_messages(azure_env: Any) -> None:
    """Failed deliveries come back after visibilityTimeout with dequeue_count + 1; the last one is poisoned."""
    calls: list[Any] = []
    queue = azure_env.queue_name
    env = {"TINY_QUEUE": queue, "AzureWebJobsStorage": azure_env.queue_connection_string}
    options = HostOptions(queues=QueueOptions(max_dequeue_count=3, visibility_timeout=0, max_polling_interval=0.2))
    host = DevHost(_tiny_app(calls, queue_outcomes=["fail", "ok", "fail", "fail", "fail"]), options=options,
                   env=env, function_key="k", port=0)
    host.functions = [f for f in host.functions if f.kind == "queueTrigger"]
    async with make_queue_client(azure_env.queue_connection_string, queue) as qc, \
            make_queue_client(azure_env.queue_connection_string, f"{queue}-poison") as poison:
        await ensure_queue(qc)
        await host.start()
        try:
            await qc.send_message("first")  # base64 on the wire; the function gets the decoded bytes
            await wait_until(lambda: len(calls) == 2, timeout=10, message="a retry after one failure")
            assert calls == [(b"first", 1), (b"first", 2)]
            await qc.send_message("second")
            await wait_until(lambda: len(calls) == 5, timeout=15, message="three failed deliveries")
            assert calls[2:] == [(b"second", 1), (b"second", 2), (b"second", 3)]

            async def poisoned() -> list[str]:
                try:
                    return [m.content async for m in poison.receive_messages(visibility_timeout=1)]
                except ResourceNotFoundError:  # the host creates the poison queue with the first poison message
                    return []

            assert await wait_until(poisoned, timeout=10, message="the message in the poison queue") == ["second"]
            # Gone from the job queue: "first" deleted on success, "second" deleted once copied to the poison queue.
            assert await wait_until(lambda: _empty(qc), timeout=5, message="an empty job queue")
        finally:
            await host.stop()
    assert host.invocation_counts["work"] == 5


async def _empty(client: Any) -> bool:
    return await client.peek_messages() == []
