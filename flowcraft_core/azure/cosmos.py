"""Run state and run status in Cosmos DB.

Layout of the contexts container (partition key ``/runId``; every item of a run in one partition):

- ``header``: blueprint id and version, creation time, the initial context;
- ``rec.<hash>``: one item per node execution, written once (create; a 409 means another delivery
  already wrote it), holding the node's output, its context changes and its routing decision;
- ``rec.<hash>.<n>``: chunks of a record whose JSON exceeds one item (Cosmos items stop at 2 MB);
- ``cancelled`` / ``failed``: control markers that stop the run's other jobs.

A job reads the run with one single-partition query and folds the records into the context, so a node
costs one read and one write however many keys it touches, and concurrent branches never overwrite each
other (each writes its own item). Each worker process caches the runs it works on (``run_cache.py``):
the first job of a run in a process reads the whole run, every later one only the items committed since
(a ``_ts`` watermark), so the bytes a job reads do not grow with the run. Writes ask for no response
body (``no_response``): the item is not echoed back.

Flowcraft's adapter kept the context in one item that every branch read-modified-wrote without ETags,
losing keys under concurrency and dying at 2 MB.

The statuses container holds ``{id: runId, runId, blueprintId, status, createdAt, lastUpdated,
result?, reason?, awaiting?}``: the item the seed's client polls and the reconciler queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from azure.core import MatchConditions
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from ..errors import RunStateError
from ..protocols import (
    FINAL_STATUSES,
    NodeRecord,
    RunHeader,
    RunPage,
    RunQuery,
    RunState,
    RunStatus,
    change_status,
)
from .retry import RetryPolicy, retry_transient
from .run_cache import CachedRun, RunCache

logger = logging.getLogger("flowcraft.cosmos")

HEADER_ID = "header"
# The runId filter is redundant with partition_key for Cosmos DB, but the local stand-in requires it.
_RUN_QUERY = "SELECT * FROM c WHERE c.runId = @runId"
# What is newer than a cache entry's watermark: _ts has a one-second resolution, so the watermark's own
# second is read again, minus the item versions already held from it (see run_cache.py).
_NEWER_QUERY = ("SELECT * FROM c WHERE c.runId = @runId AND c._ts >= @ts "
                "AND NOT ARRAY_CONTAINS(@seen, c._etag)")
# Leaves room under the 2 MB item limit for the envelope and Cosmos's own properties.
MAX_ITEM_PAYLOAD = 1_500_000


class RequestCounter:
    """Counts requests per operation kind; benchmarks and budget tests read it."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, kind: str, n: int = 1) -> None:
        """Count n requests of a kind."""
        self.counts[kind] = self.counts.get(kind, 0) + n

    @property
    def total(self) -> int:
        """All requests counted."""
        return sum(self.counts.values())

    def reset(self) -> None:
        """Start counting from zero."""
        self.counts.clear()


def record_item_id(key: str) -> str:
    """A Cosmos-safe item id for an execution key (node ids may hold / # ? and be long)."""
    return "rec." + hashlib.sha256(key.encode()).hexdigest()[:32]


def _container(client: CosmosClient, database: str, container: str) -> ContainerProxy:
    return client.get_database_client(database).get_container_client(container)


class CosmosRunStore:
    """RunStore over the contexts container."""

    # Transient Cosmos failures are retried per method (see retry.py); None means the default policy.
    retry_policy: RetryPolicy | None = None

    def __init__(self, container: ContainerProxy, counter: RequestCounter | None = None, *,
                 cache: RunCache | None = None, page_size: int | None = None) -> None:
        self.container = container
        self.counter = counter or RequestCounter()
        # Each store (so each worker process) has its own cache; see run_cache.py.
        self.cache = cache if cache is not None else RunCache()
        # Items per query page (None: the service's default); tests force small pages with it.
        self.page_size = page_size
        # Items returned by the load queries, for tests and benchmarks.
        self.items_read = 0

    @classmethod
    def from_client(cls, client: CosmosClient, database: str, container: str,
                    counter: RequestCounter | None = None, *, cache: RunCache | None = None) -> CosmosRunStore:
        """Build from a client and names."""
        return cls(_container(client, database, container), counter, cache=cache)

    @retry_transient("cosmos.create_run")
    async def create_run(self, header: RunHeader) -> None:
        """Create the run's header item; RunStateError when the run id is taken."""
        body = {"id": HEADER_ID, "runId": header.run_id, "kind": "header", "blueprintId": header.blueprint_id,
                "blueprintVersion": header.blueprint_version, "createdAt": header.created_at,
                "initialContext": header.initial_context}
        if header.parent:
            body["parent"] = header.parent
        self.counter.add("create")
        try:
            await self.container.create_item(body, no_response=True)
        except CosmosResourceExistsError:
            raise RunStateError(f"run {header.run_id!r} already exists") from None

    @retry_transient("cosmos.load")
    async def load(self, run_id: str) -> RunState | None:
        """The run: read whole on first sight, then only the items newer than this process holds.

        The first load of a run in this process reads every item of the run (one single-partition
        query, all its pages); later loads ask only for items committed since (see run_cache.py), so a
        job reads the few records written since the previous job of the run, however large the run.
        """
        entry = self.cache.get(run_id)
        if entry is None:
            items = await self._query(run_id, _RUN_QUERY, [{"name": "@runId", "value": run_id}])
            fresh = CachedRun.from_items(run_id, items)
            if fresh is None:
                return None
            entry = self.cache.put(fresh)
            if entry is not fresh:  # a concurrent first load of the same run got there first
                entry.absorb(items)
        else:
            await self._refresh(run_id, entry)
        state = entry.state()
        self.cache.resized(entry)
        self.cache.trim()
        return state

    async def _refresh(self, run_id: str, entry: CachedRun) -> None:
        """Bring the entry up to date with a read sent after this call began, shared with other jobs.

        Concurrent jobs of one run would each send the same read and receive the same new items. A read
        already in flight may have been sent before what this job must see was committed, so a job that
        finds one waits for the next read instead: it starts when the current one ends and serves every
        job that queued for it. Either way the read this job gets was sent after it asked.
        """
        current = entry.reading
        if current is None or current.done():
            task = asyncio.ensure_future(self._read_newer(run_id, entry))
            entry.reading = task
            await asyncio.shield(task)
            return
        follow = entry.following
        if follow is None or follow.done():
            follow = asyncio.ensure_future(self._read_after(run_id, entry, current))
            entry.following = follow
        await asyncio.shield(follow)

    async def _read_after(self, run_id: str, entry: CachedRun, current: asyncio.Future[None]) -> None:
        with contextlib.suppress(Exception):  # its own waiters see its error; this read is a new one
            await current
        task = asyncio.ensure_future(self._read_newer(run_id, entry))
        entry.reading = task
        entry.following = None
        await task

    async def _read_newer(self, run_id: str, entry: CachedRun) -> None:
        items = await self._query(run_id, _NEWER_QUERY, [
            {"name": "@runId", "value": run_id}, {"name": "@ts", "value": entry.top_ts},
            {"name": "@seen", "value": sorted(entry.top_etags)}])
        entry.absorb(items)

    def forget(self, run_id: str) -> None:
        """Drop the run from this process's cache (it ended here)."""
        self.cache.drop(run_id)

    async def _query(self, run_id: str, query: str, parameters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every item a single-partition query returns, following continuation tokens page by page."""
        items: list[dict[str, Any]] = []
        self.counter.add("query")
        pages = self.container.query_items(query, parameters=parameters, partition_key=run_id,
                                           max_item_count=self.page_size).by_page()
        first = True
        async for page in pages:
            if not first:
                self.counter.add("query")
            first = False
            async for item in page:
                items.append(item)
        self.items_read += len(items)
        return items

    def _items_for(self, run_id: str, record: NodeRecord) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        item_id = record_item_id(record.key)
        payload = record.to_dict()
        data = json.dumps(payload, separators=(",", ":"))
        base = {"id": item_id, "runId": run_id, "kind": "record", "key": record.key, "nodeId": record.node_id,
                "status": record.status}
        if len(data) <= MAX_ITEM_PAYLOAD:
            return {**base, "record": payload}, []
        parts = [data[i:i + MAX_ITEM_PAYLOAD] for i in range(0, len(data), MAX_ITEM_PAYLOAD)]
        chunk_items = [{"id": f"{item_id}.{i}", "runId": run_id, "kind": "chunk", "parent": item_id, "index": i,
                        "data": part} for i, part in enumerate(parts)]
        return {**base, "chunks": len(parts)}, chunk_items

    @retry_transient("cosmos.commit")
    async def commit(self, run_id: str, record: NodeRecord) -> tuple[NodeRecord, bool]:
        """Create the record's item (after its chunks, if any); on conflict return the stored one."""
        record.seq = time.time_ns()
        item, chunk_items = self._items_for(run_id, record)
        for chunk in chunk_items:
            self.counter.add("upsert")
            await self.container.upsert_item(chunk, no_response=True)
        self.counter.add("create")
        try:
            await self.container.create_item(item, no_response=True)
            return record, True
        except CosmosResourceExistsError:
            stored = await self._read_record(run_id, record.key)
            if stored is None:  # pragma: no cover - a conflict on an item that then vanished
                raise
            return stored, False

    async def _read_record(self, run_id: str, key: str) -> NodeRecord | None:
        item_id = record_item_id(key)
        self.counter.add("read")
        try:
            item = await self.container.read_item(item_id, partition_key=run_id)
        except CosmosResourceNotFoundError:
            return None
        if item.get("chunks"):
            parts = []
            for i in range(int(item["chunks"])):
                self.counter.add("read")
                chunk = await self.container.read_item(f"{item_id}.{i}", partition_key=run_id)
                parts.append(chunk["data"])
            return NodeRecord.from_dict(json.loads("".join(parts)))
        return NodeRecord.from_dict(item["record"])

    @retry_transient("cosmos.replace")
    async def replace(self, run_id: str, record: NodeRecord, *, expected_status: str) -> bool:
        """Overwrite a record guarded by its ETag while its status is expected_status."""
        item_id = record_item_id(record.key)
        self.counter.add("read")
        try:
            current = await self.container.read_item(item_id, partition_key=run_id)
        except CosmosResourceNotFoundError:
            return False
        if current.get("status") != expected_status:
            return False
        record.seq = time.time_ns()
        item, chunk_items = self._items_for(run_id, record)
        for chunk in chunk_items:
            self.counter.add("upsert")
            await self.container.upsert_item(chunk, no_response=True)
        self.counter.add("replace")
        try:
            await self.container.replace_item(item_id, item, etag=current["_etag"],
                                              match_condition=MatchConditions.IfNotModified, no_response=True)
        except CosmosAccessConditionFailedError:
            return False
        return True

    @retry_transient("cosmos.mark")
    async def mark(self, run_id: str, marker: Literal["cancelled", "failed", "completed"],
                   data: dict[str, Any]) -> None:
        """Write a control marker item (idempotent upsert)."""
        self.counter.add("upsert")
        await self.container.upsert_item({"id": marker, "runId": run_id, "kind": "marker", **data},
                                         no_response=True)

    @retry_transient("cosmos.delete_run")
    async def delete_run(self, run_id: str) -> int:
        """Delete every item of the run's partition (header, records, chunks, markers); returns how many."""
        self.cache.drop(run_id)
        self.counter.add("query")
        # Ids first, deletes after: the query's pages are not read while the partition changes under them.
        ids = [item["id"] async for item in self.container.query_items(
            "SELECT c.id FROM c WHERE c.runId = @runId", parameters=[{"name": "@runId", "value": run_id}],
            partition_key=run_id)]
        deleted = 0
        for item_id in ids:
            self.counter.add("delete")
            try:
                await self.container.delete_item(item_id, partition_key=run_id)
                deleted += 1
            except CosmosResourceNotFoundError:
                # A concurrent purge (or this one's retry) got there first.
                continue
        return deleted


class CosmosStatusStore:
    """StatusStore over the statuses container: one item per run, id = runId."""

    retry_policy: RetryPolicy | None = None

    def __init__(self, container: ContainerProxy, counter: RequestCounter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.container = container
        self.counter = counter or RequestCounter()
        self.clock = clock

    @classmethod
    def from_client(cls, client: CosmosClient, database: str, container: str,
                    counter: RequestCounter | None = None) -> CosmosStatusStore:
        """Build from a client and names."""
        return cls(_container(client, database, container), counter)

    @retry_transient("cosmos.create_status")
    async def create(self, run_id: str, blueprint_id: str, created_at: float, *,
                     extra: dict[str, Any] | None = None) -> None:
        """Create the running status item; RunStateError when it exists."""
        self.counter.add("create")
        try:
            await self.container.create_item({"id": run_id, "runId": run_id, "blueprintId": blueprint_id,
                                              "status": "running", "createdAt": created_at,
                                              "lastUpdated": created_at, **(extra or {})})
        except CosmosResourceExistsError:
            raise RunStateError(f"run {run_id!r} already exists") from None

    @retry_transient("cosmos.get_status")
    async def get(self, run_id: str) -> dict[str, Any] | None:
        """Point-read the status item."""
        return await self._read(run_id)

    async def _read(self, run_id: str) -> dict[str, Any] | None:
        self.counter.add("read")
        try:
            item: dict[str, Any] = await self.container.read_item(run_id, partition_key=run_id)
        except CosmosResourceNotFoundError:
            return None
        return item

    @retry_transient("cosmos.touch")
    async def touch(self, run_id: str) -> None:
        """Patch lastUpdated only (a partial update, not a rewrite of the item)."""
        self.counter.add("patch")
        try:
            await self.container.patch_item(run_id, partition_key=run_id, patch_operations=[
                {"op": "set", "path": "/lastUpdated", "value": self.clock()}])
        except CosmosResourceNotFoundError:
            logger.warning("touch: run %s has no status item", run_id)

    async def _conditional_update(self, run_id: str, change: Callable[[dict[str, Any]], bool]) -> bool:
        # Read, change, replace with If-Match; another writer in between makes us read again.
        for _ in range(10):
            item = await self._read(run_id)
            if item is None:
                return False
            if not change(item):
                return False
            self.counter.add("replace")
            try:
                await self.container.replace_item(run_id, _strip_system(item), etag=item["_etag"],
                                                  match_condition=MatchConditions.IfNotModified)
                return True
            except CosmosAccessConditionFailedError:
                continue
        raise RunStateError(f"status item of run {run_id!r} kept changing under us")

    @retry_transient("cosmos.set_status")
    async def set_status(self, run_id: str, status: RunStatus, *, reason: str | None = None,
                         extra: dict[str, Any] | None = None) -> bool:
        """Set running/awaiting unless the run is final."""
        return await self._conditional_update(run_id, lambda item: change_status(
            item, status, self.clock(), final=False, reason=reason, extra=extra))

    @retry_transient("cosmos.finalize")
    async def finalize(self, run_id: str, status: RunStatus, *, result: dict[str, Any] | None = None,
                       reason: str | None = None) -> bool:
        """Write the final status once, guarded by the item's ETag."""
        return await self._conditional_update(run_id, lambda item: change_status(
            item, status, self.clock(), final=True, result=result, reason=reason))

    @retry_transient("cosmos.list_stalled")
    async def list_stalled(self, older_than: float, limit: int = 100) -> list[str]:
        """Running runs whose lastUpdated is older than the given epoch seconds (cross-partition query)."""
        self.counter.add("query")
        query = ("SELECT c.id FROM c WHERE c.status = 'running' AND c.lastUpdated < @threshold")
        ids: list[str] = []
        async for item in self.container.query_items(query, parameters=[
                {"name": "@threshold", "value": older_than}]):
            ids.append(item["id"])
            if len(ids) >= limit:
                break
        return ids


    # ------------------------------------------------------------------ listing and purge (issue 12)
    @retry_transient("cosmos.list_runs")
    async def list_runs(self, query: RunQuery, top: int, continuation: str | None = None) -> RunPage:
        """One page of matching status items, newest first, riding on the query's Cosmos continuation.

        ORDER BY createdAt DESC makes the continuation resume after the last item's sort value, so runs
        created while a client pages sort before it and never shift later pages (no duplicate, no gap).
        A continuation Cosmos refuses raises ValueError.
        """
        sql, parameters = list_runs_query(query)
        # by_page is typed as a plain async iterator; the pager it returns also holds continuation_token.
        # The token travels in a URL query string: ask Cosmos to keep it small (in KB).
        pages: Any = self.container.query_items(sql, parameters=parameters, max_item_count=top,
                                                continuation_token_limit=4).by_page(continuation)
        # Cosmos may answer a page with no items but a continuation (a partition with no match): go on,
        # a bounded number of times, rather than hand the client an empty page.
        for _ in range(16):
            self.counter.add("query")
            try:
                page = await pages.__anext__()
                items = [item async for item in page]
            except StopAsyncIteration:
                return RunPage([], None)
            except CosmosHttpResponseError as exc:
                if continuation is not None and exc.status_code == 400:
                    raise ValueError(f"Cosmos DB refused the continuation: {exc.message}") from None
                raise
            token = pages.continuation_token
            if items or token is None:
                return RunPage(items[:top], token)
        return RunPage([], token)

    @retry_transient("cosmos.delete_status")
    async def delete(self, run_id: str) -> bool:
        """Delete the status item; False when it was already gone (purges are idempotent)."""
        self.counter.add("delete")
        try:
            await self.container.delete_item(run_id, partition_key=run_id)
        except CosmosResourceNotFoundError:
            return False
        return True


_LIST_FIELDS = "c.id, c.runId, c.blueprintId, c.status, c.createdAt, c.lastUpdated"


def list_runs_query(query: RunQuery) -> tuple[str, list[dict[str, Any]]]:
    """The SQL and parameters of a run listing (parameters only: no value is ever spliced into SQL)."""
    where: list[str] = []
    parameters: list[dict[str, Any]] = []

    def param(value: Any) -> str:
        name = f"@p{len(parameters)}"
        parameters.append({"name": name, "value": value})
        return name

    if query.statuses:
        where.append(f"c.status IN ({', '.join(param(s) for s in query.statuses)})")
    if query.blueprint_id is not None:
        where.append(f"c.blueprintId = {param(query.blueprint_id)}")
    if query.created_from is not None:
        where.append(f"c.createdAt >= {param(query.created_from)}")
    if query.created_to is not None:
        where.append(f"c.createdAt < {param(query.created_to)}")
    if query.ended_before is not None:
        where.append(f"c.status IN ({', '.join(param(s) for s in sorted(FINAL_STATUSES))})")
        where.append(f"c.lastUpdated < {param(query.ended_before)}")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    # Only fixed fragments and @parameter names are joined; every value travels as a parameter.
    return f"SELECT {_LIST_FIELDS} FROM c{clause} ORDER BY c.createdAt DESC", parameters  # noqa: S608


def _strip_system(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


class CosmosDbContext:
    """Flowcraft's context interface over a run stored in Cosmos DB (read/write outside a node).

    Writes go through the same record mechanism as nodes (one item per write), so they never race
    with running branches.
    """

    def __init__(self, run_id: str, *, cosmos_client: CosmosClient, database_name: str = "flowcraftDb",
                 container_name: str = "contexts") -> None:
        self.run_id = run_id
        self.store = CosmosRunStore.from_client(cosmos_client, database_name, container_name)

    async def to_dict(self) -> dict[str, Any]:
        """The run's whole context."""
        state = await self.store.load(self.run_id)
        if state is None:
            raise RunStateError(f"run {self.run_id!r} does not exist")
        return state.context

    to_json = to_dict

    async def get(self, key: str, default: Any = None) -> Any:
        """Read a key."""
        return (await self.to_dict()).get(key, default)

    async def has(self, key: str) -> bool:
        """True when the key is present."""
        return key in await self.to_dict()

    async def set(self, key: str, value: Any) -> None:
        """Write a key as an external change record."""
        await self._write({key: value}, [])

    async def delete(self, key: str) -> None:
        """Remove a key."""
        await self._write({}, [key])

    async def _write(self, changes: dict[str, Any], deletes: list[str]) -> None:
        import uuid

        # External writes are change records of no node: they fold into the context and never route.
        record = NodeRecord(node_id=f"__external__.{uuid.uuid4().hex}", status="external", changes=changes,
                            deletes=deletes)
        await self.store.commit(self.run_id, record)
