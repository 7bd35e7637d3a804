"""Subflows as durable child runs of the same engine, queue and stores.

A ``subflow`` node does not run its blueprint itself: its execution commits a record with status
``child`` naming a child run, and starts that run (its own status item, carrying ``parentRunId`` and
``parentNodeId``; every child node its own job). The parent node's job then ends: no worker waits for
the child. Whenever the child changes in a way the parent cares about (it ended, it started or stopped
awaiting input) the engine enqueues the parent node's job again, a *continuation*; a continuation
carries nothing but ids and decides everything from stored state, so a duplicate or a late one is
harmless:

- child still running or awaiting: the parent's status follows (``awaiting`` while a child awaits,
  naming the child run and its waiting nodes in ``awaitingChildren``), nothing else;
- child completed: the record becomes ``completed`` (outputs mapped back as the in-memory subflow
  did), guarded by its stored status (the first continuation wins), and is routed;
- child failed: while attempts remain (``config.maxRetries``) a new child run starts (attempt n+1,
  its own id); then the fallback runs in place of the node; then the node fails.

Child run ids are derived from the parent run, node, iteration and attempt, so a redelivered job
starts no second child. The reconciler enqueues a continuation for every ``child`` record, which
repairs a continuation lost between the child's end and the parent's commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .context import input_key, output_key
from .errors import ExpressionError, FlowcraftError, NodeExecutionError, RunStateError, UnknownRunError
from .graph import CompiledGraph, entry_node_ids
from .models import NodeDefinition
from .nodes import NodeResult
from .protocols import FINAL_STATUSES, Job, NodeRecord, RunHeader, RunState, RunStatus
from .routing import plan_routes

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger("flowcraft.children")

CHILD: Literal["child"] = "child"
# The directive a subflow node returns: {"blueprintId", "context", "input"?}.
SUBFLOW_DIRECTIVE = "subflow"
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@=+-")


def child_run_id(parent_run_id: str, node_id: str, iteration: int = 0, attempt: int = 1) -> str:
    """The child run's id: readable when it fits, always unique per (parent, node, iteration, attempt).

    The hash covers the exact tuple, so ids that read alike (``a.b`` + ``c`` and ``a`` + ``b.c``) never
    collide; the result always passes ``validate_run_id`` (at most 128 safe characters).
    """
    digest = hashlib.sha256(json.dumps([parent_run_id, node_id, iteration, attempt]).encode()).hexdigest()
    readable = f"{parent_run_id}.{node_id}"
    if iteration:
        readable += f".{iteration}"
    if attempt != 1:
        readable += f".a{attempt}"
    candidate = f"{readable}-{digest[:10]}"
    if len(candidate) <= 128 and set(candidate) <= _SAFE:
        return candidate
    prefix = "".join(ch for ch in parent_run_id[:64] if ch in _SAFE) or "run"
    return f"{prefix}-sf-{digest[:40]}"


@dataclass
class ParentLink:
    """Where a child run reports to: the parent run, its subflow node and that node's iteration."""

    run_id: str
    node_id: str
    blueprint_id: str
    iteration: int = 0

    def to_status(self) -> dict[str, Any]:
        """The fields a child's status item carries."""
        return {"parentRunId": self.run_id, "parentNodeId": self.node_id,
                "parentBlueprintId": self.blueprint_id, "parentIteration": self.iteration}

    @classmethod
    def from_status(cls, item: Mapping[str, Any] | None) -> ParentLink | None:
        """The link of a child's status item, or None for a top-level run."""
        if not item or not item.get("parentRunId"):
            return None
        return cls(str(item["parentRunId"]), str(item.get("parentNodeId")), str(item.get("parentBlueprintId")),
                   int(item.get("parentIteration") or 0))


def child_record(node: NodeDefinition, job: Job, spec: Mapping[str, Any], base: NodeRecord) -> NodeRecord:
    """The ``child`` record a subflow node's execution commits (first attempt)."""
    run_id = child_run_id(job.run_id, node.id, job.iteration, 1)
    info = {"runId": run_id, "blueprintId": str(spec["blueprintId"]), "attempt": 1, "runs": [run_id],
            "context": dict(spec.get("context") or {}), "input": spec.get("input")}
    _set_deadline(info, node)
    return NodeRecord(node_id=node.id, iteration=job.iteration, status=CHILD, changes=base.changes,
                      deletes=base.deletes, attempts=base.attempts, child=info)


class ChildRuns:
    """The engine's handling of child runs (one per engine)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ starting
    async def start(self, parent: RunState, record: NodeRecord) -> None:
        """Create the child run a ``child`` record names, unless it exists (idempotent)."""
        engine = self.engine
        info = record.child or {}
        run_id = str(info["runId"])
        blueprint_id = str(info["blueprintId"])
        graph = engine.graph(blueprint_id)
        context = dict(info.get("context") or {})
        if info.get("input") is not None and not context:
            for start in graph.start_node_ids:
                context[input_key(start)] = info["input"]
        link = ParentLink(parent.header.run_id, record.node_id, parent.header.blueprint_id, record.iteration)
        created = time.time()
        with contextlib.suppress(RunStateError):
            await engine.status_store.create(run_id, blueprint_id, created, extra=link.to_status())
        try:
            await engine.run_store.create_run(RunHeader(run_id, blueprint_id, graph.version, created, context,
                                                        parent=link.to_status()))
        except RunStateError:
            # Started by an earlier delivery; if it died before enqueuing the entry nodes, the child's
            # reconciliation enqueues them (a second enqueue here would run them twice).
            return
        await engine.events.emit({"type": "workflow:start", "payload": {
            "runId": run_id, "blueprintId": blueprint_id, "parentRunId": link.run_id, "parentNodeId": link.node_id}})
        for node_id in entry_node_ids(graph):
            await engine.enqueue_job(Job(run_id, blueprint_id, node_id))
        deadline = info.get("deadline")
        if deadline is not None:
            # The node's timeout bounds the child run: a continuation at the deadline stops it.
            await engine.enqueue_job(Job(link.run_id, link.blueprint_id, link.node_id, link.iteration),
                                     delay_seconds=max(0.0, float(deadline) - time.time()))
        logger.info("run %s: node %s started child run %s (blueprint %s)", link.run_id, record.node_id,
                    run_id, blueprint_id)

    # ------------------------------------------------------------------ continuing the parent
    async def advance(self, state: RunState, graph: CompiledGraph, node: NodeDefinition, record: NodeRecord,
                      job: Job, delivery_id: str | None) -> tuple[NodeRecord, bool]:
        """Move a ``child`` record on from its child's stored status.

        Returns the record as it now stands and whether this delivery resolved it (and so routes it).
        A record still ``child`` means: nothing to do until the child changes again.
        """
        engine = self.engine
        info = record.child or {}
        child_id = str(info.get("runId"))
        status = await engine.status_store.get(child_id)
        if status is None:
            await self.start(state, record)
            return record, False
        deadline = info.get("deadline")
        if status["status"] != "completed" and deadline is not None and time.time() >= float(deadline):
            # Timed out (the child may already be cancelled by an earlier continuation): a failed attempt.
            if status["status"] not in FINAL_STATUSES:
                with contextlib.suppress(RunStateError, UnknownRunError):
                    await engine.cancel(child_id, f"the subflow node {node.id!r} timed out")
            status = {**status, "status": "failed", "result": None,
                      "reason": f"timed out after {node.config.timeout:g} ms"}
        if status["status"] not in FINAL_STATUSES:
            await self.refresh_status(state.header.run_id)
            return record, False
        if status["status"] == "completed":
            resolved = await self._completed(state, graph, node, record, child_id, status)
        elif status["status"] == "failed" and int(info.get("attempt", 1)) < node.config.max_retries:
            return await self._retry(state, node, record, job, status), False
        elif status["status"] == "failed" and self._fallback_uses(graph, node) is not None:
            resolved = await self._fallback(state, graph, node, record, job, status)
        else:
            resolved = self._failed(node, record, status)
        resolved.child = resolved.child or info
        resolved.delivery = delivery_id
        if await engine.run_store.replace(job.run_id, resolved, expected_status=CHILD):
            if resolved.status == "completed":
                await engine.emit_changes(job, resolved)
            await self.refresh_status(state.header.run_id)
            return resolved, True
        # Another continuation resolved it first: that one routes it.
        fresh = await engine.run_store.load(job.run_id)
        stored = fresh.record(node.id, job.iteration) if fresh is not None else None
        return (stored or record), False

    async def _completed(self, state: RunState, graph: CompiledGraph, node: NodeDefinition, record: NodeRecord,
                         child_id: str, status: Mapping[str, Any]) -> NodeRecord:
        engine = self.engine
        info = record.child or {}
        result = status.get("result") or {}
        final = result.get("context")
        if not isinstance(final, dict):  # a large context is left in the run store (see EngineOptions)
            final = await engine.run_context(child_id)
        changes: dict[str, Any] = dict(record.changes)
        outputs = node.params.get("outputs")
        output: Any
        if isinstance(outputs, dict) and outputs:
            for parent_key, child_key in outputs.items():
                changes[str(parent_key)] = _child_value(final, str(child_key))
            output = final
        else:
            terminals = engine.graph(str(info["blueprintId"])).terminal_node_ids
            if len(terminals) == 1:
                output = final.get(output_key(terminals[0]))
            else:
                output = {t: final.get(output_key(t)) for t in terminals}
        merged = {**state.context, **changes}
        try:
            plan = plan_routes(graph, node.id, NodeResult(output=output), merged, engine.evaluator,
                               node_input=info.get("input"))
        except ExpressionError as exc:
            return NodeRecord(node_id=node.id, iteration=record.iteration, status="failed",
                              error=NodeExecutionError(node.id, str(exc), record.attempts).to_dict(),
                              attempts=record.attempts, started_at=record.started_at, finished_at=_now_ms())
        for event in plan.events:
            event["payload"]["runId"] = state.header.run_id
            await engine.events.emit(event)
        await engine.events.emit({"type": "node:finish", "payload": {
            "runId": state.header.run_id, "nodeId": node.id, "uses": node.uses, "childRunId": child_id,
            "attempts": int(info.get("attempt", 1))}})
        return NodeRecord(node_id=node.id, iteration=record.iteration, status="completed", output=output,
                          changes={**changes, **plan.inputs}, deletes=record.deletes, routes=plan.routes,
                          attempts=int(info.get("attempt", 1)), started_at=record.started_at,
                          finished_at=_now_ms())

    async def _retry(self, state: RunState, node: NodeDefinition, record: NodeRecord, job: Job,
                     status: Mapping[str, Any]) -> NodeRecord:
        """Start the next attempt's child run (a new id); concurrent continuations write the same record."""
        engine = self.engine
        info = dict(record.child or {})
        attempt = int(info.get("attempt", 1)) + 1
        run_id = child_run_id(job.run_id, node.id, job.iteration, attempt)
        info.update({"runId": run_id, "attempt": attempt, "runs": [*info.get("runs", []), run_id]})
        _set_deadline(info, node)
        nxt = NodeRecord(node_id=node.id, iteration=record.iteration, status=CHILD, changes=record.changes,
                         deletes=record.deletes, attempts=record.attempts, child=info, delivery=record.delivery,
                         started_at=record.started_at)
        await engine.events.emit({"type": "node:retry", "payload": {
            "runId": job.run_id, "nodeId": node.id, "attempt": attempt - 1, "error": _child_detail(status)}})
        if not await engine.run_store.replace(job.run_id, nxt, expected_status=CHILD):
            fresh = await engine.run_store.load(job.run_id)
            stored = fresh.record(node.id, job.iteration) if fresh is not None else None
            return stored or record
        await self.start(state, nxt)
        return nxt

    @staticmethod
    def _fallback_uses(graph: CompiledGraph, node: NodeDefinition) -> str | None:
        return node.config.fallback

    async def _fallback(self, state: RunState, graph: CompiledGraph, node: NodeDefinition, record: NodeRecord,
                        job: Job, status: Mapping[str, Any]) -> NodeRecord:
        """Run the fallback in place of the subflow node, once, on the node's input."""
        engine = self.engine
        uses = str(node.config.fallback)
        params = node.params
        named = graph.nodes.get(uses)
        if named is not None:  # a node id of the blueprint: its implementation and params
            uses, params = named.uses, named.params
        config = node.config.model_copy(update={"max_retries": 1, "fallback": None})
        stand_in = node.model_copy(update={"uses": uses, "params": params, "config": config})
        await engine.events.emit({"type": "node:fallback", "payload": {
            "runId": job.run_id, "nodeId": node.id, "uses": node.uses, "fallback": uses,
            "error": _child_detail(status)}})
        resolved = await engine.execute_node(state, graph, stand_in, job)
        if resolved.status == CHILD:
            # Its child would need an id of its own and a second round of continuations: not supported.
            problem = NodeExecutionError(node.id, f"{_child_detail(status)}; its fallback {uses!r} is a "
                                         "subflow, which cannot stand in for a subflow node", record.attempts)
            return NodeRecord(node_id=node.id, iteration=record.iteration, status="failed",
                              error=problem.to_dict(), attempts=record.attempts)
        if resolved.status == "failed":
            err = dict(resolved.error or {})
            err["message"] = f"{_child_detail(status)} (and its fallback failed: {err.get('message')})"
            resolved.error = err
        return resolved

    @staticmethod
    def _failed(node: NodeDefinition, record: NodeRecord, status: Mapping[str, Any]) -> NodeRecord:
        attempt = int((record.child or {}).get("attempt", 1))
        err = NodeExecutionError(node.id, _child_detail(status), attempt).to_dict()
        err["childRunId"] = status.get("runId")
        return NodeRecord(node_id=node.id, iteration=record.iteration, status="failed", error=err,
                          attempts=attempt, started_at=record.started_at, finished_at=_now_ms())

    # ------------------------------------------------------------------ status and notification
    async def notify_parent(self, run_id: str, item: Mapping[str, Any] | None = None, *,
                            header: RunHeader | None = None) -> None:
        """Enqueue the parent node's continuation when this run is a child (after it changed)."""
        if header is not None:
            item = header.parent or {}  # the run's own header says whether it has a parent: no read
        if item is None:
            item = await self.engine.status_store.get(run_id)
        link = ParentLink.from_status(item)
        if link is not None:
            await self.engine.enqueue_job(Job(link.run_id, link.blueprint_id, link.node_id, link.iteration))

    async def refresh_status(self, run_id: str) -> None:
        """Set a run ``awaiting`` while one of its nodes or child runs awaits input, ``running`` otherwise.

        Tells the run's own parent when that changed, so awaiting climbs every level of nesting.
        """
        engine = self.engine
        state = await engine.run_store.load(run_id)
        item = await engine.status_store.get(run_id)
        if state is None or item is None or item["status"] in FINAL_STATUSES:
            return
        own = sorted({r.node_id for r in state.records.values() if r.status == "awaiting"})
        children: list[dict[str, Any]] = []
        for rec in state.records.values():
            if rec.status != CHILD or not rec.child:
                continue
            child = await engine.status_store.get(str(rec.child["runId"]))
            if child is not None and child["status"] == "awaiting":
                children.append({"runId": child["runId"], "nodeId": rec.node_id,
                                 "awaiting": list(child.get("awaiting") or [])})
        children.sort(key=lambda c: (c["nodeId"], c["runId"]))
        status: RunStatus = "awaiting" if own or children else "running"
        awaiting = sorted({*own, *(c["nodeId"] for c in children)})
        if (item["status"] == status and list(item.get("awaiting") or []) == awaiting
                and list(item.get("awaitingChildren") or []) == children):
            return
        await engine.status_store.set_status(run_id, status, extra={"awaiting": awaiting,
                                                                    "awaitingChildren": children})
        if item["status"] != status:
            await self.notify_parent(run_id, item)

    async def cancel_children(self, run_id: str, reason: str) -> None:
        """Cancel every child run of this run that has not ended (and theirs, recursively)."""
        state = await self.engine.run_store.load(run_id)
        if state is None:
            return
        for rec in state.records.values():
            if rec.status == CHILD and rec.child:
                with contextlib.suppress(RunStateError, UnknownRunError):
                    await self.engine.cancel(str(rec.child["runId"]), f"parent run {run_id!r} stopped: {reason}")

    async def awaiting_child(self, state: RunState, node_id: str | None) -> str | None:
        """The child run a resume of this run should go to (None when none fits).

        ``node_id`` may name the subflow node (its child is resumed at its only waiting node) or a
        waiting node of a child, at any depth; without it the run must have exactly one awaiting child.
        """
        found: list[str] = []
        for rec in state.records.values():
            if rec.status != CHILD or not rec.child:
                continue
            child_id = str(rec.child["runId"])
            item = await self.engine.status_store.get(child_id)
            if item is None or item["status"] != "awaiting":
                continue
            if node_id is None or node_id == rec.node_id or await self._awaits(child_id, node_id):
                found.append(child_id)
        if len(found) > 1:
            raise RunStateError(f"run {state.header.run_id!r} has several awaiting child runs "
                                f"({', '.join(sorted(found))}); resume one by its run id or name its node")
        return found[0] if found else None

    async def _awaits(self, run_id: str, node_id: str) -> bool:
        state = await self.engine.run_store.load(run_id)
        if state is None:
            return False
        if any(r.node_id == node_id and r.status == "awaiting" for r in state.records.values()):
            return True
        return await self.awaiting_child(state, node_id) is not None

    async def children_of(self, run_id: str) -> list[dict[str, Any]]:
        """Every child run of a run (every attempt): run id, node, iteration, attempt and status."""
        state = await self.engine.run_store.load(run_id)
        if state is None:
            return []
        found: list[dict[str, Any]] = []
        for rec in sorted(state.records.values(), key=lambda r: r.seq):
            info = rec.child
            if not info:
                continue
            for attempt, child_id in enumerate(info.get("runs") or [info.get("runId")], start=1):
                item = await self.engine.status_store.get(str(child_id))
                found.append({"runId": child_id, "nodeId": rec.node_id, "iteration": rec.iteration,
                              "attempt": attempt, "status": item["status"] if item else "missing"})
        return found


def subflow_spec(params: Mapping[str, Any], node_id: str, known: Mapping[str, Any]) -> str:
    """The child blueprint id of a subflow node's params, or a clear error."""
    blueprint_id = params.get("blueprintId")
    if blueprint_id is None:
        raise FlowcraftError(f"subflow node {node_id!r} is missing params.blueprintId")
    if str(blueprint_id) not in known:
        raise FlowcraftError(f"subflow node {node_id!r}: blueprint {blueprint_id!r} is not registered")
    return str(blueprint_id)


def _set_deadline(info: dict[str, Any], node: NodeDefinition) -> None:
    timeout = node.config.timeout
    if timeout is None:
        info.pop("deadline", None)
    else:
        info["deadline"] = time.time() + timeout / 1000


def _now_ms() -> int:
    """Epoch milliseconds, as node records keep their timings (the history's startedAt/finishedAt)."""
    return time.time_ns() // 1_000_000


def _child_value(context: Mapping[str, Any], key: str) -> Any:
    value = context.get(output_key(key))
    return context.get(key) if value is None else value


def _child_detail(status: Mapping[str, Any]) -> str:
    errors = (status.get("result") or {}).get("errors") or []
    detail = errors[0].get("message") if errors and isinstance(errors[0], dict) else status.get("reason")
    return (f"subflow {status.get('blueprintId')!r} (child run {status.get('runId')!r}) ended "
            f"{status.get('status')}: {detail}")


__all__ = ["CHILD", "ChildRuns", "ParentLink", "child_run_id"]
