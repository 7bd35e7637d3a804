"""Operating runs on the emulators: list (filters, paging), purge, retention, 202 polling and history.

Requests go through ``http_api.handle`` exactly as function_app hands them over; the services are the
production wiring on Azurite, the Cosmos DB stand-in and Redis, with the adapter's worker running jobs.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from harness import Distributed, blueprint
from helpers import bp, wait_until

from flowcraft_core import http_api
from flowcraft_core.azure.services import AzureServices, run_retention
from flowcraft_core.nodes import NodeContext, NodeResult
from flowcraft_core.protocols import RunQuery

BASE = "http://localhost:7071/api"


async def echo(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=ctx.params.get("value", ctx.node_id))


async def boom(ctx: NodeContext) -> NodeResult:
    raise RuntimeError("boom")


REGISTRY: dict[str, Any] = {"echo": echo, "boom": boom}
BLUEPRINTS = {b["id"]: blueprint(b) for b in [
    # A fan-out and a join, so the run leaves gate keys in Redis.
    bp([{"id": "a", "uses": "echo"}, {"id": "b", "uses": "echo"}, {"id": "c", "uses": "echo"},
        {"id": "d", "uses": "echo", "config": {"joinStrategy": "all"}}],
       [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], bp_id="diamond"),
    bp([{"id": "a", "uses": "echo"}, {"id": "bad", "uses": "boom", "config": {"maxRetries": 2}}], [("a", "bad")],
       bp_id="failing"),
    bp([{"id": "draft", "uses": "echo"}, {"id": "approval", "uses": "wait"}, {"id": "done", "uses": "echo"}],
       [("draft", "approval"), ("approval", "done")], bp_id="approval"),
]}


class Context:
    """An ApiContext over services built on the emulators."""

    def __init__(self, services: AzureServices) -> None:
        self._services = services
        self.settings = services.settings

    async def services(self) -> AzureServices:
        return self._services


async def call(services: AzureServices, operation: str, path: str, *, method: str = "GET",
               query: list[tuple[str, str]] | None = None, body: Any = None,
               **route: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    url = f"{BASE}/{path}" + (f"?{urlencode(query)}" if query else "")
    request = http_api.ApiRequest.build(method, url, headers={"content-type": "application/json"},
                                        params=dict(query or []), route_params=route,
                                        body=b"" if body is None else json.dumps(body).encode())
    status, raw, headers = http_api.render(await http_api.handle(operation, request, Context(services)))
    return status, json.loads(raw), headers


async def start(services: AzureServices, blueprint_id: str) -> str:
    status, body, _ = await call(services, "startRun", "runs", method="POST", body={"blueprintId": blueprint_id})
    assert status == 202, body
    return str(body["runId"])


async def ended(services: AzureServices, run_id: str) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        item = await services.adapter.get_status(run_id)
        return item if item and item["status"] in ("completed", "failed", "cancelled") else None
    return await wait_until(final, timeout=30, message=f"run {run_id} ends")


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


async def list_ids(services: AzureServices, query: list[tuple[str, str]]) -> list[str]:
    status, body, _ = await call(services, "listRuns", "runs", query=query)
    assert status == 200, body
    return [r["runId"] for r in body["runs"]]


async def test_list_filters_by_status_blueprint_and_creation_time(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS)
    done = [await start(services, "diamond") for _ in range(2)]
    failed = await start(services, "failing")
    for run_id in [*done, failed]:
        await ended(services, run_id)
    middle = time.time()
    waiting = await start(services, "approval")
    await wait_until(lambda: _status_is(services, waiting, "awaiting"), timeout=30, message="run awaits")

    assert await list_ids(services, [("status", "failed")]) == [failed]
    assert set(await list_ids(services, [("status", "completed,failed")])) == {*done, failed}
    assert set(await list_ids(services, [("status", "completed"), ("status", "awaiting")])) == {*done, waiting}
    assert set(await list_ids(services, [("blueprintId", "diamond")])) == set(done)
    assert await list_ids(services, [("createdFrom", iso(middle))]) == [waiting]
    assert set(await list_ids(services, [("createdTo", iso(middle))])) == {*done, failed}
    # Newest first; every documented field, timestamps as ISO strings.
    status, body, _ = await call(services, "listRuns", "runs")
    assert [r["runId"] for r in body["runs"]] == [waiting, failed, *reversed(done)]
    assert body["continuationToken"] is None
    entry = body["runs"][0]
    assert set(entry) == {"runId", "blueprintId", "status", "createdAt", "lastUpdated"}
    assert entry["blueprintId"] == "approval" and entry["status"] == "awaiting" and entry["createdAt"].endswith("Z")

    for query, code in [([("status", "done")], "invalid_query"), ([("top", "0")], "invalid_query"),
                        ([("top", "1001")], "invalid_query"), ([("createdFrom", "yesterday")], "invalid_query"),
                        ([("continuationToken", "not-a-token")], "invalid_continuation_token")]:
        status, body, _ = await call(services, "listRuns", "runs", query=query)
        assert (status, body["error"]) == (400, code), query


async def _status_is(services: AzureServices, run_id: str, status: str) -> bool:
    item = await services.adapter.get_status(run_id)
    return item is not None and item["status"] == status


async def test_paging_has_no_duplicate_and_no_gap_while_runs_start(distributed: Distributed) -> None:
    # No worker: the runs stay "running", which is all a listing needs.
    services = await distributed.build(REGISTRY, BLUEPRINTS, start=False)
    before = [await start(services, "diamond") for _ in range(7)]
    seen: list[str] = []
    started_meanwhile: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        query = [("top", "2"), ("status", "running")] + ([("continuationToken", token)] if token else [])
        status, body, _ = await call(services, "listRuns", "runs", query=query)
        assert status == 200, body
        assert len(body["runs"]) <= 2
        seen += [r["runId"] for r in body["runs"]]
        pages += 1
        token = body["continuationToken"]
        if token is None:
            break
        started_meanwhile.append(await start(services, "diamond"))
        # A token is bound to its filters: reusing it for another listing is refused, not misapplied.
        status, body, _ = await call(services, "listRuns", "runs", query=[("top", "2"), ("continuationToken", token)])
        assert (status, body["error"]) == (400, "invalid_continuation_token")
    assert pages >= 3
    assert len(seen) == len(set(seen)), "a run was listed twice"
    assert seen == list(reversed(before)), "paging lost or reordered runs that existed when it began"
    assert not set(seen) & set(started_meanwhile)
    # A fresh listing shows the runs started meanwhile first.
    assert (await list_ids(services, [("top", "3")])) == list(reversed(started_meanwhile))[:3]


async def test_store_pages_ride_on_the_cosmos_continuation(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS, start=False)
    runs = [await start(services, "diamond") for _ in range(5)]
    store = services.adapter.status_store
    first = await store.list_runs(RunQuery(), 2)
    assert first.continuation is not None and [i["runId"] for i in first.items] == runs[:-3:-1]
    newer = await start(services, "diamond")
    second = await store.list_runs(RunQuery(), 2, first.continuation)
    third = await store.list_runs(RunQuery(), 2, second.continuation)
    assert [i["runId"] for i in second.items + third.items] == list(reversed(runs[:3]))
    assert third.continuation is None and newer not in [i["runId"] for i in second.items + third.items]


async def _run_keys(services: AzureServices, run_id: str) -> list[str]:
    return [str(k) async for k in services.redis.scan_iter(match=f"*{{{run_id}}}*")]


async def _cosmos_items(services: AzureServices, run_id: str) -> list[dict[str, Any]]:
    database = services.cosmos_client.get_database_client(services.settings.cosmos_database)
    items = []
    for name in (services.settings.cosmos_context_container, services.settings.cosmos_status_container):
        container = database.get_container_client(name)
        items += [item async for item in container.query_items(
            "SELECT * FROM c WHERE c.runId = @r", parameters=[{"name": "@r", "value": run_id}], partition_key=run_id)]
    return items


async def test_purge_removes_every_trace_of_an_ended_run(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS)
    run_id = await start(services, "diamond")
    other = await start(services, "diamond")
    await ended(services, run_id)
    await ended(services, other)
    # Leave a key the run's own cleanup does not list (a join claim with a TTL), as a crash might.
    await services.redis.set(f"flowcraft:{{{run_id}}}:claim:d", "token", ex=600)
    before = await _cosmos_items(services, run_id)
    assert len(before) >= 6  # header, four records, status

    status, body, _ = await call(services, "purgeRun", "runs/{runId}", method="DELETE", runId=run_id)
    assert (status, body) == (200, {"runId": run_id, "purged": True, "items": len(before)})
    assert await _cosmos_items(services, run_id) == []
    assert await _run_keys(services, run_id) == []
    # The other run is untouched.
    assert len(await _cosmos_items(services, other)) == len(before)
    for operation, path in [("getRun", "runs/{runId}"), ("getRunHistory", "runs/{runId}/history"),
                            ("purgeRun", "runs/{runId}")]:
        method = "DELETE" if operation == "purgeRun" else "GET"
        status, body, _ = await call(services, operation, path, method=method, runId=run_id)
        assert (status, body["error"]) == (404, "run_not_found"), operation
    assert run_id not in await list_ids(services, [])


async def test_purge_of_a_run_that_has_not_ended_is_a_conflict(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS)
    run_id = await start(services, "approval")
    await wait_until(lambda: _status_is(services, run_id, "awaiting"), timeout=30, message="run awaits")
    status, body, _ = await call(services, "purgeRun", "runs/{runId}", method="DELETE", runId=run_id)
    assert (status, body["error"]) == (409, "run_state_conflict")
    assert len(await _cosmos_items(services, run_id)) >= 3


async def test_retention_purges_old_ended_runs_in_bounded_pages(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS, FLOWCRAFT_RETENTION_DAYS="1")
    old = [await start(services, "diamond") for _ in range(3)]
    for run_id in old:
        await ended(services, run_id)
    waiting = await start(services, "approval")
    await wait_until(lambda: _status_is(services, waiting, "awaiting"), timeout=30, message="run awaits")
    later = time.time() + 2 * 86_400  # two days from now, every ended run is past retention

    assert (await run_retention(services, now=time.time())).runs == 0  # nothing is a day old yet
    first = await run_retention(services, now=later, page_size=2, max_pages=1)
    assert first is not None and first.runs == 2
    second = await run_retention(services, now=later, page_size=2, max_pages=1)
    assert second is not None and second.runs == 1
    again = await run_retention(services, now=later)
    assert again is not None and again.runs == 0  # idempotent
    for run_id in old:
        assert await _cosmos_items(services, run_id) == []
    assert await list_ids(services, []) == [waiting]  # a run that has not ended is kept whatever its age


async def test_retention_is_off_unless_configured(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS)
    assert await run_retention(services, now=time.time() + 10 ** 9) is None


async def test_status_is_202_with_retry_after_until_the_run_ended(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS)
    status, accepted, headers = await call(services, "startRun", "runs", method="POST",
                                           body={"blueprintId": "approval"})
    run_id = accepted["runId"]
    url = f"{BASE}/runs/{quote(run_id)}"
    assert status == 202 and headers["Location"] == url == accepted["statusUrl"]
    assert accepted["cancelUrl"] == f"{url}/cancel" and accepted["resumeUrl"] == f"{url}/resume"
    assert accepted["purgeUrl"] == url and accepted["historyUrl"] == f"{url}/history"

    await wait_until(lambda: _status_is(services, run_id, "awaiting"), timeout=30, message="run awaits")
    status, body, headers = await call(services, "getRun", "runs/{runId}", runId=run_id)
    assert status == 202 and int(headers["Retry-After"]) >= 1 and headers["Location"] == url
    assert body["status"] == "awaiting" and body["awaiting"] == ["approval"]

    status, _, _ = await call(services, "resumeRun", "runs/{runId}/resume", method="POST",
                              body={"action": "approve"}, runId=run_id)
    assert status == 202
    await ended(services, run_id)
    status, body, headers = await call(services, "getRun", "runs/{runId}", runId=run_id)
    assert status == 200 and "Retry-After" not in headers
    assert body["status"] == "completed" and body["result"]["context"]["_outputs.done"] == "done"


async def test_history_lists_each_execution_with_consistent_timings(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS)
    run_id = await start(services, "diamond")
    failing = await start(services, "failing")
    await ended(services, run_id)
    await ended(services, failing)

    status, body, _ = await call(services, "getRunHistory", "runs/{runId}/history", runId=run_id)
    assert status == 200 and body["runId"] == run_id
    nodes = body["nodes"]
    assert sorted(n["nodeId"] for n in nodes) == ["a", "b", "c", "d"]  # one entry per execution
    assert nodes[0]["nodeId"] == "a" and nodes[-1]["nodeId"] == "d"  # commit order
    for node in nodes:
        assert node["status"] == "completed" and node["attempts"] == 1 and node["iteration"] == 0
        assert node["startedAt"] <= node["finishedAt"]
        assert node["durationMs"] == node["finishedAt"] - node["startedAt"]
        assert "error" not in node
    # A successor starts after its predecessor finished.
    by_id = {n["nodeId"]: n for n in nodes}
    assert by_id["a"]["finishedAt"] <= by_id["b"]["startedAt"]
    assert max(by_id["b"]["finishedAt"], by_id["c"]["finishedAt"]) <= by_id["d"]["startedAt"]

    status, body, _ = await call(services, "getRunHistory", "runs/{runId}/history", runId=failing)
    bad = body["nodes"][-1]
    assert bad["nodeId"] == "bad" and bad["status"] == "failed" and bad["attempts"] == 2
    assert "boom" in bad["error"]["message"]

    status, body, _ = await call(services, "getRunHistory", "runs/{runId}/history", runId="no-such-run")
    assert (status, body["error"]) == (404, "run_not_found")


async def test_many_pages_while_runs_start_concurrently(distributed: Distributed) -> None:
    services = await distributed.build(REGISTRY, BLUEPRINTS, start=False)
    before = set(await asyncio.gather(*(start(services, "diamond") for _ in range(9))))
    starting = asyncio.gather(*(start(services, "failing") for _ in range(6)))
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while pages == 0 or token:
        query = [("top", "3"), ("blueprintId", "diamond")] + ([("continuationToken", token)] if token else [])
        status, body, _ = await call(services, "listRuns", "runs", query=query)
        assert status == 200, body
        seen += [r["runId"] for r in body["runs"]]
        token, pages = body["continuationToken"], pages + 1
    await starting
    assert pages >= 3 and sorted(seen) == sorted(before)
