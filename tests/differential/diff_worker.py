"""A worker process of the differential tests: the production wiring plus trace and fault knobs.

Like ``python -m flowcraft_core worker`` (settings from the environment, ``build_services``, the adapter's
polling worker, SIGTERM stops it), with:

- ``DIFF_BLUEPRINTS``: a JSON file holding the blueprints to serve (the generated cases');
- ``DIFF_EVENTS``: a file this worker appends its engine events to, one JSON line each, with the time
  (``node:start``, ``node:retry``, ``node:fallback``, ``workflow:finish``, ``job:enqueued``);
- ``DIFF_FAULTS``: a JSON file {rootRunId: {"dup": bool, "delay": seconds}} read on every enqueue: jobs
  of those runs are sent twice and/or each with a random visible-later delay (so they arrive reordered);
- ``DIFF_VISIBILITY_TIMEOUT``: seconds a received message stays invisible (short, so a killed worker's
  messages come back soon).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from flowcraft_core.azure.adapter import RuntimeOptions  # noqa: E402
from flowcraft_core.azure.services import build_services  # noqa: E402
from flowcraft_core.models import WorkflowBlueprint  # noqa: E402
from flowcraft_core.protocols import Job  # noqa: E402
from flowcraft_core.settings import Settings  # noqa: E402
from tests.differential.stand_ins import REGISTRY  # noqa: E402
from tests.helpers import serve_until_signalled  # noqa: E402

TRACED = {"node:start", "node:retry", "node:fallback", "workflow:finish", "workflow:cancelled", "job:enqueued"}


class FileEventBus:
    """Appends traced events to a file, one line each, flushed at once (a SIGKILL loses nothing written)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life

    async def emit(self, event: dict[str, Any]) -> None:
        """Record one event with the time it was emitted."""
        if event.get("type") in TRACED:
            p = event.get("payload") or {}
            self.file.write(json.dumps({"t": time.time(), "type": event["type"], "runId": p.get("runId"),
                                        "blueprintId": p.get("blueprintId"), "nodeId": p.get("nodeId"),
                                        "pid": os.getpid()}) + "\n")
            self.file.flush()


class FaultyQueue:
    """The job queue, sending each job of a run with faults twice and/or delayed, as the fault file says."""

    def __init__(self, inner: Any, path: str | None) -> None:
        self.inner = inner
        self.path = path
        self.rng = random.Random(os.getpid())
        self._plan: dict[str, Any] = {}
        self._mtime = 0.0

    def plan(self, run_id: str) -> dict[str, Any]:
        """The fault plan of a run's root run."""
        if self.path and os.path.exists(self.path):
            mtime = os.path.getmtime(self.path)
            if mtime != self._mtime:
                with open(self.path, encoding="utf-8") as f:
                    self._plan = json.load(f)
                self._mtime = mtime
        return dict(self._plan.get(run_id.split(".", 1)[0], {}))

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        """Send the job (twice when duplicating), each copy delayed by up to the plan's delay."""
        plan = self.plan(job.run_id)
        copies = 2 if plan.get("dup") else 1
        for _ in range(copies):
            extra = self.rng.uniform(0, float(plan.get("delay", 0))) if plan.get("delay") else 0.0
            await self.inner.enqueue(job, delay_seconds=delay_seconds + extra)


async def main() -> int:
    """Serve jobs until SIGTERM."""
    with open(os.environ["DIFF_BLUEPRINTS"], encoding="utf-8") as f:
        blueprints = {b["id"]: WorkflowBlueprint.model_validate(b) for b in json.load(f)}
    settings = Settings.from_env()
    options = RuntimeOptions(event_bus=FileEventBus(os.environ["DIFF_EVENTS"]))
    services = await build_services(settings, registry=REGISTRY, blueprints=blueprints, runtime_options=options)
    services.adapter.engine.queue = FaultyQueue(services.adapter.engine.queue, os.environ.get("DIFF_FAULTS"))
    worker = services.adapter.worker_options
    worker.visibility_timeout = int(os.environ.get("DIFF_VISIBILITY_TIMEOUT", "3"))
    worker.max_poll_interval = 0.1
    return await serve_until_signalled(services, "diff worker ready")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    sys.exit(asyncio.run(main()))
