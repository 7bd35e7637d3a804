"""SPEC acceptance case 19: a worker killed mid-run (SIGKILL, a separate process) and restarted.

The worker is ``python -m flowcraft_core worker`` with settings from the environment, as deployed off
Functions, loading ``crash_workflows`` (next to this file). Its ``slow`` node leaves a marker file when it
starts and then runs far longer than the test: the test waits for the marker (never a blind sleep),
kills the worker, and checks how the run gets going again:

1. a new worker picks the slow node's message up once its visibility timeout (5 s here) lapses;
2. with that message lost too, only the reconciler can resume the run: it finds the run stalled
   (``lastUpdated`` older than 2 s) and re-enqueues the node; a fresh worker completes the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import crash_workflows
import pytest
from azure.storage.queue import QueueMessage
from harness import Distributed
from helpers import AzureTestEnv, wait_until

from flowcraft_core.azure.queue import parse_job
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.children import child_run_id

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VISIBILITY_TIMEOUT = 5
STARTUP_TIMEOUT = 30.0


class Workers:
    """Worker processes started by one test; any still alive are killed (by pid) at teardown."""

    def __init__(self, env: AzureTestEnv, marker_dir: Path, log_dir: Path) -> None:
        self.env = env
        self.marker_dir = marker_dir
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def environment(self) -> dict[str, str]:
        pythonpath = os.pathsep.join([str(HERE), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        return {
            **os.environ,
            **self.env.settings(),
            "COSMOS_DB_DATABASE": self.env.cosmos_database,
            "FLOWCRAFT_CREATE_RESOURCES": "true",
            "FLOWCRAFT_WORKFLOWS": "crash_workflows",
            "FLOWCRAFT_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "FLOWCRAFT_WORKER_CONCURRENCY": "4",
            crash_workflows.MARKER_DIR_ENV: str(self.marker_dir),
            "PYTHONPATH": pythonpath,
        }

    def start(self) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"worker-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "flowcraft_core", "worker", "--no-reconcile"],
                                    cwd=REPO_ROOT, env=self.environment(), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.log_dir.glob("worker-*.log")))


@pytest.fixture
def workers(azure_env: AzureTestEnv, tmp_path: Path) -> Iterator[Workers]:
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    pool = Workers(azure_env, marker_dir, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


def marker(workers: Workers, run_id: str, node_id: str, what: str) -> Path:
    return workers.marker_dir / f"{run_id}.{node_id}.{what}"


async def client(distributed: Distributed, **extra: str) -> AzureServices:
    """Services in the test process to start and watch runs; they never poll the queue."""
    return await distributed.build(crash_workflows.registry, crash_workflows.blueprints, start=False, env=extra)


async def test_killed_worker_s_job_is_picked_up_by_a_new_worker(distributed: Distributed, workers: Workers) -> None:
    services = await client(distributed)
    doomed = workers.start()
    run_id = await services.adapter.start_run("crash", {"case": "redelivery"})

    started = marker(workers, run_id, "slow", "started")
    await wait_until(started.exists, timeout=STARTUP_TIMEOUT, interval=0.05,
                     message=f"slow node started in the first worker\n{workers.logs()}")
    assert started.read_text() == str(doomed.pid)
    workers.kill(doomed)
    assert doomed.returncode == -signal.SIGKILL
    status = await services.adapter.get_status(run_id)
    assert status is not None and status["status"] == "running"

    survivor = workers.start()
    final = await services.adapter.wait_for_run(run_id, timeout=STARTUP_TIMEOUT, interval=0.1)

    assert final["status"] == "completed", f"{final}\n{workers.logs()}"
    context = final["result"]["context"]
    assert context["_outputs.first"]["pid"] == doomed.pid  # done before the crash, not redone
    assert context["_outputs.slow"] == {"node": "slow", "pid": survivor.pid, "after": "restart"}
    assert context["_outputs.last"]["pid"] == survivor.pid
    assert marker(workers, run_id, "slow", "resumed").read_text() == str(survivor.pid)


async def test_worker_killed_while_a_child_run_runs(distributed: Distributed, workers: Workers) -> None:
    """The child resumes on a new worker, the parent completes, outputs are mapped once (issue 11)."""
    services = await client(distributed)
    doomed = workers.start()
    run_id = await services.adapter.start_run("crash-parent", {"case": "child"})
    child_id = child_run_id(run_id, "sub")

    started = marker(workers, child_id, "slow", "started")
    await wait_until(started.exists, timeout=STARTUP_TIMEOUT, interval=0.05,
                     message=f"the child's slow node started in the first worker\n{workers.logs()}")
    workers.kill(doomed)
    child = await services.adapter.get_status(child_id)
    assert child is not None and child["status"] == "running" and child["parentRunId"] == run_id

    survivor = workers.start()
    final = await services.adapter.wait_for_run(run_id, timeout=STARTUP_TIMEOUT, interval=0.1)

    assert final["status"] == "completed", f"{final}\n{workers.logs()}"
    context = final["result"]["context"]
    assert context["childLast"]["pid"] == survivor.pid
    assert context["_outputs.after"]["pid"] == survivor.pid
    assert marker(workers, child_id, "slow", "resumed").read_text() == str(survivor.pid)
    state = await services.adapter.run_store.load(run_id)
    assert state is not None and sorted(state.records) == ["0:after", "0:before", "0:sub"]
    assert state.records["0:sub"].child is not None and state.records["0:sub"].child["runs"] == [child_id]


async def test_reconciler_resumes_a_run_whose_job_was_lost_with_its_worker(
    distributed: Distributed, workers: Workers,
) -> None:
    services = await client(distributed, FLOWCRAFT_STALLED_THRESHOLD_SECONDS="2")
    doomed = workers.start()
    run_id = await services.adapter.start_run("crash", {"case": "reconciler"})

    await wait_until(marker(workers, run_id, "slow", "started").exists, timeout=STARTUP_TIMEOUT, interval=0.05,
                     message=f"slow node started in the first worker\n{workers.logs()}")
    workers.kill(doomed)

    # The first node completed before the crash; the slow node's message comes back after the
    # visibility timeout. Lose it: now nothing on the queue would ever move the run again.
    async def receive_lost_job() -> QueueMessage | None:
        return await services.queue_client.receive_message(visibility_timeout=60)

    msg = await wait_until(receive_lost_job, timeout=VISIBILITY_TIMEOUT + 10, interval=0.2,
                           message="the killed worker's message reappears")
    assert msg is not None
    job = parse_job(msg.content, base64_encoded=True)
    assert (job.run_id, job.node_id) == (run_id, "slow")
    await services.queue_client.delete_message(msg)
    assert await services.queue_client.peek_messages(max_messages=32) == []
    state = await services.adapter.run_store.load(run_id)
    assert state is not None and set(state.records) == {"0:first"}

    # Stalled: still "running", and quiet for longer than the threshold.
    reconciler = services.reconciler
    await wait_until(lambda: _stalled(services, run_id), timeout=15, interval=0.2, message="run seen as stalled")
    stats = await reconciler.run()
    assert (stats.stalled_runs, stats.reconciled_runs, stats.failed_runs) == (1, 1, 0)

    fresh = workers.start()
    final = await services.adapter.wait_for_run(run_id, timeout=STARTUP_TIMEOUT, interval=0.1)

    assert final["status"] == "completed", f"{final}\n{workers.logs()}"
    context = final["result"]["context"]
    assert context["_outputs.first"]["pid"] == doomed.pid
    assert context["_outputs.slow"] == {"node": "slow", "pid": fresh.pid, "after": "restart"}
    assert context["_outputs.last"]["pid"] == fresh.pid


async def _stalled(services: AzureServices, run_id: str) -> bool:
    threshold = time.time() - services.reconciler.stalled_threshold_seconds
    return run_id in await services.reconciler.status_store.list_stalled(threshold)
