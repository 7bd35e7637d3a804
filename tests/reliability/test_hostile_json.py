"""Hostile JSON at every edge: never a 5xx, never an unreadable run, never a message that loops.

Regression tests for what an attack found (issue 14): a queue message nested 5000 deep looped forever in
the standalone worker and ended in ``<queue>-poison-poison`` through the Functions path; a context nested
300 deep or holding a lone surrogate made ``GET /api/runs/{id}`` a 500 forever; ``1e999`` reached Cosmos
DB as ``Infinity`` and its 500 was retried for seconds; the local host answered 500 to a body declared
gzip that was not. Then a hypothesis property test throws generated hostile JSON at every HTTP route.

The Functions path is function_app itself, served in this process by the local host (``scripts.devhost``:
real HTTP, real queue listeners on Azurite, the poison-queue function included); the standalone worker
is the adapter's own polling loop. Both run on the emulators.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import rel_hostile_workflows as hw
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue.aio import QueueClient
from helpers import wait_until
from hostile_json import HOSTILE_FRAGMENTS, hostile_documents, splice
from hypothesis import HealthCheck, given, settings
from rel_support import RelHarness, wait_final

from flowcraft_core.azure.services import AzureServices, plain_queue_client
from flowcraft_core.json_policy import TRUNCATED
from scripts.devhost import DevHost, HostOptions, QueueOptions

KEY = "hostile-json-key"
PROPERTY_EXAMPLES = int(os.environ.get("FLOWCRAFT_HOSTILE_EXAMPLES", "25"))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def strict_json(raw: bytes) -> Any:
    """Parse an answer as strict JSON: valid UTF-8, no NaN/Infinity."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in an answer")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


# Messages that are not jobs, each breaking the decoder a different way.
NOT_JOBS: dict[str, bytes] = {
    "arrays nested 5000 deep": b"[" * 5000 + b"]" * 5000,
    "objects nested 3000 deep": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "a job nested in 100 arrays": b"[" * 100 + b'{"runId":"r","blueprintId":"plain","nodeId":"a"}' + b"]" * 100,
    "not UTF-8": b'{"runId": "\xff\xfe"}',
    "a number of 5000 digits": b'{"runId": ' + b"9" * 5000 + b"}",
    "1e999": b'{"runId": "r", "blueprintId": "plain", "nodeId": "a", "iteration": 1e999}',
    "a lone surrogate": b'{"runId": "r\\ud800", "blueprintId": "plain", "nodeId": "a"}',
}


@dataclass
class AppHost:
    """function_app on a local host in this process, over one test's queue, database and Redis."""

    host: DevHost
    session: aiohttp.ClientSession
    services: AzureServices
    created: set[str] = field(default_factory=set)
    # The awaiting run last used per blueprint (hook, approve), so each call set needs one GET to find it.
    awaiting: dict[str, str] = field(default_factory=dict)

    async def call(self, method: str, path: str, *, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request; the answer must be strict JSON (or empty). Run ids of 2xx answers are remembered."""
        async with self.session.request(method, f"{self.host.url}/api/{path}", data=body,
                                        headers={"x-functions-key": KEY, "content-type": "application/json",
                                                 **(headers or {})}) as resp:
            raw = await resp.read()
            answer = strict_json(raw) if raw and resp.content_type == "application/json" else raw.decode("utf-8")
            if resp.status < 300 and isinstance(answer, dict) and isinstance(answer.get("runId"), str):
                self.created.add(answer["runId"])
            return resp.status, answer

    async def post(self, path: str, value: Any) -> tuple[int, Any]:
        return await self.call("POST", path, body=json.dumps(value).encode())

    async def wait_for(self, run_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            status, body = await self.call("GET", f"runs/{run_id}")
            assert status < 500, body
            # 202 while running or awaiting, 200 once ended (the Durable Functions convention).
            return body if status in (200, 202) and body["status"] in statuses else None

        found: dict[str, Any] = await wait_until(reached, timeout=timeout, interval=0.1,
                                                 message=f"run {run_id} {statuses}")
        return found


@pytest.fixture
async def app_host(rel: RelHarness, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AppHost]:
    import function_app

    for name, value in rel.settings_env(FLOWCRAFT_WORKFLOWS="rel_hostile_workflows",
                                        FLOWCRAFT_FUNCTION_KEY=KEY).items():
        monkeypatch.setenv(name, value)
    await function_app.services.close()  # forget settings another test may have cached
    options = HostOptions(queues=QueueOptions(max_dequeue_count=5, visibility_timeout=0, max_polling_interval=0.2))
    host = DevHost(function_app.app, options=options, function_key=KEY, port=0)
    host.functions = [f for f in host.functions if f.kind != "timerTrigger"]
    await host.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield AppHost(host, session, await function_app.services.services())
    finally:
        await host.stop(grace_seconds=5)
        await function_app.services.close()


async def queue_length(client: QueueClient) -> int:
    try:
        return (await client.get_queue_properties()).approximate_message_count
    except ResourceNotFoundError:
        return 0


def errors_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("flowcraft")]


# ------------------------------------------------------------------------------------------ 1: queue
async def test_undecodable_messages_are_poisoned_once_by_the_standalone_worker(
        rel: RelHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcraft")
    worker = await rel.build(hw.registry, hw.blueprints)
    sent = {**{name: b64(raw) for name, raw in NOT_JOBS.items()}, "not base64": "%%% not base64 %%%"}
    async with plain_queue_client(rel.env.queue_connection_string, rel.env.queue_name) as qc, \
            plain_queue_client(rel.env.queue_connection_string, f"{rel.env.queue_name}-poison") as poison:
        for text in sent.values():
            await qc.send_message(text)
        await wait_until(lambda: queue_length(poison), timeout=30, interval=0.2, message="the poison queue")
        await wait_until(lambda: _at_least(poison, len(sent)), timeout=30, interval=0.2, message="all poisoned")
        poisoned = [m.content async for m in poison.receive_messages(messages_per_page=32, max_messages=64)]
        assert sorted(poisoned) == sorted(sent.values())  # each once, exactly as sent
        assert await queue_length(qc) == 0  # nothing left to come back every visibility timeout
    lines = [line for line in errors_of(caplog) if "is not a Flowcraft job" in line]
    assert len(lines) == len(sent), lines  # logged once each, with the reason
    assert any("nested too deeply" in line for line in lines), lines
    assert any("not base64" in line for line in lines) and any("not JSON" in line for line in lines), lines
    assert any("nested deeper than 64" in line for line in lines), lines
    assert not [r for r in caplog.records if r.exc_info], "decoding a message raised"
    good = await worker.adapter.start_run("plain", {})
    assert (await wait_final(worker, good))["status"] == "completed"


async def _at_least(client: QueueClient, count: int) -> bool:
    return await queue_length(client) >= count


async def test_undecodable_messages_through_the_functions_path_end_in_the_poison_function(
        app_host: AppHost, rel: RelHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowcraft")
    queue = rel.env.queue_name
    async with plain_queue_client(rel.env.queue_connection_string, queue) as qc, \
            plain_queue_client(rel.env.queue_connection_string, f"{queue}-poison-poison") as second:
        for raw in NOT_JOBS.values():
            await qc.send_message(b64(raw))  # base64, the host's messageEncoding
        counts = app_host.host.invocation_counts
        await wait_until(lambda: counts["fail_poisoned_job"] >= len(NOT_JOBS), timeout=30, interval=0.1,
                         message="the poison function saw every message")
        # One delivery each on the job queue (no retries), one on the poison queue, nothing further.
        assert counts["run_job"] == len(NOT_JOBS) and counts["fail_poisoned_job"] == len(NOT_JOBS)
        assert await queue_length(qc) == 0 and await queue_length(second) == 0
    failed = [r.getMessage() for r in caplog.records if "(Failed" in r.getMessage()]
    assert not failed, failed
    moved = [line for line in errors_of(caplog) if "is not a Flowcraft job" in line and "moving it" in line]
    dropped = [line for line in errors_of(caplog) if line.startswith("poison message is not a Flowcraft job")]
    assert len(moved) == len(dropped) == len(NOT_JOBS), (moved, dropped)
    assert any("nested too deeply" in line for line in moved), moved
    # The app still works.
    status, body = await app_host.post("runs", {"blueprintId": "plain"})
    assert status == 202, body
    assert (await app_host.wait_for(body["runId"], "completed", "failed"))["status"] == "completed"


# ----------------------------------------------------------------------------- 2-4: bodies and nodes
HOSTILE_BODY_VALUES: dict[str, bytes] = {
    "nested 300 deep": b"[" * 300 + b"1" + b"]" * 300,
    "nested 65 deep": b'{"a":' * 65 + b"1" + b"}" * 65,
    "a lone surrogate": b'"x\\ud800y"',
    "a lone surrogate key": b'{"\\udc00": 1}',
    "1e999": b"1e999",
    "-1e999": b"-1e999",
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "a 5000-digit integer": b"9" * 5000,
    "an integer past 64 bits": b"18446744073709551616",
}


async def test_hostile_start_webhook_and_resume_bodies_are_400_and_store_nothing(
        app_host: AppHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flowcraft")
    hook = (await app_host.post("runs", {"blueprintId": "hook"}))[1]["runId"]
    approve = (await app_host.post("runs", {"blueprintId": "approve"}))[1]["runId"]
    await app_host.wait_for(hook, "awaiting")
    await app_host.wait_for(approve, "awaiting")
    for index, (name, fragment) in enumerate(HOSTILE_BODY_VALUES.items()):
        run_id = f"hostile-{index}"
        start = b'{"blueprintId": "plain", "runId": "%s", "context": {"x": %s}}' % (run_id.encode(), fragment)
        status, body = await app_host.call("POST", "runs", body=start)
        assert status == 400 and body["error"] == "invalid_json", (name, body)
        assert (await app_host.call("GET", f"runs/{run_id}"))[0] == 404, name  # nothing was stored
        status, body = await app_host.call("POST", f"webhooks/{hook}/payment", body=fragment)
        assert status == 400 and body["error"] == "invalid_json", (name, body)
        resume = b'{"action": "go", "output": {"x": %s}}' % fragment
        status, body = await app_host.call("POST", f"runs/{approve}/resume", body=resume)
        assert status == 400 and body["error"] == "invalid_json", (name, body)
    # 1e999 used to be retried as a transient Cosmos error for seconds: nothing hostile reached a store.
    assert not [r for r in caplog.records if r.name == "flowcraft.retry"]
    # Both runs are untouched and still take a good call.
    for run_id, path, value in ((hook, f"webhooks/{hook}/payment", {"paid": True}),
                                (approve, f"runs/{approve}/resume", {"action": "go", "output": 1})):
        status, body = await app_host.post(path, value)
        assert status == 202, body
        assert (await app_host.wait_for(run_id, "completed", "failed"))["status"] == "completed"
    status, body = await app_host.call("POST", f"webhooks/{hook}/payment?action=%ED%A0%80", body=b"{}")
    assert status in (400, 409), body


@pytest.mark.parametrize("kind", ["deep", "surrogate", "surrogate-key", "infinity", "set", "huge-int"])
async def test_a_node_producing_hostile_json_fails_with_the_reason_and_its_run_stays_readable(
        app_host: AppHost, kind: str) -> None:
    for blueprint in ("bad-output", "bad-write"):
        status, body = await app_host.post("runs", {"blueprintId": blueprint, "context": {"kind": kind}})
        assert status == 202, body
        final = await app_host.wait_for(body["runId"], "completed", "failed")
        assert final["status"] == "failed", final
        assert "not JSON-serializable" in final["reason"] and "'bad'" in final["reason"], final
        assert final["result"]["errors"][0]["nodeId"] == "bad"


async def test_an_edge_transform_overflowing_to_infinity_fails_the_node(app_host: AppHost) -> None:
    status, body = await app_host.post("runs", {"blueprintId": "bad-transform"})
    assert status == 202, body
    final = await app_host.wait_for(body["runId"], "completed", "failed")
    assert final["status"] == "failed" and "finite" in final["reason"], final


async def test_a_node_error_quoting_a_lone_surrogate_is_stored_sanitized(app_host: AppHost) -> None:
    status, body = await app_host.post("runs", {"blueprintId": "bad-error"})
    assert status == 202, body
    final = await app_host.wait_for(body["runId"], "completed", "failed")
    assert final["status"] == "failed" and "refused: \ufffd is not text" in final["reason"], final


async def test_a_job_whose_run_cannot_be_failed_stops_looping_after_twice_the_deliveries(
        rel: RelHarness, caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from flowcraft_core.azure.queue import encode_job
    from flowcraft_core.protocols import Job

    worker = await rel.build(hw.registry, hw.blueprints, start=False)
    adapter = worker.adapter

    async def cannot_fail(*args: Any, **kwargs: Any) -> str | None:
        raise RuntimeError("the status store refuses the write")

    adapter.fail_poisoned = cannot_fail  # type: ignore[method-assign]
    text = encode_job(Job("stuck-run", "plain", "a"))
    limit = adapter.worker_options.max_dequeue_count
    async with plain_queue_client(rel.env.queue_connection_string, f"{rel.env.queue_name}-poison") as poison:
        for deliveries in (limit + 1, 2 * limit):  # kept: a later delivery may still fail the run
            await adapter._process(SimpleNamespace(id="m", content=text, dequeue_count=deliveries, pop_receipt="p"))
        assert await queue_length(poison) == 0
        await adapter._process(SimpleNamespace(id="m", content=text, dequeue_count=2 * limit + 1, pop_receipt="p"))
        assert [m.content async for m in poison.receive_messages()] == [text]  # and no longer redelivered


async def test_a_run_stored_with_data_past_the_policy_still_reads(app_host: AppHost) -> None:
    # As an older version (or a hand edit) might have left it: the stand-in stores both.
    store = app_host.services.adapter.status_store
    await store.create("odd-run", "plain", 1_700_000_000.0)
    item = await store.container.read_item("odd-run", partition_key="odd-run")
    item.update({"status": "completed", "result": {"context": {"deep": hw.deep(300), "text": "a\ud800b"},
                                                   "errors": []}})
    await store.container.replace_item("odd-run", item)
    for _ in range(2):  # forever readable, not once
        for path in ("runs?top=50", "view"):
            status, answer = await app_host.call("GET", path)
            assert status == 200, (path, answer)
        # Its history needs the run's records, which this hand-made item lacks: a 404, not a 500.
        assert (await app_host.call("GET", "runs/odd-run/history"))[0] == 404
        status, body = await app_host.call("GET", "runs/odd-run")
        assert status == 200, body
        context = body["result"]["context"]
        assert context["text"] == "a\ufffdb"
        depth, value = 0, context["deep"]
        while isinstance(value, list):
            depth, value = depth + 1, value[0]
        assert value == TRUNCATED and depth > 64  # cut well past what the policy lets in, never before


# ------------------------------------------------------------------------------------ 4: Cosmos retry
async def test_cosmos_refusing_the_content_is_not_retried(rel: RelHarness, caplog: pytest.LogCaptureFixture) -> None:
    from azure.cosmos.exceptions import CosmosHttpResponseError

    caplog.set_level(logging.WARNING, logger="flowcraft.retry")
    worker = await rel.build(hw.registry, hw.blueprints, start=False)
    store = worker.adapter.status_store
    await store.create("inf-run", "plain", 1_700_000_000.0)
    with pytest.raises(CosmosHttpResponseError) as failure:
        await store.set_status("inf-run", "awaiting", extra={"x": math.inf})  # past the policy on purpose
    assert failure.value.status_code == 500 and "not valid JSON" in str(failure.value)
    assert not [r for r in caplog.records if r.name == "flowcraft.retry"], "a content error was retried"


# ------------------------------------------------------------------------------ 5: body encodings
async def test_the_local_host_answers_400_to_a_body_that_is_not_its_declared_encoding(app_host: AppHost) -> None:
    body = b'{"blueprintId": "plain"}'
    status, answer = await app_host.call("POST", "runs", body=body, headers={"content-encoding": "gzip"})
    assert status == 400 and answer["error"] == "invalid_body_encoding", answer
    status, answer = await app_host.call("POST", "runs", body=gzip.compress(body), headers={"content-encoding": "gzip"})
    assert status == 202, answer
    status, answer = await app_host.call("POST", "runs", body=b"\x00\x01", headers={"content-encoding": "deflate"})
    assert status == 400 and answer["error"] == "invalid_body_encoding", answer
    status, answer = await app_host.call("POST", "runs", body=body, headers={"content-encoding": "br"})
    assert status == 415 and answer["error"] == "unsupported_content_encoding", answer


# ------------------------------------------------------------------------------- property: every route
async def send_everywhere(app_host: AppHost, document: bytes) -> None:
    """Send one hostile document to every route (whole, and spliced into each field it could go in)."""
    hook = await _awaiting(app_host, "hook")
    approve = await _awaiting(app_host, "approve")
    calls: list[tuple[str, str, bytes | None]] = [
        ("POST", "runs", document),
        ("POST", "runs", splice({"blueprintId": "plain", "context": {"x": 0}}, ["context", "x"], document)),
        ("POST", "runs", splice({"blueprintId": "plain", "context": {}}, ["context"], document)),
        ("POST", "runs", splice({"blueprintId": "plain"}, ["blueprintId"], document)),
        ("POST", "runs", splice({"blueprintId": "plain", "runId": "r"}, ["runId"], document)),
        ("POST", f"webhooks/{hook}/payment", document),
        ("POST", f"runs/{approve}/resume", splice({"action": "go", "output": 0}, ["output"], document)),
        ("POST", f"runs/{approve}/resume", splice({"action": "go"}, ["action"], document)),
        ("POST", f"runs/{approve}/resume", document),
        ("POST", f"runs/{approve}/cancel", splice({"reason": "r"}, ["reason"], document)),
        ("GET", f"runs/{hook}", None), ("GET", "runs/x%ED%A0%80", None), ("GET", "blueprints/plain", None),
        ("GET", "blueprints/%ED%A0%80", None), ("GET", "blueprints", None), ("GET", "runs?top=50", None),
        ("GET", f"runs/{hook}/history", None), ("GET", "runs/x%ED%A0%80/history", None),
        ("DELETE", "runs/x%ED%A0%80", None), ("GET", "view", None),
    ]
    for method, path, body in calls:
        status, answer = await app_host.call(method, path, body=body)  # strict JSON, or it raises
        assert status < 500, (method, path, (body or b"")[:300], answer)


async def every_run_reads(app_host: AppHost, run_ids: set[str]) -> None:
    """Every one of these runs answers GET with 200 once it has settled (and strict JSON always)."""
    for run_id in sorted(run_ids):
        final = await app_host.wait_for(run_id, "completed", "failed", "cancelled", "awaiting")
        assert final["runId"] == run_id


async def test_every_hostile_fragment_on_every_route_is_a_4xx_or_harmless(app_host: AppHost) -> None:
    for fragment in HOSTILE_FRAGMENTS:
        await send_everywhere(app_host, fragment)
    await every_run_reads(app_host, app_host.created)


@pytest.mark.slow
@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(document=hostile_documents())
async def test_generated_hostile_json_never_yields_a_5xx_nor_an_unreadable_run(
        app_host: AppHost, document: bytes) -> None:
    before = set(app_host.created)
    await send_everywhere(app_host, document)
    await every_run_reads(app_host, app_host.created - before)


async def _awaiting(app_host: AppHost, blueprint: str) -> str:
    """A run of ``blueprint`` that is awaiting (a new one once an earlier call resumed or cancelled it)."""
    known = app_host.awaiting.get(blueprint)
    if known is not None:
        status, body = await app_host.call("GET", f"runs/{known}")
        if status in (200, 202) and body["status"] == "awaiting":
            return known
    status, body = await app_host.post("runs", {"blueprintId": blueprint})
    assert status == 202, body
    await app_host.wait_for(body["runId"], "awaiting")
    app_host.awaiting[blueprint] = str(body["runId"])
    return str(body["runId"])
