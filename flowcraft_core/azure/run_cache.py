"""A worker's cache of the runs it works on, fed by incremental reads of the contexts container.

Every item of a run is written once (records, the header) or only ever made newer (a resumed record is
replaced with a later ``seq``; a stop marker is upserted), so a worker can keep what it has read and ask
Cosmos DB only for what is newer. ``CachedRun`` holds one run: its header, its records by key, the folded
context (kept incrementally: each record is applied once, by commit order per key, never refolded from
every record per job), the stop markers and the watermark of the next read.

The watermark is Cosmos DB's ``_ts`` (seconds since the epoch, set by the service at commit): the next
read asks for ``_ts >= top_ts`` except the item versions already held at exactly ``top_ts`` (by
``_etag``). ``_ts`` only has a one-second resolution, so the read must overlap that second (an item
committed later in the same second has the same ``_ts``); the etag exclusion keeps the overlap from
returning again what the cache holds. This is exact under any consistency level that gives a consistent
prefix (session, the default, and stronger): a read that shows an item shows every item committed before
it, so nothing older than the newest ``_ts`` seen can appear later.

``RunCache`` bounds memory: least recently used runs are evicted once the runs held exceed a byte
budget (estimated from the items' JSON sizes), runs idle for ``idle_seconds`` are dropped, and a run is
dropped when this process saw it end (``drop``). An evicted run is read whole again on its next job.

Pure Python, no Azure SDK: the store (``cosmos.py``) does the reads (one at a time per run, shared by
the jobs that wait for it) and feeds the items in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ..context import output_key
from ..protocols import NodeRecord, RunHeader, RunState

logger = logging.getLogger("flowcraft.cosmos.cache")

_DELETED = object()
# Below the order of every record: initial context keys are overridden by any record that sets them.
_INITIAL = (-1, "")
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_IDLE_SECONDS = 600.0


def item_size(item: dict[str, Any]) -> int:
    """The JSON size of an item, the unit of the cache's byte budget."""
    return len(json.dumps(item, separators=(",", ":")))


class CachedRun:
    """One run as this process has read it so far."""

    def __init__(self, run_id: str, header: RunHeader) -> None:
        self.run_id = run_id
        self.header = header
        self.records: dict[str, NodeRecord] = {}
        self.context: dict[str, Any] = dict(header.initial_context)
        self.cancelled: str | None = None
        self.failed: dict[str, Any] | None = None
        self.completed = False
        # Per context key, the (seq, record key) of the record whose write it holds: a record read out of
        # commit order still lands exactly where folding every record in order would have put it.
        self._writers: dict[str, tuple[int, str]] = {}
        self._etags: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._chunks: dict[str, dict[int, str]] = {}
        self._chunked: dict[str, dict[str, Any]] = {}
        self.top_ts = 0
        self.top_etags: set[str] = set()
        self.size = 0
        self.last_used = 0.0
        # The read of newer items in flight, and the one queued to follow it (see CosmosRunStore.load).
        self.reading: asyncio.Future[None] | None = None
        self.following: asyncio.Future[None] | None = None

    @classmethod
    def from_items(cls, run_id: str, items: list[dict[str, Any]]) -> CachedRun | None:
        """A cache entry from a whole-run read; None when the run has no header (unknown run)."""
        header_item = next((i for i in items if i.get("kind") == "header"), None)
        if header_item is None:
            return None
        header = RunHeader(run_id=run_id, blueprint_id=header_item["blueprintId"],
                           blueprint_version=header_item["blueprintVersion"],
                           created_at=header_item["createdAt"],
                           initial_context=header_item.get("initialContext") or {},
                           parent=header_item.get("parent") or None)
        entry = cls(run_id, header)
        entry.absorb(items)
        return entry

    def state(self) -> RunState:
        """The run as the engine sees it: the cache's records and context, shared, not copied.

        Like the in-memory store's, this view grows while the job runs when other jobs of this process
        read newer items; the engine only ever learns more from that. Nothing may modify it.
        """
        return RunState(header=self.header, context=self.context, records=self.records,
                        cancelled=self.cancelled, failed=self.failed, completed=self.completed)

    def absorb(self, items: Iterable[dict[str, Any]]) -> int:
        """Apply the items of one read (in any order, duplicates allowed); returns how many were new."""
        new = 0
        refold = False
        for item in items:
            etag = str(item.get("_etag", ""))
            ts = int(item.get("_ts", 0))
            if ts > self.top_ts:
                self.top_ts, self.top_etags = ts, {etag}
            elif ts == self.top_ts:
                self.top_etags.add(etag)
            item_id = str(item.get("id"))
            if self._etags.get(item_id) == etag:
                continue  # the same version again (an overlapping or concurrent read)
            kind = item.get("kind")
            if kind == "record":
                if item.get("chunks"):
                    self._etags[item_id] = etag
                    self._chunked[item_id] = item
                    self._account(item_id, item)
                    continue
                outcome = self._add_record(item_id, etag, NodeRecord.from_dict(item["record"]), item)
            elif kind == "chunk":
                self._etags[item_id] = etag
                self._chunks.setdefault(str(item["parent"]), {})[int(item["index"])] = str(item["data"])
                self._account(item_id, item)
                continue
            elif kind == "marker":
                self._etags[item_id] = etag
                if item_id == "cancelled":
                    self.cancelled = str(item.get("reason", "cancelled"))
                elif item_id == "failed":
                    self.failed = {"reason": item.get("reason"), "errors": item.get("errors", [])}
                elif item_id == "completed":
                    self.completed = True
                self._account(item_id, item)
                continue
            else:  # the header (read once), or an item of a kind this version does not know
                self._etags[item_id] = etag
                continue
            new += outcome[0]
            refold = refold or outcome[1]
        for parent_id in list(self._chunked):
            assembled = self._assemble(parent_id)
            if assembled is not None:
                outcome = self._add_record(parent_id, self._etags[parent_id], assembled, None)
                new += outcome[0]
                refold = refold or outcome[1]
        if refold:
            self._refold()
        return new

    def _assemble(self, parent_id: str) -> NodeRecord | None:
        item = self._chunked[parent_id]
        parts = self._chunks.get(parent_id, {})
        count = int(item["chunks"])
        if any(i not in parts for i in range(count)):
            # Chunks are written before their record item, so a consistent read never shows the record
            # without them; until they arrive the record counts as not yet committed.
            logger.warning("run %s: record %s has %d of %d chunks", self.run_id, parent_id, len(parts), count)
            return None
        del self._chunked[parent_id]
        data = "".join(parts[i] for i in range(count))
        for i in range(count):  # the chunks' data now lives in the record
            parts.pop(i, None)
        return NodeRecord.from_dict(json.loads(data))

    def _add_record(self, item_id: str, etag: str, rec: NodeRecord,
                    item: dict[str, Any] | None) -> tuple[int, bool]:
        """Hold a record version; (1 if it is new, True when the context must be refolded)."""
        held = self.records.get(rec.key)
        if held is not None and rec.seq <= held.seq:
            return 0, False  # the version held, or an older one read late by a concurrent read
        self._etags[item_id] = etag
        self.records[rec.key] = rec
        if item is not None:
            self._account(item_id, item)
        if held is not None:
            return 1, True  # a replaced record (a resumed wait): its old writes must go
        self._apply(rec)
        return 1, False

    def _apply(self, rec: NodeRecord) -> None:
        order = (rec.seq, rec.key)
        effects: dict[str, Any] = {key: _DELETED for key in rec.deletes}
        effects.update(rec.changes)
        if rec.status == "completed":
            effects[output_key(rec.node_id)] = rec.output
        writers = self._writers
        context = self.context
        for key, value in effects.items():
            if order > writers.get(key, _INITIAL):
                writers[key] = order
                if value is _DELETED:
                    context.pop(key, None)
                else:
                    context[key] = value

    def _refold(self) -> None:
        # Rare (only when a record is replaced): start from the initial context again. A new dict, so
        # that a job still holding the previous one keeps a consistent snapshot.
        self.context = dict(self.header.initial_context)
        self._writers = {}
        for rec in self.records.values():
            self._apply(rec)

    def _account(self, item_id: str, item: dict[str, Any]) -> None:
        size = item_size(item)
        self.size += size - self._sizes.get(item_id, 0)
        self._sizes[item_id] = size


class RunCache:
    """The runs one process holds, least recently used first; bounded by bytes and idle time."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, idle_seconds: float = DEFAULT_IDLE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._runs: OrderedDict[str, CachedRun] = OrderedDict()
        # Sizes as last accounted (an entry grows while it is fed; resized() settles the difference).
        self._accounted: dict[str, int] = {}
        self.size = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: str) -> CachedRun | None:
        """The run's entry, marked as just used; None when not held."""
        entry = self._runs.get(run_id)
        if entry is not None:
            entry.last_used = self.clock()
            self._runs.move_to_end(run_id)
        return entry

    def put(self, entry: CachedRun) -> CachedRun:
        """Hold an entry (the one already held wins, fed with the new one's items by the caller)."""
        held = self._runs.get(entry.run_id)
        if held is not None:
            return held
        entry.last_used = self.clock()
        self._runs[entry.run_id] = entry
        self._accounted[entry.run_id] = entry.size
        self.size += entry.size
        return entry

    def resized(self, entry: CachedRun) -> None:
        """Account for what an entry grew by since it was last accounted."""
        if self._runs.get(entry.run_id) is entry:
            self.size += entry.size - self._accounted[entry.run_id]
            self._accounted[entry.run_id] = entry.size

    def drop(self, run_id: str) -> None:
        """Forget a run (it ended)."""
        if self._runs.pop(run_id, None) is not None:
            self.size -= self._accounted.pop(run_id)

    def trim(self) -> None:
        """Evict idle runs, then least recently used runs while over the byte budget."""
        now = self.clock()
        while self._runs:
            run_id, entry = next(iter(self._runs.items()))
            if now - entry.last_used < self.idle_seconds:
                break
            self.drop(run_id)
            self.evictions += 1
        while self._runs and self.size > self.max_bytes:
            run_id, entry = next(iter(self._runs.items()))
            self.drop(run_id)
            self.evictions += 1
            logger.info("run cache over %d bytes: evicted run %s (%d bytes)", self.max_bytes, run_id, entry.size)
