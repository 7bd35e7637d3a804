"""Run listing, continuation tokens, history and purge over the in-memory stores (issue 12)."""

from __future__ import annotations

import pytest

from flowcraft_core.errors import RunStateError, UnknownRunError
from flowcraft_core.memory import InMemoryCoordinationStore, InMemoryRunStore, InMemoryStatusStore
from flowcraft_core.protocols import NodeRecord, RunHeader, RunQuery
from flowcraft_core.runs import (
    InvalidContinuationError,
    PurgeStores,
    decode_continuation,
    encode_continuation,
    history,
    list_runs,
    purge_expired,
    purge_run,
)


async def _store(n: int) -> InMemoryStatusStore:
    store = InMemoryStatusStore()
    for i in range(n):
        # Two runs per creation time: ties must not lose or repeat runs across pages.
        await store.create(f"r{i}", "bp" if i % 2 else "other", 1000.0 + i // 2)
    return store


async def test_memory_paging_is_keyset_based_and_stable_under_inserts() -> None:
    store = await _store(7)
    seen: list[str] = []
    token = None
    pages = 0
    while pages == 0 or token:
        items, token = await list_runs(store, RunQuery(), top=2, continuation_token=token)
        seen += [i["runId"] for i in items]
        pages += 1
        await store.create(f"new{pages}", "bp", 5000.0 + pages)
    assert pages == 4 and sorted(seen) == [f"r{i}" for i in range(7)] and len(seen) == len(set(seen))


async def test_filters_apply_in_memory() -> None:
    store = await _store(6)
    await store.finalize("r1", "failed", reason="x")
    items, _ = await list_runs(store, RunQuery(statuses=("failed",)))
    assert [i["runId"] for i in items] == ["r1"]
    items, _ = await list_runs(store, RunQuery(blueprint_id="bp", created_from=1001.0, created_to=1002.0))
    assert [i["runId"] for i in items] == ["r3"]


@pytest.mark.parametrize("token", ["", "!!!", "bm90IGpzb24", "eyJ2IjoyfQ"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidContinuationError):
        decode_continuation(RunQuery(), token)


def test_a_token_is_bound_to_its_filters() -> None:
    token = encode_continuation(RunQuery(statuses=("running",)), "[1, \"r\"]")
    assert token is not None
    assert decode_continuation(RunQuery(statuses=("running",)), token) == "[1, \"r\"]"
    with pytest.raises(InvalidContinuationError, match="other filters"):
        decode_continuation(RunQuery(), token)


async def test_purge_refuses_unknown_and_unended_runs_and_retention_is_idempotent() -> None:
    runs, statuses, coordination = InMemoryRunStore(), InMemoryStatusStore(), InMemoryCoordinationStore()
    stores = PurgeStores(runs, statuses, coordination)
    for i in range(3):
        await runs.create_run(RunHeader(f"r{i}", "bp", "1", 1000.0 + i))
        await statuses.create(f"r{i}", "bp", 1000.0 + i)
    with pytest.raises(UnknownRunError):
        await purge_run(stores, "nope")
    with pytest.raises(RunStateError):
        await purge_run(stores, "r0")
    for i in range(2):
        await statuses.finalize(f"r{i}", "completed")
    stats = await purge_expired(stores, ended_before=10 ** 12, page_size=1, max_pages=5)
    assert stats.runs == 2 and set(statuses.items) == {"r2"}
    assert (await purge_expired(stores, ended_before=10 ** 12)).runs == 0


async def test_history_is_in_commit_order_with_durations_and_skips_external_writes() -> None:
    runs = InMemoryRunStore()
    await runs.create_run(RunHeader("r", "bp", "1", 0.0))
    await runs.commit("r", NodeRecord("b", started_at=10, finished_at=25))
    await runs.commit("r", NodeRecord("__external__.x", status="external", changes={"k": 1}))
    await runs.commit("r", NodeRecord("a", status="failed", error={"message": "no"}, attempts=3, started_at=30,
                                      finished_at=31))
    state = await runs.load("r")
    assert state is not None
    entries = history(state)
    assert [(e["nodeId"], e["durationMs"], e["attempts"]) for e in entries] == [("b", 15, 1), ("a", 1, 3)]
    assert entries[1]["error"] == {"message": "no"} and "error" not in entries[0]


def test_progress_counts_from_a_stored_run() -> None:
    from flowcraft_core.progress import progress_of
    from flowcraft_core.protocols import Route, RunState

    state = RunState(header=RunHeader("r", "bp", "1", 0.0), context={}, records={})
    for rec in (NodeRecord("a", routes=[Route("b", True), Route("c", True), Route("d", False)]),
                NodeRecord("b", status="awaiting")):
        state.records[rec.key] = rec
    progress = progress_of(state, "running")
    assert (progress.done, progress.running, progress.waiting) == (1, 1, 1)  # c is queued or executing


async def test_progress_display_plain_lines_change_only_and_rich_on_a_terminal() -> None:
    import io

    from flowcraft_core.progress import Progress, ProgressBus, ProgressDisplay

    plain = io.StringIO()
    with ProgressDisplay(plain) as display:
        bus = ProgressBus(display)
        for kind in ("job:enqueued", "job:enqueued", "node:start", "node:finish", "context:change"):
            await bus.emit({"type": kind, "payload": {}})
        display.update(Progress(done=1, waiting=1, status="running"))
    lines = [line.split(" (")[0] for line in plain.getvalue().splitlines()]
    # One line per change: the context change and the last update repeat the counts, so print nothing.
    assert lines == ["running: 0 done, 0 running, 1 waiting", "running: 0 done, 0 running, 2 waiting",
                     "running: 0 done, 1 running, 1 waiting", "running: 1 done, 0 running, 1 waiting"]

    terminal = io.StringIO()
    with ProgressDisplay(terminal, live=True) as display:
        display.update(Progress(done=3, status="completed"))
    assert "completed: 3 done" in terminal.getvalue()
