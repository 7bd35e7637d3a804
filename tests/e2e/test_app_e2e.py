"""End to end: function_app.py served by the local host (a subprocess), over real HTTP, on the emulators.

The host is started as `make dev` starts it (``python -m scripts.devhost``) with this module's
queue and database names, the test workflows module (e2e_workflows), and short queue timings so
retries and polling take fractions of a second instead of the production values.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ResourceNotFoundError
from helpers import wait_until
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import workflows
from flowcraft_core.azure.clients import make_cosmos_client, make_queue_client
from flowcraft_core.azure.services import build_services
from flowcraft_core.settings import Settings
from flowcraft_dev.emulators import Emulators

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
KEY = "e2e-function-key"
RUN_DEADLINE = 30.0


@dataclass
class HostProcess:
    """A local host subprocess and what the tests need to talk to it."""

    process: subprocess.Popen[bytes]
    base_url: str
    env: dict[str, str]
    log_path: Path

    @property
    def api(self) -> str:
        """The API root, e.g. http://127.0.0.1:1234/api."""
        return f"{self.base_url}/api"

    def log(self) -> str:
        """Everything the host printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def local_host(emulators: Emulators, log_path: Path, **settings: str) -> Iterator[HostProcess]:
    """Start ``python -m scripts.devhost`` on a free port with fresh names; stop it with SIGTERM."""
    token = uuid.uuid4().hex[:12]
    env = {
        **os.environ, **emulators.env(),
        "FLOWCRAFT_QUEUE_NAME": f"e2e-{token}", "COSMOS_DB_DATABASE": f"e2e-{token}",
        "FLOWCRAFT_CREATE_RESOURCES": "true", "FLOWCRAFT_FUNCTION_KEY": KEY,
        "FLOWCRAFT_WORKFLOWS": "e2e_workflows", "FLOWCRAFT_RECONCILE_SCHEDULE": "0 0 * * * *",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(E2E_DIR)]), "PYTHONUNBUFFERED": "1",
        **settings,
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.devhost", "--port", "0", "--settings-file", "",
         "--visibility-timeout", "1", "--max-polling-interval", "0.2"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        match = None
        while match is None:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            match = re.search(r"listening on (http://[\d.]+:\d+)", text)
            if process.poll() is not None:
                pytest.fail(f"the local host exited with {process.returncode}:\n{text}")
            if match is None and time.monotonic() > deadline:
                pytest.fail(f"the local host did not start within 30 s:\n{text}")
            if match is None:
                time.sleep(0.05)
        assert match is not None
        yield HostProcess(process, match.group(1), env, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


async def _drop_resources(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    for name in (settings.queue_name, settings.poison_queue_name):
        async with make_queue_client(settings.storage_connection_string.get_secret_value(), name) as qc:
            with contextlib.suppress(ResourceNotFoundError):
                await qc.delete_queue()
    async with make_cosmos_client(settings.cosmos_connection_string.get_secret_value(), verify_tls=False) as cc:
        with contextlib.suppress(ResourceNotFoundError):
            await cc.delete_database(settings.cosmos_database)


@pytest.fixture(scope="module")
def host(emulators: Emulators, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    """One local host for the module (starting one costs about a second)."""
    import asyncio

    with local_host(emulators, tmp_path_factory.mktemp("host") / "host.log") as proc:
        yield proc
        env = proc.env
    # A graceful stop: SIGTERM drains in-flight work and exits 0.
    assert proc.process.returncode == 0, proc.log()[-3000:]
    assert "local Functions host stopped" in proc.log()
    asyncio.run(_drop_resources(env))


class Api:
    """A tiny JSON client for the app's HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, host: HostProcess, key: str | None = KEY) -> None:
        self.session = session
        self.host = host
        self.key = key

    async def call(self, method: str, path: str, *, json: Any = None, data: bytes | str | None = None,
                   headers: dict[str, str] | None = None, key: str | None = "default") -> tuple[int, Any]:
        """One request; returns (status, parsed JSON body or None)."""
        hdrs = dict(headers or {})
        use_key = self.key if key == "default" else key
        if use_key is not None:
            hdrs["x-functions-key"] = use_key
        async with self.session.request(method, f"{self.host.api}/{path.lstrip('/')}", json=json, data=data,
                                        headers=hdrs) as resp:
            text = await resp.text()
            try:
                import json as _json

                return resp.status, _json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def start(self, blueprint_id: str, context: dict[str, Any] | None = None) -> str:
        """POST a run; returns its id."""
        status, body = await self.call("POST", "runs", json={"blueprintId": blueprint_id, "context": context or {}})
        assert status == 202, body
        return str(body["runId"])

    async def status(self, run_id: str) -> dict[str, Any]:
        """GET the run: 202 while it has not ended (the polling convention), 200 once it has."""
        status, body = await self.call("GET", f"runs/{run_id}")
        ended = body.get("status") in ("completed", "failed", "cancelled")
        assert status == (200 if ended else 202), body
        return dict(body)

    async def wait_for(self, run_id: str, *statuses: str, timeout: float = RUN_DEADLINE) -> dict[str, Any]:
        """Poll GET until the run's status is one of ``statuses``."""
        async def reached() -> dict[str, Any] | None:
            body = await self.status(run_id)
            return body if body["status"] in statuses else None

        return await wait_until(reached, timeout=timeout, interval=0.1, message=f"run {run_id} {statuses}")


@pytest.fixture
async def api(host: HostProcess) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield Api(session, host)


@pytest.fixture(scope="module")
def openapi_registry(host: HostProcess) -> Registry[Any]:
    """The app's own OpenAPI document, for validating responses against it."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{host.api}/openapi.json", timeout=10) as resp:  # noqa: S310 - local URL
        document = json.loads(resp.read())
    return Registry().with_resource("urn:openapi", Resource.from_contents(document, DRAFT202012))


def assert_schema(registry: Registry[Any], schema_name: str, body: Any) -> None:
    """The body matches the named component schema of the served OpenAPI document."""
    validator = Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{schema_name}"}, registry=registry)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors


# ------------------------------------------------------------------------------------------------ tests
async def test_every_use_case_completes_over_http(api: Api, openapi_registry: Registry[Any]) -> None:
    runs: dict[str, str] = {}
    for name, case in workflows.use_cases.items():
        status, body = await api.call("POST", "runs", json={"blueprintId": case["entryWorkflowId"],
                                                            "context": case["initialContext"]})
        assert status == 202, body
        assert body["status"] == "running" and body["statusUrl"].endswith(f"/api/runs/{body['runId']}")
        assert_schema(openapi_registry, "RunAccepted", body)
        runs[name] = body["runId"]
    finals = {name: await api.wait_for(run_id, "completed", "failed") for name, run_id in runs.items()}
    for name, final in finals.items():
        assert final["status"] == "completed", (name, final)
        assert final["blueprintId"] == workflows.use_cases[name]["entryWorkflowId"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", final["createdAt"])
        assert final["lastUpdated"] >= final["createdAt"]
        assert_schema(openapi_registry, "RunView", final)
    moderation = finals["4.content-moderation"]["result"]["context"]
    assert "[REDACTED]" in str(moderation["final_output"])
    assert "test@example.com" not in str(moderation["final_output"])


async def test_cancel_a_sleeping_run(api: Api) -> None:
    run_id = await api.start("e2e-sleep")
    status, body = await api.call("POST", f"runs/{run_id}/cancel", json={"reason": "changed my mind"})
    assert status == 200, body
    assert body["status"] == "cancelled" and body["reason"] == "changed my mind"
    assert (await api.status(run_id))["status"] == "cancelled"
    status, body = await api.call("POST", f"runs/{run_id}/cancel")
    assert status == 409 and body["error"] == "run_state_conflict"


async def test_resume_an_awaiting_run_with_approve(api: Api) -> None:
    run_id = await api.start("e2e-approval")
    awaiting = await api.wait_for(run_id, "awaiting")
    assert awaiting["awaiting"] == ["approval"]
    status, body = await api.call("POST", f"runs/{run_id}/resume",
                                  json={"action": "approve", "output": {"by": "alice"}})
    assert status == 202, body
    assert body["resumedNodeId"] == "approval"
    final = await api.wait_for(run_id, "completed", "failed")
    assert final["status"] == "completed", final
    context = final["result"]["context"]
    assert context["decision"] == {"node": "approved", "input": {"by": "alice"}}
    assert "_outputs.rejected" not in context
    status, body = await api.call("POST", f"runs/{run_id}/resume", json={"action": "approve"})
    assert status == 409 and body["error"] == "run_state_conflict"


async def test_webhook_resumes_its_node_with_the_body(api: Api) -> None:
    run_id = await api.start("e2e-webhook")
    await api.wait_for(run_id, "awaiting")
    status, body = await api.call("POST", f"webhooks/{run_id}/ship", json={"paid": True})
    assert status == 409 and body["error"] == "not_a_webhook"
    status, body = await api.call("POST", f"webhooks/{run_id}/nope", json={"paid": True})
    assert status == 404 and body["error"] == "node_not_found"
    status, body = await api.call("POST", f"webhooks/{run_id}/payment", json={"paid": True, "amount": 12.5})
    assert status == 202, body
    final = await api.wait_for(run_id, "completed", "failed")
    assert final["status"] == "completed", final
    assert final["result"]["context"]["_outputs.payment"] == {"paid": True, "amount": 12.5}
    assert final["result"]["context"]["_outputs.ship"] == {"paid": True, "amount": 12.5}
    status, _ = await api.call("POST", f"webhooks/{run_id}/payment", json={"again": True})
    assert status == 409


async def test_failing_node_fails_the_run_without_poisoning(api: Api) -> None:
    run_id = await api.start("e2e-fail")
    final = await api.wait_for(run_id, "failed", "completed")
    assert final["status"] == "failed"
    assert "charge" in final["reason"] and "payment provider said no" in final["reason"]
    assert final["result"]["errors"][0]["nodeId"] == "charge"


async def test_crashing_job_is_poisoned_and_fails_its_run(api: Api, host: HostProcess) -> None:
    run_id = await api.start("e2e-crash")
    # maxDequeueCount (5) deliveries, 1 s apart, then the poison-queue function fails the run.
    final = await api.wait_for(run_id, "failed", "completed", timeout=40)
    assert final["status"] == "failed"
    assert "poison queue" in final["reason"] and "explode" in final["reason"]
    # The poison function logs right after failing the run: give it a moment to be written.
    line = f"run {run_id} failed: one of its jobs was moved to the poison queue"
    await wait_until(lambda: line in host.log(), timeout=5, message="the poison function's log line")
    log = host.log()
    assert "Moving message" in log and "poison message" in log
    assert log.count("Executed 'Functions.run_job' (Failed") >= 5


async def test_message_that_is_not_a_job_is_poisoned_then_dropped(api: Api, host: HostProcess) -> None:
    settings = Settings.from_env(host.env)
    async with make_queue_client(settings.storage_connection_string.get_secret_value(), settings.queue_name) as qc:
        await qc.send_message('{"hello": "world"}')  # the client base64-encodes, as the host expects
    await wait_until(lambda: "poison message is not a Flowcraft job" in host.log(), timeout=10,
                     message="the poison function dropped it")
    log = host.log()
    assert "message is not a Flowcraft job" in log and "moving it to the poison queue" in log


async def test_http_errors(api: Api, host: HostProcess) -> None:
    status, body = await api.call("GET", "blueprints", key=None)
    assert status == 401 and body["error"] == "unauthorized"
    status, _ = await api.call("GET", "blueprints", key="wrong")
    assert status == 401
    status, body = await api.call("GET", f"blueprints?code={KEY}", key=None)
    assert status == 200 and any(b["id"] == "400" for b in body["blueprints"])
    status, body = await api.call("GET", "runs/does-not-exist")
    assert status == 404 and body["error"] == "run_not_found"
    status, body = await api.call("GET", "runs/bad%23id")
    assert status == 400 and body["error"] == "invalid_run_id"
    status, body = await api.call("POST", "runs", data=b"{not json", headers={"content-type": "application/json"})
    assert status == 400 and body["error"] == "invalid_json"
    status, body = await api.call("POST", "runs", json={"blueprintId": "no-such-blueprint"})
    assert status == 404 and body["error"] == "blueprint_not_found"
    status, body = await api.call("POST", "runs", data=b'{"blueprintId": "400"}',
                                  headers={"content-type": "text/plain"})
    assert status == 415
    status, body = await api.call("POST", "runs", json={"blueprintId": "400", "context": {"x": "y" * 1_100_000}})
    assert status == 413 and body["error"] == "payload_too_large"
    status, body = await api.call("POST", "runs", json={"blueprintId": "400", "runid": "typo"})
    assert status == 400 and "runid: unknown field" in body["detail"]
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    assert (await api.call("POST", "runs", json={"blueprintId": "e2e-sleep", "runId": run_id}))[0] == 202
    status, body = await api.call("POST", "runs", json={"blueprintId": "e2e-sleep", "runId": run_id})
    assert status == 409 and body["error"] == "run_state_conflict"
    status, body = await api.call("POST", f"runs/{run_id}/resume", json={"action": "approve"})
    assert status == 409
    assert (await api.call("POST", f"runs/{run_id}/cancel"))[0] == 200
    status, body = await api.call("GET", "nothing/here")
    assert status == 404
    status, body = await api.call("GET", "health", key=None)
    assert status == 200 and body["status"] == "healthy", body
    status, body = await api.call("GET", "blueprints/400")
    assert status == 200 and body["analysis"]["startNodeIds"] and body["mermaid"].startswith("flowchart")


async def test_openapi_document_is_served_anonymously(api: Api) -> None:
    status, doc = await api.call("GET", "openapi.json", key=None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"][0]["url"] == f"{api.host.api}"
    assert set(doc["paths"]) >= {"/runs", "/runs/{runId}", "/health"}


async def test_reconciler_timer_revives_a_stalled_run(emulators: Emulators, tmp_path: Path) -> None:
    # A second host whose reconciler runs every second and treats a run as stalled after 1 s.
    with local_host(emulators, tmp_path / "host.log", FLOWCRAFT_RECONCILE_SCHEDULE="*/1 * * * * *",
                    FLOWCRAFT_STALLED_THRESHOLD_SECONDS="1", FLOWCRAFT_WORKFLOWS="workflows") as proc:
        # Start a run whose jobs go to a queue nobody listens to: it stalls at once.
        lost = Settings.from_env({**proc.env, "FLOWCRAFT_QUEUE_NAME": f"{proc.env['FLOWCRAFT_QUEUE_NAME']}-lost"})
        services = await build_services(lost, create_resources=True)
        try:
            case = workflows.use_cases["4.content-moderation"]
            run_id = await services.adapter.start_run(case["entryWorkflowId"], case["initialContext"])
        finally:
            with contextlib.suppress(ResourceNotFoundError):
                await services.queue_client.delete_queue()
            await services.close()
        async with aiohttp.ClientSession() as session:
            final = await Api(session, proc).wait_for(run_id, "completed", "failed")
        assert final["status"] == "completed", final
        assert "[REDACTED]" in str(final["result"]["context"]["final_output"])
        assert re.search(r"reconciler: \{'stalledRuns': [1-9]", proc.log()), proc.log()[-2000:]
    assert proc.process.returncode == 0
    await _drop_resources(proc.env)

