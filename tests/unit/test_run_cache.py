"""The worker's run cache folds records read in any order, in any batches, into exactly the context that
folding every record in commit order gives; it tracks the read watermark and stays within its budget."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from flowcraft_core.azure.cosmos import record_item_id
from flowcraft_core.azure.run_cache import CachedRun, RunCache
from flowcraft_core.protocols import NodeRecord, Route, fold_context

RUN = "run-1"


def header_item(initial: dict[str, Any] | None = None, ts: int = 100) -> dict[str, Any]:
    return {"id": "header", "runId": RUN, "kind": "header", "blueprintId": "bp", "blueprintVersion": "v1",
            "createdAt": 1.0, "initialContext": initial or {}, "_ts": ts, "_etag": uuid.uuid4().hex}


def record_item(rec: NodeRecord, ts: int = 100) -> dict[str, Any]:
    return {"id": record_item_id(rec.key), "runId": RUN, "kind": "record", "key": rec.key,
            "nodeId": rec.node_id, "status": rec.status, "record": rec.to_dict(), "_ts": ts,
            "_etag": uuid.uuid4().hex}


def random_records(rng: random.Random, n: int) -> list[NodeRecord]:
    keys = [f"k{i}" for i in range(6)]
    records = []
    for i in range(n):
        changes = {k: rng.randint(0, 99) for k in rng.sample(keys, rng.randint(0, 3))}
        deletes = [k for k in rng.sample(keys, rng.randint(0, 2)) if k not in changes]
        status = rng.choice(["completed", "completed", "external", "awaiting"])
        records.append(NodeRecord(node_id=f"n{i % 7}", iteration=i // 7, status=status, output=i,
                                  changes=changes, deletes=deletes, seq=rng.randint(1, 10_000) * 10 + i % 10))
    return records


def test_records_in_any_order_and_batches_fold_like_commit_order() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        initial = {"k0": "start", "k5": "start"}
        records = random_records(rng, rng.randint(1, 25))
        items = [record_item(r, ts=100 + i // 4) for i, r in enumerate(records)]
        shuffled = items + rng.sample(items, len(items) // 3)  # duplicates, as concurrent reads return
        rng.shuffle(shuffled)
        entry = CachedRun.from_items(RUN, [header_item(initial)])
        assert entry is not None
        while shuffled:
            k = rng.randint(1, 5)
            entry.absorb(shuffled[:k])
            shuffled = shuffled[k:]
        assert entry.context == fold_context(initial, records), seed
        assert set(entry.records) == {r.key for r in records}


def test_a_replaced_record_replaces_its_writes_and_an_older_version_read_late_changes_nothing() -> None:
    waiting = NodeRecord(node_id="w", status="awaiting", changes={"a": 1, "c": 2}, seq=10)
    later = NodeRecord(node_id="x", changes={"b": 3}, seq=20)
    resumed = NodeRecord(node_id="w", status="completed", output="ok", changes={"a": 5}, seq=30)
    old_item = record_item(waiting, ts=100)
    entry = CachedRun.from_items(RUN, [header_item(), old_item, record_item(later, ts=100)])
    assert entry is not None
    assert entry.context == {"a": 1, "b": 3, "c": 2, "_outputs.x": None}

    entry.absorb([record_item(resumed, ts=101)])
    # Exactly what folding the stored versions gives: the waiting version's c=2 is gone for good.
    expected = {"a": 5, "b": 3, "_outputs.x": None, "_outputs.w": "ok"}
    assert entry.context == fold_context({}, [later, resumed]) == expected
    assert entry.records["0:w"].status == "completed"

    stale = dict(old_item, _etag="another-read-of-the-old-version")
    entry.absorb([stale])
    assert entry.records["0:w"].status == "completed"
    assert entry.context == expected


def test_the_watermark_is_the_newest_second_seen_with_the_versions_held_from_it() -> None:
    a, b, c = (record_item(NodeRecord(node_id=n, seq=i)) for i, n in enumerate("abc"))
    a["_ts"], b["_ts"], c["_ts"] = 100, 102, 102
    entry = CachedRun.from_items(RUN, [header_item(ts=99), a, b])
    assert entry is not None
    assert (entry.top_ts, entry.top_etags) == (102, {b["_etag"]})
    entry.absorb([c, a])  # a late duplicate of an older second moves nothing back
    assert (entry.top_ts, entry.top_etags) == (102, {b["_etag"], c["_etag"]})
    d = record_item(NodeRecord(node_id="d", seq=9), ts=103)
    assert entry.absorb([d]) == 1
    assert (entry.top_ts, entry.top_etags) == (103, {d["_etag"]})


def test_a_chunked_record_counts_only_once_all_its_chunks_are_read() -> None:
    big = NodeRecord(node_id="big", output="x" * 50, seq=5)
    data = json.dumps(big.to_dict(), separators=(",", ":"))
    item_id = record_item_id(big.key)
    parent = {"id": item_id, "runId": RUN, "kind": "record", "key": big.key, "nodeId": "big", "status": "completed",
              "chunks": 2, "_ts": 100, "_etag": "p"}
    chunks = [{"id": f"{item_id}.{i}", "runId": RUN, "kind": "chunk", "parent": item_id, "index": i,
               "data": part, "_ts": 100, "_etag": f"c{i}"} for i, part in enumerate([data[:30], data[30:]])]
    entry = CachedRun.from_items(RUN, [header_item(), parent, chunks[1]])
    assert entry is not None
    assert entry.records == {}
    entry.absorb([chunks[0]])
    assert entry.records[big.key].output == big.output
    assert entry.context["_outputs.big"] == big.output


def test_stop_markers_written_elsewhere_stop_the_run() -> None:
    entry = CachedRun.from_items(RUN, [header_item()])
    assert entry is not None
    assert not entry.state().stopped
    entry.absorb([{"id": "cancelled", "runId": RUN, "kind": "marker", "reason": "by hand", "_ts": 101,
                   "_etag": "m"}])
    assert entry.state().cancelled == "by hand"


def test_an_unknown_run_is_not_cached() -> None:
    assert CachedRun.from_items(RUN, []) is None


def test_the_cache_evicts_least_recently_used_runs_over_its_budget_and_idle_runs() -> None:
    now = [0.0]
    cache = RunCache(max_bytes=3000, idle_seconds=60, clock=lambda: now[0])
    for name in ("r1", "r2", "r3"):
        entry = CachedRun.from_items(name, [header_item(), record_item(
            NodeRecord(node_id="n", output="y" * 800, routes=[Route("m", True)], seq=1))])
        assert entry is not None
        cache.put(entry)
        now[0] += 1
    assert cache.get("r1") is not None  # r1 is now the most recently used
    r3 = cache.get("r3")
    assert r3 is not None
    r3.absorb([record_item(NodeRecord(node_id="more", output="z" * 100, seq=2))])
    cache.resized(r3)
    cache.trim()
    assert cache.size <= 3000
    assert cache.get("r2") is None and cache.get("r1") is not None
    now[0] += 61
    cache.trim()
    assert len(cache) == 0
    assert cache.evictions == 3
