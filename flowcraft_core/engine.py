"""The workflow engine: one job (one node execution) at a time, over the store protocols.

Both runtimes are this engine: the in-process FlowRuntime drives it with in-memory stores and an asyncio
queue, the Azure adapter with Cosmos DB, Redis and Storage Queues. Every step of ``handle_job`` is
idempotent, so a job delivered twice, or a worker killed between two steps, changes nothing:

1. load the run (one read); drop the job when the run stopped or the job is not ours;
2. execute the node unless its record exists (a redelivery), decide its routes, commit one record
   holding output, context changes and routes (one write; the first writer wins);
3. route from the stored record: pass each target's join gate (Redis, only for real joins), enqueue
   what fired, walk what was skipped (dead-path elimination), resolve terminal nodes;
4. when every reachable terminal node ended, write the final status exactly once.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from . import json_policy
from .children import CHILD, SUBFLOW_DIRECTIVE, ChildRuns, child_record
from .context import NodeContextView
from .errors import (
    BlueprintError,
    ExpressionError,
    InvalidJobError,
    NodeExecutionError,
    RunStateError,
    UnknownRunError,
)
from .events import EventBus, LoggingEventBus, Middleware
from .executor import NodeExecutor, resolve_input
from .expressions import Evaluator, SafeEvaluator
from .frontier import delivered, run_may_complete, took_exit, unreleased_predecessors
from .graph import ITERATION_BASE, CompiledGraph, compile_graph, entry_node_ids
from .models import NodeDefinition, WorkflowBlueprint
from .nodes import CancelSignal, NodeContext, NodeResult
from .protocols import (
    FINAL_STATUSES,
    CoordinationStore,
    Job,
    JobQueue,
    NodeRecord,
    Route,
    RunHeader,
    RunState,
    RunStore,
    StatusStore,
)
from .routing import edge_kind, plan_routes

logger = logging.getLogger("flowcraft.engine")
T = TypeVar("T")

# Cosmos DB item ids may not contain / \ ? # and must stay short; we keep run ids to a safe alphabet.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@=+-]{0,127}$")
DEFAULT_COORDINATION_TTL = 7 * 24 * 3600

# A fault-injection hook called at each checkpoint of handle_job with (step, run id, node id); see
# flowcraft_dev.faults. None (the default) disables checkpoints entirely.
FaultHook = Callable[[str, str, str | None], Awaitable[None] | None]


def validate_run_id(run_id: str) -> str:
    """Return the run id, or raise ValueError saying what is wrong with it."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            "run id must be 1-128 characters of letters, digits and . _ : @ = + -, starting with a "
            f"letter or digit (got {str(run_id)[:64]!r})"
        )
    return run_id


@dataclass
class JobOutcome:
    """What handling one job did, for logs, metrics and tests."""

    status: str
    run_id: str
    node_id: str
    detail: str = ""
    enqueued: list[str] = field(default_factory=list)
    executed: bool = False


@dataclass
class EngineOptions:
    """Tunables of the engine."""

    coordination_ttl_seconds: int = DEFAULT_COORDINATION_TTL
    # Status items must stay below Cosmos DB's 2 MB item limit; a larger final context is left in
    # the contexts container and assembled on read.
    result_context_limit_bytes: int = 1_500_000
    # How often a worker refreshes a run's lastUpdated while executing its nodes.
    touch_interval_seconds: float = 30.0
    # How long a delivery's claim on executing a join lasts (see Engine._claim_join). A crashed
    # holder's own redelivery reclaims at once; other deliveries wait this long (or the reconciler).
    claim_ttl_seconds: int = 300
    # Pauses before re-reading a run whose snapshot does not yet show the record that scheduled a job.
    stale_read_retry_delays: tuple[float, ...] = (0.05, 0.2, 0.5)
    # Fault injection for reliability tests (flowcraft_dev.faults); never set in production.
    fault_hook: FaultHook | None = None


class RouteLog(list[str]):
    """The keys of the jobs one routing enqueued, and whether a join gate it passed still waits.

    A gate that answered "wait" is decided later by another predecessor's arrival, whose job then
    continues the branch: so a routing that enqueued nothing and left no gate waiting ended a branch,
    and only such a job needs to ask whether the run is finished (see ``Engine._complete_if_finished``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.waited: set[str] = set()
        self.decided: set[str] = set()

    def gate(self, gate: str, decision: str) -> None:
        """Note a gate's answer (order-free: one routing may arrive at a gate twice, concurrently)."""
        (self.waited if decision == "wait" else self.decided).add(gate)

    def merge(self, other: RouteLog) -> None:
        """Take over what a nested routing enqueued and met."""
        self.extend(other)
        self.waited |= other.waited
        self.decided |= other.decided

    @property
    def ended_branch(self) -> bool:
        """True when this routing continued no branch (nothing enqueued, no gate left waiting)."""
        return not self and not (self.waited - self.decided)


class Engine:
    """Executes jobs of runs of registered blueprints over pluggable stores."""

    def __init__(
        self,
        *,
        registry: Mapping[str, Any],
        blueprints: Mapping[str, WorkflowBlueprint] | None,
        run_store: RunStore,
        status_store: StatusStore,
        coordination: CoordinationStore,
        queue: JobQueue,
        evaluator: Evaluator | None = None,
        event_bus: EventBus | None = None,
        middleware: Sequence[Middleware] = (),
        dependencies: Mapping[str, Any] | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        from .builtins import BUILTIN_IMPLEMENTATIONS

        self.registry = dict(registry)
        self.blueprints: dict[str, WorkflowBlueprint] = {}
        # Blueprints refused at registration, with every lint problem: runs of them are refused too.
        self.broken: dict[str, list[str]] = {}
        self.run_store = run_store
        self.status_store = status_store
        self.coordination = coordination
        self.queue = queue
        self.evaluator: Evaluator = evaluator or SafeEvaluator()
        self.events: EventBus = event_bus or LoggingEventBus()
        self.middleware = list(middleware)
        self.dependencies = dict(dependencies or {})
        self.options = options or EngineOptions()
        self.executor = NodeExecutor(registry=self.registry, builtins=BUILTIN_IMPLEMENTATIONS,
                                     event_bus=self.events, middleware=self.middleware,
                                     stop_check=self._stop_reason)
        self._graphs: dict[str, CompiledGraph] = {}
        self._signals: dict[str, set[CancelSignal]] = {}
        self._last_touch: dict[str, float] = {}
        # Runs this process saw stop (failed, cancelled, completed, or told so by a heartbeat): a node of
        # such a run that was still executing commits nothing (its snapshot predates the stop).
        self._stopped_runs: dict[str, None] = {}
        self.fault_hook: FaultHook | None = self.options.fault_hook
        self.children = ChildRuns(self)
        deployed = dict(blueprints or {})
        for bp in deployed.values():
            # At start-up a broken blueprint is logged (once, by id) and refused, the others still serve;
            # the whole set is known, so a subflow naming a blueprint that is not deployed is refused too.
            self.add_blueprint(bp, strict=False, deployed=deployed)

    # ------------------------------------------------------------------ blueprints
    def add_blueprint(self, bp: WorkflowBlueprint, *, strict: bool = True,
                      deployed: Mapping[str, WorkflowBlueprint] | None = None) -> None:
        """Lint and register (or replace) a blueprint; a blueprint with problems is refused.

        ``strict`` raises BlueprintError listing every problem; otherwise the refusal is logged.
        ``deployed`` is the full set being registered, against which subflow ids are checked.
        """
        self._graphs.pop(bp.id, None)
        problems = self.blueprint_problems(bp, deployed)
        if not problems:
            self.blueprints[bp.id] = bp
            self.broken.pop(bp.id, None)
            return
        self.blueprints.pop(bp.id, None)
        if self.broken.get(bp.id) != problems:
            logger.error("blueprint %s refused, %d problem(s): %s", bp.id, len(problems), "; ".join(problems))
        self.broken[bp.id] = problems
        if strict:
            raise BlueprintError(f"blueprint {bp.id!r} has {len(problems)} problem(s)", problems)

    def blueprint_problems(self, bp: WorkflowBlueprint,
                           deployed: Mapping[str, WorkflowBlueprint] | None = None) -> list[str]:
        """Every lint problem of a blueprint against this engine's registry and evaluator."""
        from .lint import lint_blueprint

        # Without the full set, a subflow's child may be registered after its parent: checked at run time.
        issues = lint_blueprint(bp, self.registry, blueprints=deployed)
        if not isinstance(self.evaluator, SafeEvaluator):
            # A custom evaluator may accept what the safe one refuses.
            issues = [i for i in issues if i.code != "bad-expression"]
        return [str(i) for i in issues]

    def graph(self, blueprint_id: str) -> CompiledGraph:
        """The compiled graph of a registered blueprint (compiled once per process)."""
        graph = self._graphs.get(blueprint_id)
        if graph is None:
            bp = self.blueprints.get(blueprint_id)
            if bp is None and blueprint_id in self.broken:
                problems = self.broken[blueprint_id]
                raise BlueprintError(f"blueprint {blueprint_id!r} was refused: {len(problems)} problem(s)", problems)
            if bp is None:
                raise BlueprintError(f"unknown blueprint {blueprint_id!r}",
                                     [f"known blueprints: {', '.join(sorted(self.blueprints)) or 'none'}"])
            graph = compile_graph(bp)
            self._graphs[blueprint_id] = graph
        return graph

    # ------------------------------------------------------------------ run control
    async def start_run(self, blueprint_id: str, context: Mapping[str, Any] | None = None,
                        run_id: str | None = None, *, trusted_id: bool = False) -> str:
        """Create a run (status, header, initial context) and enqueue its entry nodes."""
        graph = self.graph(blueprint_id)
        if run_id is None:
            run_id = uuid.uuid4().hex
        elif not trusted_id:
            validate_run_id(run_id)
        initial = dict(context or {})
        json_policy.check(initial, what="the initial context")  # refused before anything is stored
        entries = entry_node_ids(graph)
        if not entries:
            raise BlueprintError(f"blueprint {blueprint_id!r} has no start node", ["(root): no start node"])
        created = time.time()
        await self.status_store.create(run_id, blueprint_id, created)
        await self.run_store.create_run(RunHeader(run_id, blueprint_id, graph.version, created,
                                                  initial))
        await self.events.emit({"type": "workflow:start", "payload": {"runId": run_id,
                                                                      "blueprintId": blueprint_id}})
        for node_id in entries:
            await self._enqueue(Job(run_id, blueprint_id, node_id))
        logger.info("run %s started: blueprint %s, entry nodes %s", run_id, blueprint_id, entries)
        return run_id

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> None:
        """Stop scheduling nodes of a run, signal its running nodes, and end it cancelled."""
        status = await self.status_store.get(run_id)
        if status is None:
            raise UnknownRunError(f"run {run_id!r} does not exist")
        if status["status"] in FINAL_STATUSES:
            raise RunStateError(f"run {run_id!r} already ended with status {status['status']!r}")
        await self._cancel_run(run_id, reason)

    async def _cancel_run(self, run_id: str, reason: str) -> None:
        """Mark the run cancelled, signal its nodes, finalize it, and cancel its children and tell its parent."""
        await self.run_store.mark(run_id, "cancelled", {"reason": reason})
        self._note_stopped(run_id)
        for signal in self._signals.get(run_id, set()):
            signal.cancel(reason)
        finalized = await self.status_store.finalize(run_id, "cancelled", reason=reason)
        if finalized:
            await self.events.emit({"type": "workflow:cancelled", "payload": {"runId": run_id, "reason": reason}})
            logger.info("run %s cancelled: %s", run_id, reason)
        await self.coordination.forget_run(run_id)
        await self.children.cancel_children(run_id, reason)
        if finalized:
            await self.children.notify_parent(run_id)

    def signal_run(self, run_id: str, reason: str) -> None:
        """Tell this process's running nodes of a run that it was stopped elsewhere."""
        self._note_stopped(run_id)
        for signal in list(self._signals.get(run_id, ())):
            signal.cancel(reason)

    async def resume(self, run_id: str, action: str | None = None, output: Any = None,
                     node_id: str | None = None) -> str:
        """Continue an awaiting run: complete its waiting node with output and route by action."""
        state = await self.run_store.load(run_id)
        if state is None:
            raise UnknownRunError(f"run {run_id!r} does not exist")
        if state.stopped:
            raise RunStateError(f"run {run_id!r} has ended")
        waiting = [r for r in waiting_records(state) if node_id is None or r.node_id == node_id]
        if not waiting:
            # Not a node of this run: perhaps one of a child run that awaits (see flowcraft_core.children).
            child = await self.children.awaiting_child(state, node_id)
            if child is not None:
                subflow_node = state.record(node_id) if node_id is not None else None
                inner = None if subflow_node is not None and subflow_node.status == CHILD else node_id
                return await self.resume(child, action, output, inner)
            what = f"node {node_id!r} of run {run_id!r} is" if node_id else f"run {run_id!r} is"
            raise RunStateError(f"{what} not awaiting input")
        if len(waiting) > 1:
            raise RunStateError(f"run {run_id!r} awaits several nodes "
                                f"({', '.join(r.node_id for r in waiting)}); name the node to resume")
        rec = waiting[0]
        json_policy.check(output, what="the resume output")
        graph = self.graph(state.header.blueprint_id)
        result = NodeResult(output=output, action=action)
        try:
            plan = plan_routes(graph, rec.node_id, result, state.context, self.evaluator)
        except ExpressionError as exc:
            raise RunStateError(str(exc)) from None
        done = NodeRecord(node_id=rec.node_id, iteration=rec.iteration, status="completed", output=output,
                          action=action, changes={**rec.changes, **plan.inputs}, deletes=rec.deletes,
                          routes=plan.routes, attempts=rec.attempts, started_at=rec.started_at,
                          finished_at=time.time_ns() // 1_000_000)
        if not await self.run_store.replace(run_id, done, expected_status="awaiting"):
            raise RunStateError(f"node {rec.node_id!r} of run {run_id!r} was resumed concurrently")
        # Like handle_job, the run stays "awaiting" while any node (or child run) still waits for input;
        # otherwise nothing would set it back once the resumed branch ends, and the run would look
        # stalled. A child's parent hears of the change and follows.
        await self.children.refresh_status(run_id)
        await self._enqueue(Job(run_id, state.header.blueprint_id, rec.node_id, rec.iteration))
        logger.info("run %s resumed at node %s with action %r", run_id, rec.node_id, action)
        return rec.node_id

    # ------------------------------------------------------------------ jobs
    async def handle_job(self, job: Job, *, delivery_id: str | None = None) -> JobOutcome:
        """Execute and route one job; idempotent under redelivery.

        ``delivery_id`` identifies the queue message (stable across its redeliveries); it lets a join's
        redelivered message take back the execution claim its crashed first delivery left behind.
        """
        state = await self.run_store.load(job.run_id)
        if state is None:
            raise InvalidJobError(f"job for unknown run {job.run_id!r} (node {job.node_id!r})")
        if state.header.blueprint_id != job.blueprint_id:
            raise InvalidJobError(f"job names blueprint {job.blueprint_id!r} but run {job.run_id!r} runs "
                                  f"{state.header.blueprint_id!r}")
        if state.stopped:
            await self._finish_completed(state)
            return JobOutcome("dropped", job.run_id, job.node_id, "run stopped")
        try:
            graph = self.graph(job.blueprint_id)
        except BlueprintError as exc:
            await self._fail_run(job.run_id, f"blueprint {job.blueprint_id!r} is not deployed: {exc.message}")
            return JobOutcome("failed", job.run_id, job.node_id, "unknown blueprint")
        if graph.version != state.header.blueprint_version:
            await self._fail_run(job.run_id, (
                f"blueprint {job.blueprint_id!r} changed while the run was in flight "
                f"(run started on version {state.header.blueprint_version}, workers have "
                f"{graph.version})"))
            return JobOutcome("failed", job.run_id, job.node_id, "blueprint version mismatch")
        node = graph.nodes.get(job.node_id) or _dynamic_nodes(state).get(job.node_id)
        if node is None:
            raise InvalidJobError(f"run {job.run_id!r} has no node {job.node_id!r}")

        record = state.record(job.node_id, job.iteration)
        replay = record is not None
        executed = False
        if record is None:
            if not _scheduled(state, graph, node.id, job.iteration):
                # A replica that has not yet seen the predecessor's commit (Cosmos DB reads across
                # sessions may lag by milliseconds) looks the same as a forged job: read again first.
                state = await self._reload_until_scheduled(state, graph, node.id, job)
            if not _scheduled(state, graph, node.id, job.iteration):
                # Only a stored record (or the run's start) schedules a node; a job naming a node that
                # nothing routed to (a forged or misrouted message, a branch not taken) must not run it.
                raise InvalidJobError(f"run {job.run_id!r} did not schedule node {job.node_id!r}: no stored "
                                      "record routes to it and it is not a start node")
            if _is_join(graph, node):
                state = await self._require_released(state, graph, node, job)
                held, released_by = await self._claim_join(job, delivery_id)
                if not held:
                    # Another delivery of this join (a duplicate message, or an eager re-enqueue) is
                    # executing it right now; that one commits and routes. Executing it twice would
                    # run the join's code twice, so this delivery is dropped.
                    return JobOutcome("busy", job.run_id, job.node_id, "another delivery is executing this join")
                await self._checkpoint("after-claim", job.run_id, job.node_id)
                state = await self._await_visible(state, job, released_by)
            started_ms = time.time_ns() // 1_000_000
            record = json_policy.checked_record(await self._execute(state, graph, node, job))
            record.started_at, record.finished_at = started_ms, time.time_ns() // 1_000_000
            executed = True
            await self._checkpoint("after-execute", job.run_id, job.node_id)
            if self._stopped_while_running(state):
                # The run failed, was cancelled or completed while the node ran: nothing of a
                # stopped run is committed (its output must not land in the ended run's context).
                return JobOutcome("dropped", job.run_id, job.node_id, "run stopped while the node ran",
                                  executed=True)
            record.delivery = delivery_id
            record, new = await self.run_store.commit(job.run_id, record)
            await self._checkpoint("after-commit", job.run_id, job.node_id)
            replay = not new
            if new:
                await self._emit_changes(job, record)
        await self._maybe_touch(job.run_id, state.header.created_at)

        if record.status == CHILD or (record.child is not None and replay):
            child_outcome = await self._advance_child(state, graph, node, record, job, delivery_id, executed)
            if isinstance(child_outcome, JobOutcome):
                return child_outcome
            record, replay = child_outcome

        if record.status == "failed":
            err = record.error or {}
            await self._fail_run(job.run_id, f"node {record.node_id!r} failed on attempt "
                                 f"{err.get('attempt', 1)}: {err.get('message', 'unknown error')}",
                                 errors=[err])
            return JobOutcome("failed", job.run_id, job.node_id, err.get("message", ""), executed=executed)
        if record.status == "awaiting":
            await self.status_store.set_status(job.run_id, "awaiting", extra={"awaiting": _awaiting(state, record)})
            await self.events.emit({"type": "workflow:awaiting", "payload": {"runId": job.run_id,
                                                                             "nodeId": job.node_id}})
            await self.children.notify_parent(job.run_id, header=state.header)
            return JobOutcome("awaiting", job.run_id, job.node_id, executed=executed)
        if record.wake_at is not None and record.wake_at > time.time():
            await self._enqueue(job, delay_seconds=record.wake_at - time.time())
            return JobOutcome("sleeping", job.run_id, job.node_id, f"until {record.wake_at:.3f}",
                              executed=executed)
        if replay and record.delivery is not None and record.delivery != delivery_id and record.wake_at is None:
            # Another message committed this record, and that message routes it: if its worker died
            # first, its redelivery (same message id) routes it then. Routing again here would enqueue
            # successors that do not have a record yet a second time, and their duplicates would do the
            # same further down: duplicates would multiply along the graph. (A sleep's record is routed
            # by its wake-up message instead; the reconciler routes every record whoever committed it.)
            return JobOutcome("completed", job.run_id, job.node_id, "duplicate delivery", executed=executed)
        enqueued = await self._route(state, graph, node, record, eager=replay)
        if enqueued.ended_branch:
            await self._complete_if_finished(job.run_id)
        return JobOutcome("completed", job.run_id, job.node_id, "replayed" if replay else "",
                          enqueued=enqueued, executed=executed)

    async def reconcile(self, run_id: str) -> int:
        """Re-derive what a run should be doing from its stored records and enqueue what is missing."""
        status = await self.status_store.get(run_id)
        if status is None or status["status"] in FINAL_STATUSES:
            return 0
        state = await self.run_store.load(run_id)
        if state is None:
            await self.status_store.finalize(run_id, "failed", reason="run state is missing from the store")
            return 0
        # A marker without a final status: whoever wrote it died before finishing (or is about to
        # finish). Finish it the same way, so the final status, the event, the children and the parent
        # are as that writer would have left them; marking again is idempotent, and only one finalize wins.
        if state.cancelled is not None:
            await self._cancel_run(run_id, state.cancelled)
            return 0
        if state.failed is not None:
            await self._fail_run(run_id, str(state.failed.get("reason")),
                                 errors=list(state.failed.get("errors") or []))
            return 0
        graph = self.graph(state.header.blueprint_id)
        dynamic = _dynamic_nodes(state)
        enqueued = RouteLog()
        for node_id in entry_node_ids(graph):
            if state.record(node_id) is None:
                enqueued.append(await self._enqueue(Job(run_id, state.header.blueprint_id, node_id)))
        for rec in sorted(state.records.values(), key=lambda r: r.seq):
            node = graph.nodes.get(rec.node_id) or dynamic.get(rec.node_id)
            if node is None:
                continue
            if rec.status == "failed":
                err = rec.error or {}
                await self._fail_run(run_id, f"node {rec.node_id!r} failed: {err.get('message')}", errors=[err])
                return 0
            if rec.status == "awaiting":
                continue
            if rec.status == CHILD:
                # A continuation asks the child's status: it repairs one lost between the child's end
                # and this run's commit, and is a no-op while the child runs.
                enqueued.append(await self._enqueue(Job(run_id, state.header.blueprint_id, rec.node_id,
                                                        rec.iteration)))
                continue
            if rec.wake_at is not None and rec.wake_at > time.time():
                # Its delayed wake-up message is on the queue; once the wake time has passed without
                # routing, the branch below routes it here instead.
                continue
            enqueued.extend(await self._route(state, graph, node, rec, eager=True))
        if not enqueued:
            # Nothing was missing: the run may only have lost the job that would have completed it.
            await self._complete_if_finished(run_id)
        await self.status_store.touch(run_id)
        logger.info("reconciled run %s: enqueued %d job(s) %s", run_id, len(enqueued), enqueued[:20])
        return len(enqueued)

    # ------------------------------------------------------------------ internals
    async def _execute(self, state: RunState, graph: CompiledGraph, node: NodeDefinition, job: Job) -> NodeRecord:
        view = NodeContextView(state.context)
        signal = CancelSignal()
        self._signals.setdefault(job.run_id, set()).add(signal)
        try:
            def arrived(pred: str) -> bool:
                # A join sees the predecessors whose edge into it was taken into this iteration: inside
                # a loop in this round (not outputs left over from earlier ones); from an inner loop, in
                # the round that left it; from outside every loop, its one run.
                return delivered(state, graph, pred, node.id, job.iteration)

            node_input = resolve_input(node, graph, view, via=job.via, arrived=arrived)
            deps = {**self.dependencies, "runtime": self}
            ctx = NodeContext(context=view, input=node_input, params=copy.deepcopy(node.params),
                              dependencies=deps, run_id=job.run_id, node_id=node.id, signal=signal,
                              blueprint_id=job.blueprint_id)
            ctx.iteration = job.iteration
            fallback = node.config.fallback
            fallback_node = graph.nodes.get(fallback) if fallback is not None and fallback != node.id else None
            outcome = await self.executor.execute(node, ctx, fallback_node=fallback_node)
        finally:
            signals = self._signals.get(job.run_id)
            if signals is not None:
                signals.discard(signal)
                if not signals:
                    self._signals.pop(job.run_id, None)
        if outcome.error is not None or outcome.result is None:
            err = outcome.error or NodeExecutionError(node.id, "no result", outcome.attempts)
            extra = node.model_extra or {}
            if "batchIndex" in extra:
                # A batch worker's id is generated: say which item of the list failed.
                err.reason = f"batch item {extra['batchIndex']} (of {extra.get('batchSize', '?')}) failed: {err.reason}"
            return NodeRecord(node_id=node.id, iteration=job.iteration, status="failed",
                              error=err.to_dict(), attempts=outcome.attempts)
        result = outcome.result
        changes, deletes = view.changes()
        directives = result.directives
        if directives.get(SUBFLOW_DIRECTIVE):
            return child_record(node, job, directives[SUBFLOW_DIRECTIVE],
                                NodeRecord(node_id=node.id, iteration=job.iteration, changes=changes,
                                           deletes=deletes, attempts=outcome.attempts))
        if directives.get("await"):
            return NodeRecord(node_id=node.id, iteration=job.iteration, status="awaiting", changes=changes,
                              deletes=deletes, attempts=outcome.attempts,
                              output={"awaiting": directives["await"]})
        try:
            # Only edges with a condition or transform read the context: copy it only for them.
            plan = plan_routes(graph, node.id, result, view.lazy_dict(), self.evaluator,
                               node_input=node_input)
        except ExpressionError as exc:
            err = NodeExecutionError(node.id, str(exc), outcome.attempts)
            return NodeRecord(node_id=node.id, iteration=job.iteration, status="failed",
                              error=err.to_dict(), attempts=outcome.attempts)
        for event in plan.events:
            event["payload"]["runId"] = job.run_id
            await self.events.emit(event)
        try:
            # Ids must not clash with the blueprint's nodes nor with another node's dynamic nodes (the
            # same node may reuse its own ids in a later loop iteration).
            dynamic = None
            if result.dynamic_nodes:  # the scan of every record is O(records): only when needed
                others = {dyn["id"] for rec in state.records.values() if rec.node_id != node.id
                          for dyn in rec.dynamic_nodes or []}
                dynamic = _validate_dynamic(node.id, result.dynamic_nodes, taken=set(graph.nodes) | others)
        except RunStateError as exc:
            return NodeRecord(node_id=node.id, iteration=job.iteration, status="failed",
                              error=NodeExecutionError(node.id, str(exc), outcome.attempts).to_dict(),
                              attempts=outcome.attempts)
        wake_at = None
        if directives.get("sleep_seconds") is not None:
            wake_at = time.time() + float(directives["sleep_seconds"])
        return NodeRecord(node_id=node.id, iteration=job.iteration, status="completed", output=result.output,
                          action=result.action, changes={**changes, **plan.inputs}, deletes=deletes,
                          routes=plan.routes, dynamic_nodes=dynamic, wake_at=wake_at,
                          attempts=outcome.attempts)

    async def _route(self, state: RunState, graph: CompiledGraph, node: NodeDefinition, record: NodeRecord,
                     *, eager: bool) -> RouteLog:
        """Pass the gates of a completed record's targets and enqueue or skip them."""
        run_id = state.header.run_id
        enqueued = RouteLog()
        it = record.iteration
        extra = node.model_extra or {}
        if record.dynamic_nodes:
            # Batch workers lead to their gather node; other dynamic nodes are an expansion of this
            # node, and its own edges are taken once all of them finished (see below).
            jobs = [Job(run_id, state.header.blueprint_id, dyn["id"], it) for dyn in record.dynamic_nodes
                    if not (eager and state.record(dyn["id"], it) is not None)]
            enqueued.extend(await _bounded(self._enqueue(job) for job in jobs))
            return enqueued
        if "gatherNodeId" in extra and node.id not in graph.nodes:
            gather = str(extra["gatherNodeId"])
            siblings = int(extra.get("batchSize", 1))
            await self._arrive(state, graph, gather, it, node.id, True, enqueued, eager=eager, expected=siblings)
            return enqueued
        if "parentNodeId" in extra and node.id not in graph.nodes:
            parent_id = str(extra["parentNodeId"])
            gate = f"{run_id}|gate|{it}|expand:{parent_id}"
            decision, first = await self.coordination.arrive(
                gate, node.id, done=True, expected=int(extra.get("expansionSize", 1)), strategy="all",
                ttl_seconds=self.options.coordination_ttl_seconds)
            await self._checkpoint("after-gate", run_id, parent_id)
            enqueued.gate(gate, decision)
            if decision != "fire" or not (first or eager):
                return enqueued
            parent = graph.nodes.get(parent_id) or _dynamic_nodes(state).get(parent_id)
            parent_record = state.record(parent_id, it)
            if parent is None or parent_record is None:
                raise InvalidJobError(f"run {run_id!r}: dynamic node {node.id!r} names unknown parent {parent_id!r}")
            # Every node the parent expanded into finished: route the parent's own edges now.
            without_dynamic = copy.copy(parent_record)
            without_dynamic.dynamic_nodes = None
            enqueued.merge(await self._route(state, graph, parent, without_dynamic, eager=eager))
            return enqueued

        if not graph.out_edges.get(node.id):
            return enqueued  # a terminal node ends its branch

        merged: dict[tuple[str, str], bool] = {}
        for route in record.routes:
            key = (route.target, route.kind)
            merged[key] = merged.get(key, False) or route.taken
        steps: list[Awaitable[Any]] = []
        for (target, kind), taken in merged.items():
            target_it = graph.target_iteration(node.id, target, kind, it)
            if kind == "back":
                if taken:
                    job = Job(run_id, state.header.blueprint_id, target, target_it, via=node.id)
                    if not (eager and state.record(target, target_it) is not None):
                        steps.append(self._enqueue_into(enqueued, job))
                continue
            if kind == "exit":
                if taken:
                    steps.append(self._arrive(state, graph, target, target_it, node.id, True, enqueued,
                                              eager=eager))
                continue
            steps.append(self._arrive(state, graph, target, target_it, node.id, taken, enqueued, eager=eager))
        # Targets are independent: a wide fan-out sends its messages concurrently instead of one by one.
        await _bounded(steps)
        for header in _ended_loops(graph, node.id, merged):
            await self._end_loop(state, graph, header, node.id, it, merged, enqueued, eager=eager)
        return enqueued

    async def _end_loop(self, state: RunState, graph: CompiledGraph, header: str, controller: str, it: int,
                        merged: Mapping[tuple[str, str], bool], enqueued: RouteLog, *, eager: bool) -> None:
        """A loop ended (its controller did not go round again): exits it never took are dead paths.

        Only this loop's exits, in this round of the loops around it: an inner loop ending says nothing
        about the outer loop's exits.
        """
        taken_here = {t for (t, kind), taken in merged.items() if kind == "exit" and taken}
        for edge in graph.loop_exit_edges(header):
            if edge.source == controller and edge.target in taken_here:
                continue
            target_it = graph.target_iteration(controller, edge.target, "exit", it)
            if edge.source != controller and took_exit(state, graph, edge.source, edge.target, target_it):
                continue  # another node of the loop took this exit in one of its rounds
            await self._arrive(state, graph, edge.target, target_it, edge.source, False, enqueued, eager=eager)

    async def _arrive(self, state: RunState, graph: CompiledGraph, target: str, it: int, source: str,
                      done: bool, enqueued: RouteLog, *, eager: bool, expected: int | None = None,
                      dead_levels: int = 0) -> None:
        run_id = state.header.run_id
        tnode = graph.nodes.get(target)
        if tnode is None:
            return
        preds = graph.forward_predecessors.get(target, [])
        count = expected if expected is not None else len(preds)
        strategy = tnode.config.join_strategy
        if count <= 1:
            decision, first = ("fire" if done else "skip"), True
        else:
            gate = f"{run_id}|gate|{it}|{target}"
            decision, first = await self.coordination.arrive(
                gate, source, done=done, expected=count, strategy=strategy,
                ttl_seconds=self.options.coordination_ttl_seconds)
            await self._checkpoint("after-gate", run_id, target)
            enqueued.gate(gate, decision)
        if decision == "wait" or not (first or eager):
            return
        if decision == "fire":
            if eager and state.record(target, it) is not None:
                return
            enqueued.append(await self._enqueue(Job(run_id, state.header.blueprint_id, target, it)))
            return
        # Skipping into a loop from outside skips every round of it: the walk may leave those loops again.
        entered = graph.depth(target) - graph.common_depth(source, target)
        await self._skip(state, graph, target, it, enqueued, eager=eager, dead_levels=dead_levels + entered)

    async def _skip(self, state: RunState, graph: CompiledGraph, node_id: str, it: int, enqueued: RouteLog,
                    *, eager: bool, dead_levels: int) -> None:
        """Dead-path elimination: a node none of whose predecessors ran is skipped, and so on below it.

        ``dead_levels`` counts the loops this walk entered (so they are dead as a whole); leaving any
        other loop is left to that loop's end (a branch skipped in one round says nothing about its exit).
        """
        await self.events.emit({"type": "node:skipped", "payload": {"runId": state.header.run_id,
                                                                    "nodeId": node_id}})
        for edge in graph.out_edges.get(node_id, []):
            if graph.is_back_edge(edge):
                loop = graph.loops.get(edge.target)
                if loop is not None and loop.back_sources == {node_id} and dead_levels < graph.depth(node_id):
                    # A skipped loop controller is its loop's end: no round follows this one, so the
                    # exits the loop never took are dead paths (unless the whole loop is being skipped,
                    # whose exits this walk reaches itself).
                    await self._end_loop(state, graph, edge.target, node_id, it, {}, enqueued, eager=eager)
                continue
            leaving = graph.depth(node_id) - graph.common_depth(node_id, edge.target)
            if leaving > dead_levels:
                continue
            target_it = graph.target_iteration(node_id, edge.target, "forward", it)
            await self._arrive(state, graph, edge.target, target_it, node_id, False, enqueued,
                               eager=eager, dead_levels=dead_levels - leaving)

    async def _complete_if_finished(self, run_id: str) -> None:
        """Complete the run if the completion rule holds on a fresh read of its records.

        Called by every job whose routing ended a branch. Of two such jobs finishing at the same time,
        the later one's read sees both commits (each commits before it reads), so one of them completes
        the run; a read that lags (another session's replica) only delays it to the reconciler's pass.
        """
        state = await self.run_store.load(run_id)
        if state is None or state.cancelled is not None or state.failed is not None:
            return
        if not state.completed:
            graph = self.graph(state.header.blueprint_id)
            if not run_may_complete(state, graph, time.time()):
                return
            # Stop the run before publishing its status: once a client sees "completed", no late or
            # duplicate job of the run executes anything (handle_job drops jobs of a stopped run).
            await self.run_store.mark(run_id, "completed", {})
            self._note_stopped(run_id)
            state.completed = True
        await self._finish_completed(state)

    async def _finish_completed(self, state: RunState) -> None:
        """Write the final status of a run marked completed (again, if a crash interrupted it)."""
        if not state.completed:
            return
        run_id = state.header.run_id
        context = state.context
        size = len(json.dumps(context, separators=(",", ":")))
        result: dict[str, Any]
        if size <= self.options.result_context_limit_bytes:
            result = {"context": context, "errors": []}
        else:
            result = {"contextTruncated": True, "contextBytes": size, "contextKeys": sorted(context)[:500],
                      "errors": []}
        await self._checkpoint("before-final", run_id)
        finalized = await self.status_store.finalize(run_id, "completed", result=result)
        await self._checkpoint("after-final", run_id)
        if finalized:
            await self.events.emit({"type": "workflow:finish", "payload": {"runId": run_id,
                                                                           "status": "completed"}})
            logger.info("run %s completed (%d node executions)", run_id, len(state.records))
            await self.coordination.forget_run(run_id)
            self.run_store.forget(run_id)
            await self.children.notify_parent(run_id, header=state.header)

    async def _fail_run(self, run_id: str, reason: str, errors: list[dict[str, Any]] | None = None) -> None:
        await self.run_store.mark(run_id, "failed", {"reason": reason, "errors": errors or []})
        self._note_stopped(run_id)
        for signal in self._signals.get(run_id, set()):
            signal.cancel(reason)
        await self._checkpoint("before-final", run_id)
        finalized = await self.status_store.finalize(run_id, "failed", reason=reason,
                                                     result={"errors": errors or []})
        await self._checkpoint("after-final", run_id)
        if finalized:
            await self.events.emit({"type": "workflow:finish", "payload": {"runId": run_id, "status": "failed",
                                                                           "reason": reason}})
            logger.warning("run %s failed: %s", run_id, reason)
            await self.coordination.forget_run(run_id)
            await self.children.cancel_children(run_id, reason)
            await self.children.notify_parent(run_id)

    async def _advance_child(self, state: RunState, graph: CompiledGraph, node: NodeDefinition,
                             record: NodeRecord, job: Job, delivery_id: str | None,
                             executed: bool) -> tuple[NodeRecord, bool] | JobOutcome:
        """A subflow node's job: start or follow its child run (flowcraft_core.children).

        Returns the record to go on with, and whether routing it is a replay, when this delivery
        resolved it (the child ended); else the outcome of this job: still waiting on the child, or a
        duplicate that must not route.
        """
        if record.status == CHILD:
            record, resolved = await self.children.advance(state, graph, node, record, job, delivery_id)
            if record.status == CHILD:
                return JobOutcome("waiting", job.run_id, job.node_id,
                                  f"waiting on child run {(record.child or {}).get('runId')}", executed=executed)
            if resolved:
                return record, False
        if delivery_id is not None and record.delivery == delivery_id:
            return record, True  # this message resolved it before its worker died: it routes it now
        # Resolved by another continuation, which routes it (or the reconciler, if that one died).
        return JobOutcome("completed", job.run_id, job.node_id, "duplicate continuation", executed=executed)

    async def enqueue_job(self, job: Job, *, delay_seconds: float = 0) -> str:
        """Send a job (with its event); what the engine's own steps use."""
        return await self._enqueue(job, delay_seconds=delay_seconds)

    async def emit_changes(self, job: Job, record: NodeRecord) -> None:
        """Emit the context:change events of a committed record."""
        await self._emit_changes(job, record)

    async def execute_node(self, state: RunState, graph: CompiledGraph, node: NodeDefinition,
                           job: Job) -> NodeRecord:
        """Execute a node on a run snapshot and return its (uncommitted) record."""
        return await self._execute(state, graph, node, job)

    def _note_stopped(self, run_id: str) -> None:
        self._stopped_runs[run_id] = None
        if len(self._stopped_runs) > 10_000:
            self._stopped_runs.pop(next(iter(self._stopped_runs)))

    async def _stop_reason(self, run_id: str) -> str | None:
        """Why the run stopped (failed, cancelled, completed), or None while it runs; reads its status."""
        if run_id in self._stopped_runs:
            return "the run has ended"
        status = await self.status_store.get(run_id)
        if status is not None and status["status"] in FINAL_STATUSES:
            self._note_stopped(run_id)
            return str(status.get("reason") or f"the run {status['status']}")
        return None

    def _stopped_while_running(self, state: RunState) -> bool:
        """True when the run stopped after this job loaded it (as far as this process can tell).

        In process the state is live; distributed, this process saw the stop itself (it failed or
        cancelled the run) or its heartbeat read the final status while the node ran.
        """
        return state.stopped or state.header.run_id in self._stopped_runs

    async def _enqueue_into(self, enqueued: list[str], job: Job) -> None:
        enqueued.append(await self._enqueue(job))

    async def _enqueue(self, job: Job, *, delay_seconds: float = 0) -> str:
        await self.queue.enqueue(job, delay_seconds=delay_seconds)
        await self._checkpoint("after-enqueue", job.run_id, job.node_id)
        await self.events.emit({"type": "job:enqueued", "payload": {**job.to_dict(), "delay": delay_seconds}})
        return job.key

    async def _checkpoint(self, step: str, run_id: str, node_id: str | None = None) -> None:
        """A named point of handle_job where fault injection may crash the process (no-op by default)."""
        hook = self.fault_hook
        if hook is None:
            return
        pending = hook(step, run_id, node_id)
        if pending is not None:
            await pending

    async def _require_released(self, state: RunState, graph: CompiledGraph, node: NodeDefinition,
                                job: Job) -> RunState:
        """The run's snapshot if its stored records release this join; else refuse the job.

        The gates in Redis release a join only after its predecessors committed, so a genuine job finds
        their records (after a re-read, if this replica lags); a forged or misrouted message for a join
        that is scheduled but not released does not, and must not run it early on part of its input.
        """
        missing = unreleased_predecessors(state, graph, node, job.iteration)
        for delay in self.options.stale_read_retry_delays:
            if not missing:
                return state
            await asyncio.sleep(delay)
            fresh = await self.run_store.load(job.run_id)
            if fresh is not None:
                state = fresh
            missing = unreleased_predecessors(state, graph, node, job.iteration)
        if missing:
            raise InvalidJobError(f"run {job.run_id!r}: join {node.id!r} is not released by the stored "
                                  f"records: {', '.join(sorted(missing)[:10])} can still arrive")
        return state

    async def _reload_until_scheduled(self, state: RunState, graph: CompiledGraph, node_id: str,
                                      job: Job) -> RunState:
        for delay in self.options.stale_read_retry_delays:
            await asyncio.sleep(delay)
            fresh = await self.run_store.load(job.run_id)
            if fresh is None:
                return state
            state = fresh
            if _scheduled(state, graph, node_id, job.iteration):
                logger.info("run %s: node %s became visible after a stale read", job.run_id, node_id)
                break
        return state

    async def _claim_join(self, job: Job, delivery_id: str | None) -> tuple[bool, set[str]]:
        """Claim the execution of a join for this delivery (one Redis call).

        Returns whether it may execute (a duplicate message is refused while another delivery holds the
        claim; this very message's redelivery takes it back) and the predecessors that arrived done.
        """
        token = delivery_id or uuid.uuid4().hex
        held, members = await self.coordination.claim(
            job.run_id, job.key, token, self.options.claim_ttl_seconds,
            gate=f"{job.run_id}|gate|{job.iteration}|{job.node_id}")
        return held, {member for member, done in members.items() if done}

    async def _await_visible(self, state: RunState, job: Job, required: set[str]) -> RunState:
        """A snapshot holding the records of every predecessor that released this join.

        Cosmos DB reads from another session may lag a write by milliseconds; a join must not run on a
        snapshot that misses a predecessor's output. If it stays missing, the job fails and its message is
        retried (this delivery keeps the join's claim).
        """
        def missing(st: RunState) -> set[str]:
            return required - {rec.node_id for rec in st.records.values()}

        for delay in (0.0, *self.options.stale_read_retry_delays):
            if not missing(state):
                return state
            if delay:
                await asyncio.sleep(delay)
                fresh = await self.run_store.load(job.run_id)
                if fresh is not None:
                    state = fresh
        if missing(state):
            raise RuntimeError(f"run {job.run_id!r}: join {job.node_id!r} was released by "
                               f"{sorted(missing(state))} whose records are not visible yet; retrying later")
        return state

    async def _emit_changes(self, job: Job, record: NodeRecord) -> None:
        for key, value in record.changes.items():
            await self.events.emit({"type": "context:change", "payload": {
                "runId": job.run_id, "sourceNode": record.node_id, "key": key, "value": value}})

    async def _maybe_touch(self, run_id: str, created_at: float) -> None:
        # A run's status item was written when it was created: no refresh is due before an interval.
        now = time.time()
        if now - self._last_touch.get(run_id, created_at) >= self.options.touch_interval_seconds:
            self._last_touch[run_id] = now
            if len(self._last_touch) > 10_000:
                self._last_touch = {k: v for k, v in self._last_touch.items()
                                    if now - v < self.options.touch_interval_seconds}
            await self.status_store.touch(run_id)

    # ------------------------------------------------------------------ reads
    async def run_context(self, run_id: str) -> dict[str, Any]:
        """The current folded context of a run."""
        state = await self.run_store.load(run_id)
        if state is None:
            raise UnknownRunError(f"run {run_id!r} does not exist")
        return dict(state.context)


def _ended_loops(graph: CompiledGraph, node_id: str, merged: Mapping[tuple[str, str], bool]) -> list[str]:
    """Headers of the loops whose back edges from this node were all not taken (those loops ended)."""
    taken_by_loop: dict[str, bool] = {}
    for (target, kind), taken in merged.items():
        if kind != "back":
            continue
        header = graph.loop_of_back_edge(node_id, target)
        if header is not None:
            taken_by_loop[header] = taken_by_loop.get(header, False) or taken
    return [header for header, taken in taken_by_loop.items() if not taken]


def _is_join(graph: CompiledGraph, node: NodeDefinition) -> bool:
    """True for a node that several jobs can release: more than one predecessor, or a batch gather."""
    from .builtins.names import BATCH_GATHER

    return len(graph.forward_predecessors.get(node.id, [])) > 1 or node.uses == BATCH_GATHER


async def _bounded(steps: Iterable[Awaitable[T]], limit: int = 32) -> list[T]:
    """Await steps concurrently, at most ``limit`` at a time, in order of results."""
    gate = asyncio.Semaphore(limit)

    async def one(step: Awaitable[T]) -> T:
        async with gate:
            return await step

    return list(await asyncio.gather(*(one(step) for step in steps)))


def _scheduled(state: RunState, graph: CompiledGraph, node_id: str, iteration: int = 0) -> bool:
    """True when the run can have scheduled this node in this iteration: a start node, a dynamic node (or
    its gather) of a stored record, or the target of a route a stored record took into this iteration.
    O(records); only for first executions."""
    if iteration != 0 and node_id in graph.nodes and not graph.in_cycle(node_id):
        return False  # only nodes of a loop run in iterations other than 0
    if not graph.in_edges.get(node_id) or node_id in entry_node_ids(graph):
        return iteration == 0 or (bool(graph.in_edges.get(node_id)) and _scheduled_by_record(
            state, graph, node_id, iteration))
    return _scheduled_by_record(state, graph, node_id, iteration)


def _scheduled_by_record(state: RunState, graph: CompiledGraph, node_id: str, iteration: int) -> bool:
    # Fast path, O(in-degree): the record of a predecessor whose iteration follows from this one (same
    # loops, a loop around, or the previous round for a back edge) normally holds the taken route, found
    # by key and edge position. It only ever answers True on a stored taken route into this iteration,
    # so falling back to the full scan keeps the same answers.
    for edge in graph.in_edges[node_id]:
        source = edge.source
        kind = edge_kind(graph, edge)
        if kind == "back":
            loop = graph.loops.get(node_id)
            step = ITERATION_BASE ** (loop.depth - 1) if loop is not None else 1
            candidate = iteration - step
        elif graph.depth(source) <= graph.common_depth(source, node_id):
            candidate = graph.truncate_iteration(node_id, iteration, graph.depth(source))
        else:
            continue  # leaves an inner loop: its round is not known from this iteration
        if candidate < 0 or graph.target_iteration(source, node_id, kind, candidate) != iteration:
            continue
        rec = state.record(source, candidate)
        if rec is None:
            continue
        routes = rec.routes
        for i in graph.out_positions.get(source, {}).get(node_id, ()):
            if i < len(routes) and routes[i].target == node_id and routes[i].taken:
                return True
    for rec in state.records.values():
        for route in rec.routes:
            if (route.taken and route.target == node_id
                    and graph.target_iteration(rec.node_id, node_id, route.kind, rec.iteration) == iteration):
                return True
        if rec.iteration == iteration:
            for dyn in rec.dynamic_nodes or ():
                if dyn.get("id") == node_id or dyn.get("gatherNodeId") == node_id:
                    return True
    return False


def waiting_records(state: RunState) -> list[NodeRecord]:
    """The records of nodes that wait for external input (wait, webhook)."""
    return [r for r in state.records.values() if r.status == "awaiting"]


def _awaiting(state: RunState, record: NodeRecord) -> list[str]:
    ids = {r.node_id for r in state.records.values() if r.status == "awaiting"}
    ids.add(record.node_id)
    return sorted(ids)


def _dynamic_nodes(state: RunState) -> dict[str, NodeDefinition]:
    found: dict[str, NodeDefinition] = {}
    for rec in state.records.values():
        for dyn in rec.dynamic_nodes or []:
            found[dyn["id"]] = NodeDefinition.model_validate(dyn)
    return found


def _validate_dynamic(node_id: str, dynamic: list[dict[str, Any]] | None,
                      taken: Collection[str] = ()) -> list[dict[str, Any]] | None:
    """Check the dynamic nodes a node returned; tag expansions (not batch workers) with their parent."""
    if not dynamic:
        return None
    checked: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(dynamic):
        if isinstance(raw, NodeDefinition):
            raw = raw.to_wire()
        if not isinstance(raw, dict) or not raw.get("id") or not raw.get("uses"):
            raise RunStateError(f"node {node_id!r} returned dynamic node {i} without id and uses")
        dyn_id = str(raw["id"])
        if dyn_id in taken or dyn_id in seen:
            raise RunStateError(f"node {node_id!r} returned dynamic node {i} with id {dyn_id!r}, "
                                "which is already a node of the run")
        seen.add(dyn_id)
        try:
            checked.append(NodeDefinition.model_validate(raw).to_wire())
        except ValidationError as exc:
            raise RunStateError(f"node {node_id!r} returned an invalid dynamic node {i}: {exc}") from None
    if not any("gatherNodeId" in dyn for dyn in checked):
        for dyn in checked:
            dyn["parentNodeId"] = node_id
            dyn["expansionSize"] = len(checked)
    return checked


__all__ = ["Engine", "EngineOptions", "JobOutcome", "Route", "validate_run_id"]
