"""The facts the runtime's design relies on, checked against the real local emulators.

Each test states one behaviour of Azurite (queues), the Cosmos DB stand-in or Redis, driven with the
async SDK calls the runtime makes. Where the stand-in differs from Cosmos DB, the test asserts what
the stand-in does and says so; docs/emulators.md summarises the findings.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.cosmos import exceptions as cosmos_errors
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.storage.queue import StorageErrorCode
from azure.storage.queue.aio import QueueClient
from helpers import AzureTestEnv, wait_until
from redis.asyncio import Redis

from flowcraft_core.azure.clients import (
    PARTITION_KEY_PATH,
    ensure_cosmos_containers,
    ensure_queue,
    make_queue_client,
)

# ---------------------------------------------------------------------------------------------
# Storage Queues (Azurite)
# ---------------------------------------------------------------------------------------------


async def test_queue_messages_are_base64_text_on_the_wire(azure_env: AzureTestEnv, queue_client: QueueClient) -> None:
    body = '{"runId": "r-1", "node": "fetch"}'
    await queue_client.send_message(body)

    # A client without the policies sees the stored text: base64, as the Functions host expects.
    async with QueueClient.from_connection_string(azure_env.queue_connection_string, azure_env.queue_name) as raw:
        (peeked,) = await raw.peek_messages()
    assert peeked.content == base64.b64encode(body.encode()).decode()

    msg = await queue_client.receive_message()
    assert msg is not None
    assert msg.content == body
    assert msg.dequeue_count == 1


async def test_ensure_queue_is_idempotent(azure_env: AzureTestEnv) -> None:
    async with make_queue_client(azure_env.queue_connection_string, azure_env.queue_name) as qc:
        await ensure_queue(qc)
        await ensure_queue(qc)
        props = await qc.get_queue_properties()
    assert props.name == azure_env.queue_name


async def test_received_message_is_invisible_until_its_visibility_timeout(
    queue_client: QueueClient,
) -> None:
    await queue_client.send_message("job")
    first = await queue_client.receive_message(visibility_timeout=1)
    assert first is not None and first.dequeue_count == 1
    assert await queue_client.receive_message() is None  # hidden while "in flight"

    # Not deleted (a handler that raised): it comes back, with the dequeue count the host uses
    # to decide when to move it to <queue>-poison.
    again = await wait_until(queue_client.receive_message, timeout=5, message="message reappears")
    assert again.id == first.id
    assert again.dequeue_count == 2


async def test_update_message_extends_visibility_and_renews_the_pop_receipt(
    queue_client: QueueClient,
) -> None:
    await queue_client.send_message("long node")
    msg = await queue_client.receive_message(visibility_timeout=1)
    assert msg is not None
    updated = await queue_client.update_message(msg, visibility_timeout=4)
    assert updated.id == msg.id
    assert updated.pop_receipt != msg.pop_receipt
    assert updated.next_visible_on is not None and msg.next_visible_on is not None
    assert updated.next_visible_on > msg.next_visible_on

    # Past the original 1 s timeout the message is still hidden.
    time_after_first_timeout = time.monotonic() + 1.5
    while time.monotonic() < time_after_first_timeout:
        assert await queue_client.receive_message() is None
        await asyncio.sleep(0.1)

    # The old pop receipt is dead: deleting with it is a 400 PopReceiptMismatch.
    with pytest.raises(HttpResponseError) as stale:
        await queue_client.delete_message(msg.id, msg.pop_receipt)
    assert stale.value.status_code == 400
    assert getattr(stale.value, "error_code", None) == StorageErrorCode.POP_RECEIPT_MISMATCH

    await queue_client.delete_message(updated.id, updated.pop_receipt)
    assert (await queue_client.get_queue_properties()).approximate_message_count == 0


async def test_delete_message_removes_it_and_a_second_delete_is_404(queue_client: QueueClient) -> None:
    await queue_client.send_message("done")
    msg = await queue_client.receive_message(visibility_timeout=1)
    assert msg is not None
    await queue_client.delete_message(msg)
    with pytest.raises(ResourceNotFoundError) as again:  # deletes are not idempotent: handle 404
        await queue_client.delete_message(msg)
    assert getattr(again.value, "error_code", None) == StorageErrorCode.MESSAGE_NOT_FOUND
    assert await queue_client.peek_messages() == []


async def test_send_with_visibility_timeout_delays_the_message(queue_client: QueueClient) -> None:
    sent = await queue_client.send_message("wake up", visibility_timeout=2)
    # The queue's own timestamps say when the message becomes visible: two seconds after insertion.
    assert (sent.next_visible_on - sent.inserted_on).total_seconds() >= 2
    assert await queue_client.receive_message() is None
    assert await queue_client.peek_messages() == []  # invisible to peek as well

    msg = await wait_until(queue_client.receive_message, timeout=6, message="delayed message")
    assert msg.content == "wake up"


async def test_message_limit_is_64_kib_after_base64(queue_client: QueueClient) -> None:
    # 48,000 raw bytes encode to 64,000: accepted. 49,200 encode to 65,600 (> 65,536): 413.
    await queue_client.send_message("x" * 48_000)
    with pytest.raises(HttpResponseError) as too_big:
        await queue_client.send_message("x" * 49_200)
    assert too_big.value.status_code == 413
    assert getattr(too_big.value, "error_code", None) == StorageErrorCode.REQUEST_BODY_TOO_LARGE


# ---------------------------------------------------------------------------------------------
# Cosmos DB (the @vercel/cosmosdb-server stand-in, through scripts/cosmosdb-server.js)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def runs(azure_env: AzureTestEnv, cosmos_client: CosmosClient) -> ContainerProxy:
    containers = await ensure_cosmos_containers(cosmos_client, azure_env.cosmos_database, ["runs", "nodes"])
    return containers["runs"]


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


async def test_ensure_cosmos_containers_is_idempotent_and_partitions_by_run_id(
    azure_env: AzureTestEnv, cosmos_client: CosmosClient
) -> None:
    first = await ensure_cosmos_containers(cosmos_client, azure_env.cosmos_database, ["runs", "nodes"])
    second = await ensure_cosmos_containers(cosmos_client, azure_env.cosmos_database, ["runs", "nodes"])
    assert set(first) == set(second) == {"runs", "nodes"}
    props = await second["nodes"].read()
    assert props["partitionKey"]["paths"] == [PARTITION_KEY_PATH]


async def test_create_conflicts_on_duplicate_id_while_upsert_replaces(runs: ContainerProxy) -> None:
    created = await runs.create_item({"id": "a", "runId": "r1", "n": 1})
    assert created["_etag"]
    with pytest.raises(cosmos_errors.CosmosResourceExistsError) as dup:
        await runs.create_item({"id": "a", "runId": "r1", "n": 2})
    assert _status(dup.value) == 409

    upserted = await runs.upsert_item({"id": "a", "runId": "r1", "n": 3})
    assert upserted["n"] == 3
    assert upserted["_etag"] != created["_etag"]
    # The same id under another partition key is another item.
    await runs.create_item({"id": "a", "runId": "r2", "n": 4})


async def test_point_read_and_404_for_missing_items(runs: ContainerProxy) -> None:
    await runs.upsert_item({"id": "a", "runId": "r1", "status": "running"})
    item = await runs.read_item("a", partition_key="r1")
    assert item["status"] == "running"
    assert {"_etag", "_ts", "_rid", "_self"} <= set(item)

    # Upstream the stand-in answers 500 here; our launcher makes it a 404 like Cosmos DB.
    with pytest.raises(cosmos_errors.CosmosResourceNotFoundError):
        await runs.read_item("missing", partition_key="r1")
    with pytest.raises(cosmos_errors.CosmosResourceNotFoundError):
        await runs.read_item("a", partition_key="other-run")  # right id, wrong partition
    with pytest.raises(cosmos_errors.CosmosResourceNotFoundError):
        await runs.replace_item("missing", {"id": "missing", "runId": "r1"})
    with pytest.raises(cosmos_errors.CosmosResourceNotFoundError):
        await runs.delete_item("missing", partition_key="r1")


async def test_single_partition_query_with_parameters(runs: ContainerProxy) -> None:
    for i in range(5):
        await runs.upsert_item({"id": f"n{i}", "runId": "r1", "kind": "node", "seq": i})
    await runs.upsert_item({"id": "n0", "runId": "r2", "kind": "node", "seq": 0})

    query = "SELECT * FROM c WHERE c.runId = @runId AND c.seq >= @min ORDER BY c.seq DESC"
    # (`order` would be a reserved word here, as in Cosmos SQL: name fields accordingly or use c["order"].)
    params: list[dict[str, Any]] = [{"name": "@runId", "value": "r1"}, {"name": "@min", "value": 2}]
    items = [i async for i in runs.query_items(query, parameters=params, partition_key="r1")]
    assert [i["id"] for i in items] == ["n4", "n3", "n2"]

    count_query = "SELECT VALUE COUNT(1) FROM c WHERE c.runId = @runId"
    counts: list[Any] = [c async for c in runs.query_items(count_query, parameters=params[:1], partition_key="r1")]
    assert counts == [5]


async def test_stand_in_requires_the_partition_key_in_the_query_text(runs: ContainerProxy) -> None:
    await runs.upsert_item({"id": "a", "runId": "r1", "status": "running"})
    await runs.upsert_item({"id": "b", "runId": "r2", "status": "running"})
    params: list[dict[str, Any]] = [{"name": "@s", "value": "running"}]

    # Stand-in quirk: with partition_key= but no `c.runId = ...` in WHERE it answers 400
    # "missing partition keys" (it ignores the partition key header for queries). Cosmos DB
    # would scope the query to the partition. Rule: always filter on c.runId in the query text.
    with pytest.raises(cosmos_errors.CosmosHttpResponseError) as missing:
        _ = [
            i
            async for i in runs.query_items(
                "SELECT * FROM c WHERE c.status = @s", parameters=params, partition_key="r1"
            )
        ]
    assert _status(missing.value) == 400

    # Without partition_key the async SDK queries across partitions on its own...
    everywhere = [i async for i in runs.query_items("SELECT * FROM c WHERE c.status = @s", parameters=params)]
    assert {i["runId"] for i in everywhere} == {"r1", "r2"}
    # ...and the async API has no enable_cross_partition_query: it leaks down to aiohttp.
    with pytest.raises(TypeError):
        _ = [
            i
            async for i in runs.query_items(
                "SELECT * FROM c WHERE c.status = @s",
                parameters=params,
                enable_cross_partition_query=True,
            )
        ]


async def test_patch_set_incr_add_remove(runs: ContainerProxy) -> None:
    before = await runs.upsert_item({"id": "a", "runId": "r1", "status": "running", "n": 1, "out": {}})
    after = await runs.patch_item(
        "a",
        partition_key="r1",
        patch_operations=[
            {"op": "set", "path": "/status", "value": "succeeded"},
            {"op": "incr", "path": "/n", "value": 5},
            {"op": "set", "path": "/out/fetch", "value": {"rows": 3}},  # nested, parent exists
            {"op": "add", "path": "/tags", "value": ["x"]},
        ],
    )
    assert after["status"] == "succeeded"
    assert after["n"] == 6
    assert after["out"] == {"fetch": {"rows": 3}}
    assert after["tags"] == ["x"]
    assert after["_etag"] != before["_etag"]  # patch returns the whole new item

    removed = await runs.patch_item("a", partition_key="r1", patch_operations=[{"op": "remove", "path": "/tags"}])
    assert "tags" not in removed
    with pytest.raises(cosmos_errors.CosmosHttpResponseError) as bad:  # removing a missing path
        await runs.patch_item("a", partition_key="r1", patch_operations=[{"op": "remove", "path": "/nope"}])
    assert _status(bad.value) == 400
    with pytest.raises(cosmos_errors.CosmosResourceNotFoundError):
        await runs.patch_item("missing", partition_key="r1", patch_operations=[{"op": "set", "path": "/a", "value": 1}])


async def test_etag_if_match_gives_optimistic_concurrency(runs: ContainerProxy) -> None:
    v1 = await runs.upsert_item({"id": "a", "runId": "r1", "n": 1})
    v2 = await runs.replace_item(
        "a", {**_body(v1), "n": 2}, match_condition=MatchConditions.IfNotModified, etag=v1["_etag"]
    )
    assert v2["n"] == 2

    stale = v1["_etag"]
    with pytest.raises(cosmos_errors.CosmosAccessConditionFailedError) as replace_err:
        await runs.replace_item("a", {**_body(v2), "n": 3}, match_condition=MatchConditions.IfNotModified, etag=stale)
    assert _status(replace_err.value) == 412
    with pytest.raises(cosmos_errors.CosmosAccessConditionFailedError):
        await runs.patch_item(
            "a",
            partition_key="r1",
            patch_operations=[{"op": "incr", "path": "/n", "value": 1}],
            match_condition=MatchConditions.IfNotModified,
            etag=stale,
        )
    with pytest.raises(cosmos_errors.CosmosAccessConditionFailedError):
        await runs.upsert_item({**_body(v2), "n": 3}, match_condition=MatchConditions.IfNotModified, etag=stale)
    with pytest.raises(cosmos_errors.CosmosAccessConditionFailedError):
        await runs.delete_item("a", partition_key="r1", match_condition=MatchConditions.IfNotModified, etag=stale)

    assert (await runs.read_item("a", partition_key="r1"))["n"] == 2  # nothing stale got through
    patched = await runs.patch_item(
        "a",
        partition_key="r1",
        patch_operations=[{"op": "incr", "path": "/n", "value": 1}],
        match_condition=MatchConditions.IfNotModified,
        etag=v2["_etag"],
    )
    assert patched["n"] == 3


async def test_patch_filter_predicate(runs: ContainerProxy) -> None:
    # Upstream the stand-in lower-cases the predicate (so `c.runId` never matches and 'Done'
    # matches 'done'); scripts/cosmosdb-server.js evaluates it as written, like Cosmos DB.
    await runs.upsert_item({"id": "a", "runId": "r1", "status": "running", "n": 0})
    incr = [{"op": "incr", "path": "/n", "value": 1}]

    ok = await runs.patch_item(
        "a", partition_key="r1", patch_operations=incr, filter_predicate="FROM c WHERE c.status = 'running'"
    )
    assert ok["n"] == 1
    ok = await runs.patch_item(
        "a", partition_key="r1", patch_operations=incr, filter_predicate="from c where c.runId = 'r1' AND c.n = 1"
    )
    assert ok["n"] == 2

    for predicate in ("FROM c WHERE c.status = 'done'", "FROM c WHERE c.status = 'RUNNING'"):
        with pytest.raises(cosmos_errors.CosmosAccessConditionFailedError):
            await runs.patch_item("a", partition_key="r1", patch_operations=incr, filter_predicate=predicate)
    assert (await runs.read_item("a", partition_key="r1"))["n"] == 2


async def test_large_items(runs: ContainerProxy) -> None:
    big = "x" * 1_900_000
    await runs.upsert_item({"id": "big", "runId": "r1", "blob": big})
    assert (await runs.read_item("big", partition_key="r1"))["blob"] == big

    # The stand-in does NOT enforce Cosmos DB's 2 MB item limit (Cosmos answers 413): the
    # runtime must check sizes itself, and tests cannot rely on the emulator to catch it.
    bigger = await runs.upsert_item({"id": "bigger", "runId": "r1", "blob": "x" * 2_100_000})
    assert len(bigger["blob"]) == 2_100_000


async def test_sdk_rejects_ids_with_slashes_before_sending(runs: ContainerProxy) -> None:
    with pytest.raises(ValueError, match="illegal chars"):
        await runs.create_item({"id": "a/b", "runId": "r1"})


async def test_transactional_batch_fails_against_the_stand_in(runs: ContainerProxy) -> None:
    with pytest.raises(cosmos_errors.CosmosHttpResponseError) as failed:
        await runs.execute_item_batch([("upsert", ({"id": "b1", "runId": "r3"},))], partition_key="r3")
    # The stand-in cannot parse the batch's partition key header and crashes: a 500, not a 4xx.
    assert _status(failed.value) == 500


def _body(item: dict[str, Any]) -> dict[str, Any]:
    """An item without the system properties, ready to write back."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------
# Redis (private redis-server)
# ---------------------------------------------------------------------------------------------


async def test_redis_set_nx_ex_is_a_lock(azure_env: AzureTestEnv, redis_client: Redis) -> None:
    key = f"{azure_env.redis_prefix}lock:r1:fetch"
    assert await redis_client.set(key, "owner-1", nx=True, ex=30) is True
    assert await redis_client.set(key, "owner-2", nx=True, ex=30) is None
    assert await redis_client.get(key) == "owner-1"  # decode_responses=True: str, not bytes
    assert 0 < await redis_client.ttl(key) <= 30

    short = f"{azure_env.redis_prefix}short"
    await redis_client.set(short, "x", nx=True, px=200)

    async def expired() -> bool:
        return bool(await redis_client.exists(short) == 0)

    assert await wait_until(expired, timeout=5, message="lock key expires")


async def test_redis_sadd_scard_counts_each_arrival_once(azure_env: AzureTestEnv, redis_client: Redis) -> None:
    key = f"{azure_env.redis_prefix}arrived:r1:join"
    assert await redis_client.sadd(key, "a") == 1
    assert await redis_client.sadd(key, "a") == 0  # a redelivered message adds nothing
    assert await redis_client.sadd(key, "b") == 1
    assert await redis_client.scard(key) == 2


FAN_IN = """
-- KEYS[1]: set of arrived predecessors; ARGV[1]: this predecessor; ARGV[2]: how many are expected;
-- ARGV[3]: ttl seconds. Returns 1 exactly once: for the arrival that completes the set.
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if added == 1 and redis.call('SCARD', KEYS[1]) == tonumber(ARGV[2]) then
  return 1
end
return 0
"""


async def test_redis_eval_lua_script(azure_env: AzureTestEnv, redis_client: Redis) -> None:
    key = f"{azure_env.redis_prefix}fanin:r1:join"
    results = [
        await redis_client.eval(FAN_IN, 1, key, pred, "3", "600")  # type: ignore[misc]
        for pred in ["a", "b", "b", "c", "c", "a"]
    ]
    assert results == [0, 0, 0, 1, 0, 0]

    # register_script: EVALSHA with a transparent EVAL fallback, as production code would use it.
    script = redis_client.register_script(FAN_IN)
    key2 = f"{azure_env.redis_prefix}fanin:r2:join"
    assert await script(keys=[key2], args=["a", 1, 600]) == 1
    assert await script(keys=[key2], args=["a", 1, 600]) == 0
    assert 0 < await redis_client.ttl(key2) <= 600
