"""Crash at every step: a worker process dies (os._exit) at each checkpoint of handle_job in turn.

For every checkpoint k of a fan-out/fan-in run (a -> b, c, d -> e), a worker subprocess started with
``FLOWCRAFT_FAULT_CRASH_AT=k`` takes the run until it dies there; then a clean worker takes over the same
queue (the crashed worker's messages come back after its 3 s visibility timeout). No reconciler runs:
redelivery alone must heal every crash point.

What the engine guarantees, and what is asserted for every k:
- the run completes, and exactly one write made its status final;
- exactly one record is committed per node, every context key is present, the join's committed
  output saw all three branches;
- the join executed exactly once, unless the crash fell between its execution and its commit (then
  twice: execution is at least once); every other node executed once or twice, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from helpers import wait_until
from rel_support import RelHarness, records, spawn_worker, stop_process, wait_final, worker_env
from rel_workflows import blueprints, exec_key, final_key, registry

from flowcraft_core.azure.queue import AzureJobQueue
from flowcraft_core.azure.services import AzureServices, plain_queue_client
from flowcraft_core.engine import Engine, EngineOptions
from flowcraft_dev.faults import CHECKPOINTS, CRASH_ENV, CRASH_EXIT_CODE, StepRecorder

pytestmark = pytest.mark.slow

NODES = ("a", "b", "c", "d", "e")
# How often a clean run of "fan" reaches each checkpoint in the worker (start_run's own enqueue of a
# happens in the caller, not the worker): the crash points below are every (step, n) of this table.
EXPECTED_HITS = {
    "after-claim": 1,    # e, the only join
    "after-execute": 5,
    "after-commit": 5,
    "after-gate": 3,     # b, c and d arriving at e's gate
    "after-enqueue": 4,  # a -> b, c, d, then the last branch -> e
    "before-final": 1,
    "after-final": 1,
}
CRASH_VISIBILITY_TIMEOUT = 3
_CRASH_LINE = re.compile(r"fault injection: crashing at (\S+) \(run (\S+), node (\S+)\)")


def test_the_table_names_every_checkpoint() -> None:
    assert tuple(EXPECTED_HITS) == CHECKPOINTS


async def test_a_clean_run_reaches_exactly_the_enumerated_checkpoints(rel: RelHarness) -> None:
    recorder = StepRecorder()
    services = await rel.build(registry, blueprints, start=False, engine=EngineOptions(fault_hook=recorder))
    run_id = await services.adapter.start_run("fan", rel.context("clean"))
    recorder.steps.clear()  # the caller's enqueue of the start node is not the worker's
    await services.adapter.start()
    await wait_until(lambda: recorder.counts(run_id)["after-final"] >= 1, timeout=30, message="after-final")
    status = await wait_final(services, run_id)
    assert status["status"] == "completed", status
    assert dict(recorder.counts(run_id)) == EXPECTED_HITS


async def _crash_case(rel: RelHarness, driver: AzureServices, step: str, n: int, workdir: Path) -> None:
    env = rel.env
    queue_name = f"{env.queue_name}-{step}-{n}"
    for name in (queue_name, f"{queue_name}-poison"):
        async with plain_queue_client(env.queue_connection_string, name) as qc:
            with contextlib.suppress(ResourceExistsError):
                await qc.create_queue()
    try:
        async with plain_queue_client(env.queue_connection_string, queue_name) as qc:
            starter = Engine(registry=registry, blueprints=blueprints, run_store=driver.adapter.run_store,
                             status_store=driver.adapter.status_store, coordination=driver.adapter.coordination,
                             queue=AzureJobQueue(qc))
            run_id = await starter.start_run("fan", rel.context(f"tok-{step}-{n}"), run_id=f"crash-{step}-{n}")

        log_path = workdir / f"{step}-{n}.log"
        proc = await spawn_worker(worker_env(rel.settings_env(FLOWCRAFT_QUEUE_NAME=queue_name), **{
            CRASH_ENV: f"{step}:{n}", "REL_VISIBILITY_TIMEOUT": str(CRASH_VISIBILITY_TIMEOUT),
            "REL_CONCURRENCY": "1", "REL_COUNTER_PREFIX": rel.prefix}), log_path)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        finally:
            code = await stop_process(proc)
        log = log_path.read_text(errors="replace")
        assert code == CRASH_EXIT_CODE, f"worker for {step}:{n} exited {code}, not by the fault hook:\n{log[-3000:]}"
        crash = _CRASH_LINE.search(log)
        assert crash and crash.group(1) == f"{step}:{n}" and crash.group(2) == run_id, log[-3000:]
        crashed_node = crash.group(3)

        # A clean worker (a new process would do the same; this one shares the test's loop) takes over.
        clean = await rel.build(registry, blueprints, FLOWCRAFT_QUEUE_NAME=queue_name)
        status = await wait_final(clean, run_id, timeout=45)
        assert status["status"] == "completed", (step, n, status)

        redis = driver.redis
        assert await redis.get(final_key(rel.prefix, run_id)) == "1", f"{step}:{n}: final status written != once"
        stored = await records(driver, run_id)
        assert stored == Counter({f"0:{node}": 1 for node in NODES}), (step, n, stored)
        context = status["result"]["context"]
        token = f"tok-{step}-{n}"
        for node in NODES:
            assert context[f"k_{node}"] == {"token": token, "node": node}, (step, n, node, context)
        assert context["_outputs.e"] == {"token": token, "keys": ["k_a", "k_b", "k_c", "k_d"], "foreign": []}

        runs = {node: int(await redis.get(exec_key(rel.prefix, run_id, node)) or 0) for node in NODES}
        join_reran = step == "after-execute" and crashed_node == "e"
        assert runs["e"] == (2 if join_reran else 1), (step, n, crashed_node, runs)
        assert all(1 <= count <= 2 for count in runs.values()), (step, n, crashed_node, runs)
    finally:
        for name in (queue_name, f"{queue_name}-poison"):
            async with plain_queue_client(env.queue_connection_string, name) as qc:
                with contextlib.suppress(ResourceNotFoundError):
                    await qc.delete_queue()


@pytest.mark.parametrize("step", CHECKPOINTS)
async def test_a_worker_killed_at_each_checkpoint_loses_nothing(rel: RelHarness, step: str, tmp_path: Path) -> None:
    driver = await rel.build(registry, blueprints, start=False)
    cases = [_crash_case(rel, driver, step, n, tmp_path) for n in range(1, EXPECTED_HITS[step] + 1)]
    results = await asyncio.gather(*cases, return_exceptions=True)
    failures = [f"{step}:{n}: {r!r}" for n, r in enumerate(results, 1) if isinstance(r, BaseException)]
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r
    assert not failures, "\n".join(failures)
