"""The in-process runtime: the same engine as the distributed adapter, on in-memory stores."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine, EngineOptions, validate_run_id
from .errors import FlowcraftError, InvalidJobError, UnknownRunError
from .events import EventBus, Middleware
from .expressions import Evaluator
from .memory import InMemoryCoordinationStore, InMemoryJobQueue, InMemoryRunStore, InMemoryStatusStore
from .models import WorkflowBlueprint, parse_blueprint
from .protocols import FINAL_STATUSES, Job, RunStatus

logger = logging.getLogger("flowcraft.runtime")


@dataclass
class WorkflowResult:
    """How a run ended: status, final context, errors (and the nodes it awaits, if awaiting)."""

    run_id: str
    status: str
    context: dict[str, Any]
    errors: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    awaiting: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """camelCase form for JSON output."""
        data: dict[str, Any] = {"runId": self.run_id, "status": self.status, "context": self.context,
                                "errors": self.errors}
        if self.reason:
            data["reason"] = self.reason
        if self.awaiting:
            data["awaiting"] = self.awaiting
        return data


class _PerRunQueue:
    """One asyncio queue per top-level run, so concurrent runs on one runtime drive only their own jobs.

    A child run's jobs (subflows) go to its top-level run's queue: one driver runs the whole family, and
    a child's end reaches the parent node's continuation on the same queue.
    """

    def __init__(self) -> None:
        self.queues: dict[str, InMemoryJobQueue] = {}
        self.root_of: Callable[[str], Awaitable[str]] | None = None

    def for_run(self, run_id: str) -> InMemoryJobQueue:
        queue = self.queues.get(run_id)
        if queue is None:
            queue = self.queues[run_id] = InMemoryJobQueue()
        return queue

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        root = await self.root_of(job.run_id) if self.root_of is not None else job.run_id
        await self.for_run(root).enqueue(job, delay_seconds=delay_seconds)


class _RuntimeStatusStore(InMemoryStatusStore):
    """The in-memory status store, telling the runtime when a run reached its final status."""

    def __init__(self, on_final: Callable[[str, str, bool], None]) -> None:
        super().__init__()
        self._on_final = on_final

    async def finalize(self, run_id: str, status: RunStatus, *, result: dict[str, Any] | None = None,
                       reason: str | None = None) -> bool:
        """Write the final status once, then stop the run's delayed jobs (a pending sleep)."""
        done = await super().finalize(run_id, status, result=result, reason=reason)
        if done:
            self._on_final(run_id, status, bool(self.items[run_id].get("parentRunId")))
        return done


class FlowRuntime:
    """Runs blueprints in this process, branches concurrently on asyncio; no Azure involved."""

    def __init__(
        self,
        registry: Mapping[str, Any] | None = None,
        blueprints: Mapping[str, WorkflowBlueprint] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        evaluator: Evaluator | None = None,
        event_bus: EventBus | None = None,
        middleware: Sequence[Middleware] = (),
        *,
        concurrency: int = 32,
        options: EngineOptions | None = None,
    ) -> None:
        self._queues = _PerRunQueue()
        self.engine = Engine(
            registry=registry or {}, blueprints=blueprints, run_store=InMemoryRunStore(),
            status_store=_RuntimeStatusStore(self._run_ended), coordination=InMemoryCoordinationStore(),
            queue=self._queues, evaluator=evaluator, event_bus=event_bus, middleware=middleware,
            dependencies=dependencies, options=options,
        )
        self.concurrency = max(1, concurrency)
        self._queues.root_of = self._root
        self._job_tasks: dict[str, set[asyncio.Task[None]]] = {}

    async def _root(self, run_id: str) -> str:
        """The top-level run of a (child) run: its parents' chain read from the status items."""
        seen = {run_id}
        while True:
            item = await self.engine.status_store.get(run_id)
            parent = (item or {}).get("parentRunId")
            if not parent or parent in seen:
                return run_id
            seen.add(parent)
            run_id = str(parent)

    def _run_ended(self, run_id: str, status: str, is_child: bool) -> None:
        # A cancelled or failed run may still have a sleeping branch: drop its delayed job and wake
        # the driver, which would otherwise wait for it. (A child run has no queue of its own.)
        queue = self._queues.queues.get(run_id)
        if queue is not None:
            queue.close()
        if is_child and status == "cancelled":
            # Its parent moved on (cancelled, failed, or the subflow node timed out): its nodes stop
            # now, as they did when a child ran inside the parent's task.
            current = asyncio.current_task()
            for task in list(self._job_tasks.get(run_id, ())):
                if task is not current:
                    task.cancel()

    @property
    def blueprints(self) -> dict[str, WorkflowBlueprint]:
        """Registered blueprints by id."""
        return self.engine.blueprints

    async def run(self, blueprint: WorkflowBlueprint | str | Mapping[str, Any],
                  initial_context: Mapping[str, Any] | None = None, *, run_id: str | None = None,
                  _trusted_id: bool = False) -> WorkflowResult:
        """Run a blueprint (object, dict or registered id) to its end and return the result."""
        if isinstance(blueprint, Mapping):
            blueprint = parse_blueprint(dict(blueprint))
        if isinstance(blueprint, WorkflowBlueprint):
            self.engine.add_blueprint(blueprint)
            blueprint_id = blueprint.id
        else:
            blueprint_id = blueprint
        if run_id is not None and not _trusted_id:
            validate_run_id(run_id)
        started = await self._start(blueprint_id, initial_context, run_id)
        await self._drive(started)
        return await self.result(started)

    async def _start(self, blueprint_id: str, context: Mapping[str, Any] | None, run_id: str | None) -> str:
        if run_id is None:
            return await self.engine.start_run(blueprint_id, context)
        return await self.engine.start_run(blueprint_id, context, run_id, trusted_id=True)

    async def resume(self, run_id: str, action: str | None = None, output: Any = None,
                     node_id: str | None = None) -> WorkflowResult:
        """Continue an awaiting run with an action and output, and run it to its next stop."""
        await self.engine.resume(run_id, action, output, node_id)
        # A child run's resume continues its parents too: drive the whole family.
        await self._drive(await self._root(run_id))
        return await self.result(run_id)

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        """Cancel a running run: no new node starts, running nodes see ctx.signal."""
        await self.engine.cancel(run_id, reason)

    async def result(self, run_id: str) -> WorkflowResult:
        """The run's current status and context."""
        status = await self.engine.status_store.get(run_id)
        if status is None:
            raise UnknownRunError(f"run {run_id!r} does not exist")
        context = await self.engine.run_context(run_id)
        state_status = status["status"]
        errors = list((status.get("result") or {}).get("errors") or [])
        if state_status == "running":
            state_status = "stalled"
        return WorkflowResult(run_id=run_id, status=state_status, context=context, errors=errors,
                              reason=status.get("reason"), awaiting=list(status.get("awaiting") or []))

    async def _drive(self, run_id: str) -> None:
        """Process the run's jobs with bounded concurrency until nothing is left to do."""
        queue = self._queues.for_run(run_id)
        in_flight: set[asyncio.Task[None]] = set()
        getter: asyncio.Future[Job] | None = None
        stop: asyncio.Future[Any] | None = None
        try:
            while True:
                while not queue.queue.empty() and len(in_flight) < self.concurrency:
                    job = queue.queue.get_nowait()
                    task = asyncio.create_task(self._handle(job))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    self._track(job.run_id, task)
                if not in_flight:
                    item = await self.engine.status_store.get(run_id)
                    if item is None or item["status"] in FINAL_STATUSES or queue.idle:
                        break
                waiters: set[asyncio.Future[Any]] = set(in_flight)
                getter = None
                if len(in_flight) < self.concurrency and not queue.stopped.is_set():
                    getter = asyncio.ensure_future(queue.queue.get())
                    waiters.add(getter)
                    if stop is None:
                        stop = asyncio.ensure_future(queue.stopped.wait())
                    waiters.add(stop)
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if getter is None:
                    continue
                if getter in done:
                    queue.queue.put_nowait(getter.result())
                else:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
        except asyncio.CancelledError:
            # Whoever awaited the run stopped (a timeout around run(), a subflow node's timeout or
            # cancellation): end the run as cancelled and stop its nodes instead of leaving them
            # running unobserved and the run "running" forever.
            with contextlib.suppress(FlowcraftError):
                await self.engine.cancel(run_id, "the task driving the run was cancelled")
            for task in in_flight:
                task.cancel()
            raise
        finally:
            for future in (getter, stop):
                if future is not None and not future.done():
                    future.cancel()
            queue.close()
            self._queues.queues.pop(run_id, None)

    def _track(self, run_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._job_tasks.setdefault(run_id, set())
        tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            tasks.discard(finished)
            if not tasks:
                self._job_tasks.pop(run_id, None)

        task.add_done_callback(done)

    async def _handle(self, job: Job) -> None:
        try:
            await self.engine.handle_job(job)
        except InvalidJobError as exc:
            logger.error("dropped invalid job %s: %s", job.to_dict(), exc)
        except Exception:
            logger.exception("job %s crashed", job.to_dict())
            await self.engine._fail_run(job.run_id, f"internal error while running node {job.node_id!r}")
