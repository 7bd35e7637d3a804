"""The store contracts the core rules rest on, run against every implementation: the in-memory stores and
the real ones on the emulators (Cosmos DB stand-in, redis-server).

- run store: the first writer of a node record wins; a second commit gets the stored record back, not new;
- status store: the final status is written once; nothing changes a run after it is final;
- coordination store: an all-join's gate decides only when every expected predecessor arrived, once.

The memory variants are fast tests; the others carry the ``emulators`` marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers import AzureTestEnv
from redis.asyncio import Redis

from flowcraft_core.azure.clients import ensure_cosmos_containers, make_cosmos_client
from flowcraft_core.azure.cosmos import CosmosRunStore, CosmosStatusStore
from flowcraft_core.azure.redis_store import RedisCoordinationStore
from flowcraft_core.errors import RunStateError
from flowcraft_core.memory import InMemoryCoordinationStore, InMemoryRunStore, InMemoryStatusStore
from flowcraft_core.protocols import CoordinationStore, NodeRecord, Route, RunHeader, RunStore, StatusStore

pytestmark = pytest.mark.core_rules

BACKENDS = ["memory", pytest.param("cosmos", marks=pytest.mark.emulators)]
GATES = ["memory", pytest.param("redis", marks=pytest.mark.emulators)]
TTL = 600


@pytest.fixture
def memory_stores() -> tuple[RunStore, StatusStore]:
    return InMemoryRunStore(), InMemoryStatusStore()


@pytest.fixture
async def cosmos_stores(azure_env: AzureTestEnv) -> AsyncIterator[tuple[RunStore, StatusStore]]:
    async with make_cosmos_client(azure_env.cosmos_connection_string, verify_tls=azure_env.cosmos_verify_tls) as cc:
        containers = await ensure_cosmos_containers(cc, azure_env.cosmos_database, ["contexts", "statuses"])
        yield CosmosRunStore(containers["contexts"]), CosmosStatusStore(containers["statuses"])


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest) -> tuple[RunStore, StatusStore]:
    """(run store, status store) of one backend."""
    value: tuple[RunStore, StatusStore] = request.getfixturevalue(f"{request.param}_stores")
    return value


@pytest.fixture
def run_store(stores: tuple[RunStore, StatusStore]) -> RunStore:
    return stores[0]


@pytest.fixture
def status_store(stores: tuple[RunStore, StatusStore]) -> StatusStore:
    return stores[1]


@pytest.fixture
def memory_gate() -> CoordinationStore:
    return InMemoryCoordinationStore()


@pytest.fixture
def redis_gate(azure_env: AzureTestEnv, redis_client: Redis) -> CoordinationStore:
    return RedisCoordinationStore(redis_client, prefix=azure_env.redis_prefix.rstrip(":"))


@pytest.fixture(params=GATES)
def gates(request: pytest.FixtureRequest) -> CoordinationStore:
    """The coordination store of one backend."""
    value: CoordinationStore = request.getfixturevalue(f"{request.param}_gate")
    return value


async def new_run(store: RunStore, run_id: str = "run-1") -> str:
    await store.create_run(RunHeader(run_id, "bp", "v1", 1.0, {"seed": 1}))
    return run_id


def record(output: Any, action: str, node_id: str = "x") -> NodeRecord:
    return NodeRecord(node_id=node_id, output=output, action=action, changes={"by": output},
                      routes=[Route(action, True), Route("other", False)])


# --- run store: first writer wins ------------------------------------------------------------------


async def test_first_writer_wins_a_second_commit_gets_the_stored_record_not_new(run_store: RunStore) -> None:
    run_id = await new_run(run_store)
    first, new = await run_store.commit(run_id, record("first", "left"))
    assert new is True and first.output == "first"

    stored, new = await run_store.commit(run_id, record("second", "right"))

    assert new is False
    assert (stored.output, stored.action, stored.changes) == ("first", "left", {"by": "first"})
    assert [r.to_list() for r in stored.routes] == [["left", True, "forward"], ["other", False, "forward"]]
    state = await run_store.load(run_id)
    assert state is not None and list(state.records) == ["0:x"]
    assert state.context == {"seed": 1, "by": "first", "_outputs.x": "first"}


async def test_first_writer_wins_among_concurrent_commits_exactly_one_is_new(run_store: RunStore) -> None:
    run_id = await new_run(run_store)
    results = await asyncio.gather(*(run_store.commit(run_id, record(f"w{i}", f"a{i}")) for i in range(5)))

    assert sorted(new for _, new in results) == [False] * 4 + [True]
    winner = next(rec for rec, new in results if new)
    assert {rec.output for rec, _ in results} == {winner.output}
    state = await run_store.load(run_id)
    assert state is not None and state.context["_outputs.x"] == winner.output


async def test_first_writer_wins_per_execution_key_other_keys_are_independent(run_store: RunStore) -> None:
    run_id = await new_run(run_store)
    _, first = await run_store.commit(run_id, record("x0", "left"))
    _, other_node = await run_store.commit(run_id, record("y0", "left", node_id="y"))
    looped = record("x1", "left")
    looped.iteration = 1
    _, next_iteration = await run_store.commit(run_id, looped)
    assert (first, other_node, next_iteration) == (True, True, True)
    state = await run_store.load(run_id)
    assert state is not None and sorted(state.records) == ["0:x", "0:y", "1:x"]


async def test_a_run_id_is_created_once(run_store: RunStore) -> None:
    await new_run(run_store)
    with pytest.raises(RunStateError):
        await new_run(run_store)


async def test_replace_overwrites_only_while_the_stored_status_is_the_expected_one(run_store: RunStore) -> None:
    run_id = await new_run(run_store)
    waiting = NodeRecord(node_id="w", status="awaiting")
    await run_store.commit(run_id, waiting)
    done = NodeRecord(node_id="w", status="completed", output="resumed")

    assert await run_store.replace(run_id, done, expected_status="awaiting") is True
    assert await run_store.replace(run_id, NodeRecord(node_id="w", status="completed", output="again"),
                                   expected_status="awaiting") is False
    state = await run_store.load(run_id)
    assert state is not None and state.context["_outputs.w"] == "resumed"


# --- status store: one final status ----------------------------------------------------------------


async def test_one_final_status_a_second_finalize_returns_false_and_changes_nothing(
        status_store: StatusStore) -> None:
    await status_store.create("run-1", "bp", 1.0)
    assert await status_store.finalize("run-1", "completed", result={"context": {"k": 1}, "errors": []}) is True
    final = await status_store.get("run-1")
    assert final is not None and final["status"] == "completed"

    assert await status_store.finalize("run-1", "failed", result={"errors": ["late"]}, reason="late") is False
    assert await status_store.finalize("run-1", "cancelled", reason="too late") is False

    assert await status_store.get("run-1") == final
    assert "reason" not in final and final["result"] == {"context": {"k": 1}, "errors": []}


async def test_one_final_status_set_status_after_it_returns_false_and_changes_nothing(
        status_store: StatusStore) -> None:
    await status_store.create("run-1", "bp", 1.0)
    assert await status_store.set_status("run-1", "awaiting", extra={"awaiting": ["w"]}) is True
    assert await status_store.set_status("run-1", "running", extra={"awaiting": []}) is True
    assert await status_store.finalize("run-1", "cancelled", reason="by request") is True
    final = await status_store.get("run-1")

    assert await status_store.set_status("run-1", "running") is False
    assert await status_store.set_status("run-1", "awaiting", extra={"awaiting": ["w"]}) is False

    assert await status_store.get("run-1") == final
    assert final is not None and (final["status"], final["reason"]) == ("cancelled", "by request")


async def test_one_final_status_among_concurrent_finalizes_exactly_one_wins(status_store: StatusStore) -> None:
    await status_store.create("run-1", "bp", 1.0)
    attempts = [("completed", f"r{i}") if i % 2 else ("failed", f"r{i}") for i in range(6)]
    results = await asyncio.gather(*(status_store.finalize("run-1", status, reason=reason)  # type: ignore[arg-type]
                                     for status, reason in attempts))

    assert sorted(results) == [False] * 5 + [True]
    won = attempts[results.index(True)]
    item = await status_store.get("run-1")
    assert item is not None and (item["status"], item["reason"]) == won


async def test_set_status_records_reason_and_extra_and_refreshes_last_updated(status_store: StatusStore) -> None:
    await status_store.create("run-1", "bp", 1.0)
    assert await status_store.set_status("run-1", "awaiting", reason="needs approval",
                                         extra={"awaiting": ["approve"]}) is True
    item = await status_store.get("run-1")
    assert item is not None
    assert (item["status"], item["reason"], item["awaiting"]) == ("awaiting", "needs approval", ["approve"])
    assert isinstance(item["lastUpdated"], float) and item["lastUpdated"] > 1.0
    assert item["createdAt"] == 1.0


async def test_the_final_status_drops_the_awaiting_list_and_refreshes_last_updated(status_store: StatusStore) -> None:
    await status_store.create("run-1", "bp", 1.0)
    await status_store.set_status("run-1", "awaiting", extra={"awaiting": ["approve"]})
    assert await status_store.finalize("run-1", "completed", result={"context": {}, "errors": []}) is True
    item = await status_store.get("run-1")
    assert item is not None and item["status"] == "completed"
    assert "awaiting" not in item
    assert isinstance(item["lastUpdated"], float) and item["lastUpdated"] > 1.0


async def test_status_writes_to_an_unknown_run_return_false(status_store: StatusStore) -> None:
    assert await status_store.finalize("nope", "completed") is False
    assert await status_store.set_status("nope", "running") is False
    assert await status_store.get("nope") is None


async def test_a_status_item_is_created_once(status_store: StatusStore) -> None:
    await status_store.create("run-1", "bp", 1.0)
    with pytest.raises(RunStateError):
        await status_store.create("run-1", "bp", 2.0)


# --- coordination store: joins after all -----------------------------------------------------------


async def test_all_join_gate_waits_for_every_expected_arrival_then_fires_once(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"

    async def arrive(member: str, done: bool = True) -> tuple[str, bool]:
        return await gates.arrive(gate, member, done=done, expected=3, strategy="all", ttl_seconds=TTL)

    assert await arrive("b") == ("wait", False)
    assert await arrive("c", done=False) == ("wait", False)
    assert await arrive("b") == ("wait", False)  # a duplicate counts once
    assert await arrive("c") == ("wait", False)  # ...also when it turns a skip into done
    assert await arrive("d") == ("fire", True)
    assert await arrive("d") == ("fire", False)  # decided once; replayed to later callers
    assert await arrive("b") == ("fire", False)


async def test_all_join_gate_skips_when_every_branch_arrived_skipped(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"
    results = [await gates.arrive(gate, m, done=False, expected=2, strategy="all", ttl_seconds=TTL) for m in "bc"]
    assert results == [("wait", False), ("skip", True)]


async def test_all_join_gate_decides_once_among_concurrent_arrivals(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"
    members = [f"m{i}" for i in range(8)]
    results = await asyncio.gather(*(gates.arrive(gate, m, done=True, expected=8, strategy="all", ttl_seconds=TTL)
                                     for m in members + members))
    assert [r for r in results if r[1]] == [("fire", True)]
    assert {decision for decision, _ in results} <= {"wait", "fire"}
    assert await gates.arrive(gate, "m0", done=True, expected=8, strategy="all", ttl_seconds=TTL) == ("fire", False)


async def test_any_join_gate_fires_on_the_first_done_arrival_once(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"

    async def arrive(member: str, done: bool) -> tuple[str, bool]:
        return await gates.arrive(gate, member, done=done, expected=3, strategy="any", ttl_seconds=TTL)

    assert await arrive("b", False) == ("wait", False)
    assert await arrive("c", True) == ("fire", True)
    assert await arrive("d", True) == ("fire", False)


async def test_a_join_claim_is_held_by_one_token_and_returns_the_gate_arrivals(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"
    await gates.arrive(gate, "b", done=True, expected=3, strategy="all", ttl_seconds=TTL)
    await gates.arrive(gate, "c", done=False, expected=3, strategy="all", ttl_seconds=TTL)
    arrivals = {"b": True, "c": False}

    assert await gates.claim("run-1", "0:e", "delivery-1", TTL, gate=gate) == (True, arrivals)
    assert await gates.claim("run-1", "0:e", "delivery-1", TTL, gate=gate) == (True, arrivals)  # its redelivery
    assert await gates.claim("run-1", "0:e", "delivery-2", TTL, gate=gate) == (False, arrivals)  # a duplicate


async def test_terminals_resolve_once_every_expected_one_ended(gates: CoordinationStore) -> None:
    assert await gates.resolve_terminal("run-1", "x", 2, TTL) is False
    assert await gates.resolve_terminal("run-1", "x", 2, TTL) is False  # a duplicate counts once
    assert await gates.resolve_terminal("run-2", "y", 2, TTL) is False  # another run's terminal
    assert await gates.resolve_terminal("run-1", "y", 2, TTL) is True


async def test_forget_run_drops_that_runs_gates_only(gates: CoordinationStore) -> None:
    # (Join claims are not part of it: Redis lets them expire with their own short TTL.)
    for run in ("run-1", "run-2"):
        gate = f"{run}|gate|0|e"
        assert await gates.arrive(gate, "b", done=True, expected=2, strategy="all", ttl_seconds=TTL) == ("wait", False)
        assert (await gates.claim(run, "0:e", "old", TTL, gate=gate))[0] is True
    await gates.forget_run("run-1")

    # run-1's gate starts over (b's arrival is gone); run-2 keeps its arrival and its claim.
    assert await gates.arrive("run-1|gate|0|e", "c", done=True, expected=2, strategy="all",
                              ttl_seconds=TTL) == ("wait", False)
    assert await gates.claim("run-1", "later", "new", TTL, gate="run-1|gate|0|e") == (True, {"c": True})
    assert await gates.arrive("run-2|gate|0|e", "c", done=True, expected=2, strategy="all",
                              ttl_seconds=TTL) == ("fire", True)
    assert (await gates.claim("run-2", "0:e", "new", TTL, gate="run-2|gate|0|e"))[0] is False


async def test_any_join_gate_skips_once_every_branch_arrived_skipped(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"
    results = [await gates.arrive(gate, m, done=False, expected=2, strategy="any", ttl_seconds=TTL) for m in "bcb"]
    assert results == [("wait", False), ("skip", True), ("skip", False)]


async def test_a_done_arrival_is_not_undone_by_a_later_skip_of_the_same_member(gates: CoordinationStore) -> None:
    gate = "run-1|gate|0|e"
    assert await gates.arrive(gate, "b", done=True, expected=2, strategy="all", ttl_seconds=TTL) == ("wait", False)
    assert await gates.arrive(gate, "b", done=False, expected=2, strategy="all", ttl_seconds=TTL) == ("wait", False)
    assert await gates.arrive(gate, "c", done=False, expected=2, strategy="all", ttl_seconds=TTL) == ("fire", True)
