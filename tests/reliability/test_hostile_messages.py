"""Hostile queue input: whatever lands on the job queue, the worker survives and no other run changes.

Messages that are not base64, base64 of non-JSON, JSON of the wrong shape, invalid run ids, unknown
blueprints and runs, ~48 KB blobs (the largest Azurite accepts), jobs naming another blueprint's node,
and forged jobs for nodes of a live run that nothing scheduled (a branch not taken, a join not yet
released, a loop iteration of a node outside any loop). Each one is moved to the poison queue with an
ERROR line saying why; the main queue drains (nothing loops); the run they aimed at is unchanged and
still completes normally; and a good run started afterwards completes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient
from helpers import wait_until
from rel_support import RelHarness, records, wait_final
from rel_workflows import HOLD_RELEASE, HOLD_STARTED, blueprints, fan, registry

from flowcraft_core.azure.services import AzureServices, plain_queue_client


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def job(**fields: Any) -> str:
    return b64(json.dumps(fields))


@pytest.fixture
async def raw_queue(rel: RelHarness) -> AsyncIterator[QueueClient]:
    """The test's job queue without encode policies: the test writes the wire text itself."""
    async with plain_queue_client(rel.env.queue_connection_string, rel.env.queue_name) as qc:
        yield qc


async def peek_all(qc: QueueClient) -> list[str]:
    return [m.content for m in await qc.peek_messages(max_messages=32)]


async def test_hostile_messages_are_poisoned_with_a_clear_reason_and_touch_no_run(
    rel: RelHarness, raw_queue: QueueClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flowcraft")
    worker = await rel.build(registry, blueprints)
    victim = "victim-run"
    HOLD_STARTED[victim] = asyncio.Event()
    HOLD_RELEASE[victim] = asyncio.Event()
    await worker.adapter.start_run("forked", rel.context("victim", pick="left"), run_id=victim)
    await asyncio.wait_for(HOLD_STARTED[victim].wait(), 20)  # the victim is mid-run: `left` is executing
    before_records = await records(worker, victim)
    assert set(before_records) == {"0:start", "0:router"}

    rng = random.Random(7)
    blob = "".join(rng.choices(string.ascii_letters + string.digits + "!*-_", k=48_000))
    hostile: dict[str, str] = {
        "not base64": "%%% this is not base64 at all %%%",
        "base64 of non-JSON": b64("hello, I am not JSON"),
        "base64 of binary": b64(bytes(range(256)) * 8),
        "JSON array": b64("[1, 2, 3]"),
        "JSON string": b64('"runId"'),
        "missing fields": job(runId=victim),
        "wrong types": job(runId=victim, blueprintId=["forked"], nodeId={"id": "left"}),
        "extra field": job(runId=victim, blueprintId="forked", nodeId="z", command="rm -rf /"),
        "negative iteration": job(runId=victim, blueprintId="forked", nodeId="z", iteration=-1),
        "run id with slash": job(runId="../victim-run", blueprintId="forked", nodeId="z"),
        "run id with hash": job(runId="victim-run#x", blueprintId="forked", nodeId="z"),
        "very long run id": job(runId="r" * 500, blueprintId="forked", nodeId="z"),
        "unknown run": job(runId="no-such-run", blueprintId="forked", nodeId="start"),
        "unknown blueprint": job(runId=victim, blueprintId="no-such-blueprint", nodeId="start"),
        "another blueprint's id": job(runId=victim, blueprintId="fan", nodeId="e"),
        "another blueprint's node": job(runId=victim, blueprintId="forked", nodeId="e"),
        "branch not taken": job(runId=victim, blueprintId="forked", nodeId="right"),
        "join not released": job(runId=victim, blueprintId="forked", nodeId="z"),
        "iteration of a node in no loop": job(runId=victim, blueprintId="forked", nodeId="router", iteration=3),
        "48 KB of text": blob,
        "48 KB of base64": b64(b"\x00" * 35_000),
    }
    assert all(len(text) <= 64 * 1024 for text in hostile.values())
    for text in hostile.values():
        await raw_queue.send_message(text)

    async with plain_queue_client(rel.env.queue_connection_string, f"{rel.env.queue_name}-poison") as poison:
        async def all_poisoned() -> bool:
            props = await poison.get_queue_properties()
            return props.approximate_message_count >= len(hostile)

        await wait_until(all_poisoned, timeout=30, interval=0.2, message="every hostile message poisoned")
        poisoned = [m.content async for m in poison.receive_messages(messages_per_page=32, max_messages=64)]
    assert sorted(poisoned) == sorted(hostile.values())  # each exactly once, as sent
    async def only_the_victims_job_left() -> bool:
        # Only the victim's own job (`left`, still running) remains: nothing hostile is left to loop.
        return (await raw_queue.get_queue_properties()).approximate_message_count == 1

    await wait_until(only_the_victims_job_left, timeout=10, message="main queue drained")

    # Every one got an ERROR line saying what was wrong with it (never a traceback of a crash).
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("flowcraft")]
    expected_reasons = {
        "not base64": "not base64",
        "base64 of non-JSON": "not JSON",
        "JSON array": "JSON list, not a job object",
        "missing fields": "blueprintId: Field required",
        "extra field": "Extra inputs are not permitted",
        "run id with slash": "not a valid run id",
        "unknown run": "job for unknown run 'no-such-run'",
        "unknown blueprint": "names blueprint 'no-such-blueprint'",
        "another blueprint's node": "has no node 'e'",
        "branch not taken": "did not schedule node 'right'",
        "join not released": "did not schedule node 'z'",
        "iteration of a node in no loop": "did not schedule node 'router'",
    }
    for name, reason in expected_reasons.items():
        assert any(reason in line for line in errors), (name, reason, errors)
    assert len([line for line in errors if "poison queue" in line]) == len(hostile)
    assert not [r for r in caplog.records if r.exc_info], "a hostile message raised an unexpected exception"

    # The victim was not touched: same records, still running, and it completes as if nothing happened.
    assert await records(worker, victim) == before_records
    status = await worker.adapter.get_status(victim)
    assert status is not None and status["status"] == "running"
    HOLD_RELEASE[victim].set()
    done = await wait_final(worker, victim)
    assert done["status"] == "completed", done
    assert set(await records(worker, victim)) == {"0:start", "0:router", "0:left", "0:z"}
    assert done["result"]["context"]["_outputs.z"]["foreign"] == []

    # And the worker still works.
    good = await worker.adapter.start_run("fan", rel.context("good"))
    assert (await wait_final(worker, good))["status"] == "completed"
    assert rel.finals[victim] == rel.finals[good] == 1


async def test_a_stale_duplicate_of_a_finished_run_changes_nothing(rel: RelHarness, raw_queue: QueueClient) -> None:
    worker: AzureServices = await rel.build(registry, blueprints)
    run_id = await worker.adapter.start_run("fan", rel.context("old"))
    first = await wait_final(worker, run_id)
    stored = await records(worker, run_id)
    for node in ("a", "b", "e"):
        await raw_queue.send_message(job(runId=run_id, blueprintId="fan", nodeId=node))

    async def drained() -> bool:
        props = await raw_queue.get_queue_properties()
        return props.approximate_message_count == 0 and not worker.adapter._in_flight

    await wait_until(drained, timeout=20, interval=0.1, message="duplicates consumed")
    after = await worker.adapter.run_result(run_id)
    assert after is not None
    assert after["status"] == "completed" and after["result"] == first["result"]
    assert await records(worker, run_id) == stored
    assert rel.finals[run_id] == 1


async def test_a_forged_job_for_a_scheduled_but_unreleased_join_is_refused(
    rel: RelHarness, raw_queue: QueueClient, caplog: pytest.LogCaptureFixture,
) -> None:
    # 8 branches into an all-join; 3 commit, 5 hold. The join is scheduled (stored records route to
    # it) but not released: a well-formed job for it must not run it on 3 of its 8 inputs.
    caplog.set_level(logging.INFO, logger="flowcraft")
    middle = tuple(f"b{i}" for i in range(8))
    wide = fan("wide-held", middle=middle, uses={b: "hold" for b in middle[3:]})
    worker = await rel.build(registry, {**blueprints, "wide-held": wide})
    victim = "forged-join-victim"
    HOLD_STARTED[victim] = asyncio.Event()
    HOLD_RELEASE[victim] = asyncio.Event()
    await worker.adapter.start_run("wide-held", rel.context("victim"), run_id=victim)

    async def three_committed() -> bool:
        return {"0:b0", "0:b1", "0:b2"} <= set(await records(worker, victim))

    await wait_until(three_committed, timeout=20, message="three branches committed")
    forged = job(runId=victim, blueprintId="wide-held", nodeId="e")
    await raw_queue.send_message(forged)

    async with plain_queue_client(rel.env.queue_connection_string, f"{rel.env.queue_name}-poison") as poison:
        async def poisoned() -> list[str]:
            return [m.content for m in await poison.peek_messages(max_messages=32)]

        assert await wait_until(poisoned, timeout=20, message="forged job poisoned") == [forged]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("join 'e' is not released" in line for line in errors), errors
    assert "0:e" not in await records(worker, victim)  # the join did not run early

    HOLD_RELEASE[victim].set()
    done = await wait_final(worker, victim)
    assert done["status"] == "completed", done
    assert (await records(worker, victim))["0:e"] == 1
    assert done["result"]["context"]["_outputs.e"]["keys"] == sorted(f"k_{n}" for n in ("a", *middle))
