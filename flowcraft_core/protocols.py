"""The small interfaces the engine runs on, and the plain records that cross them.

The engine knows nothing of Azure: Cosmos DB, Redis and Storage Queues implement these protocols in
``flowcraft_core.azure``; ``flowcraft_core.memory`` implements them in process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

RunStatus = Literal["running", "awaiting", "completed", "failed", "cancelled", "stalled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
# "child": a subflow node whose child run has not ended yet (see flowcraft_core.children).
RecordStatus = Literal["completed", "failed", "awaiting", "external", "child"]
# Records of executions that started and still owe their end: input to a wait, or a child run's end.
PENDING_RECORD_STATUSES: frozenset[str] = frozenset({"awaiting", "child"})
GateDecision = Literal["fire", "skip", "wait"]


@dataclass(frozen=True)
class RunQuery:
    """Which status items a run listing returns (every field narrows it; empty means no filter)."""

    statuses: tuple[str, ...] = ()
    blueprint_id: str | None = None
    # createdAt in [created_from, created_to), epoch seconds.
    created_from: float | None = None
    created_to: float | None = None
    # Ended runs whose last update is older than this (retention).
    ended_before: float | None = None

    def matches(self, item: dict[str, Any]) -> bool:
        """The same filter in Python (in-memory stores)."""
        created = item.get("createdAt") or 0
        return ((not self.statuses or item.get("status") in self.statuses)
                and (self.blueprint_id is None or item.get("blueprintId") == self.blueprint_id)
                and (self.created_from is None or created >= self.created_from)
                and (self.created_to is None or created < self.created_to)
                and (self.ended_before is None or (item.get("status") in FINAL_STATUSES
                                                   and (item.get("lastUpdated") or 0) < self.ended_before)))


@dataclass
class RunPage:
    """One page of a run listing: status items, and the store's continuation (None on the last page)."""

    items: list[dict[str, Any]]
    continuation: str | None = None


def job_key(node_id: str, iteration: int = 0) -> str:
    """The identity of one execution of a node within a run."""
    return f"{iteration}:{node_id}"


@dataclass
class Route:
    """One outgoing edge's fate after a node finished: taken or not, and what kind of edge it is."""

    target: str
    taken: bool
    # forward: an ordinary edge; back: starts the next loop iteration; exit: leaves a loop.
    kind: Literal["forward", "back", "exit"] = "forward"

    def to_list(self) -> list[Any]:
        """Compact form stored in node records."""
        return [self.target, self.taken, self.kind]

    @classmethod
    def from_list(cls, data: list[Any]) -> Route:
        """Inverse of to_list."""
        return cls(target=str(data[0]), taken=bool(data[1]), kind=data[2])


@dataclass
class NodeRecord:
    """The durable result of one execution of a node: output, context changes and routing decision."""

    node_id: str
    iteration: int = 0
    status: RecordStatus = "completed"
    output: Any = None
    action: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dynamic_nodes: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None
    wake_at: float | None = None
    attempts: int = 1
    # Commit order (nanoseconds); folding the context applies records in this order.
    seq: int = 0
    # The queue message whose delivery committed the record (None in process): only that message (or
    # its redelivery) routes the record, so duplicates of it do not fan out duplicates downstream.
    delivery: str | None = None
    # When the execution started and its record was made (epoch milliseconds), for the run's history.
    started_at: int | None = None
    finished_at: int | None = None
    # A subflow node's child run: {"runId", "blueprintId", "attempt", "runs" (every attempt's run id),
    # "context" (the child's initial context), "input"}; kept once the node completed.
    child: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """The execution's identity (see job_key)."""
        return job_key(self.node_id, self.iteration)

    def to_dict(self) -> dict[str, Any]:
        """The record as stored (camelCase)."""
        data: dict[str, Any] = {
            "nodeId": self.node_id,
            "iteration": self.iteration,
            "status": self.status,
            "output": self.output,
            "action": self.action,
            "changes": self.changes,
            "deletes": self.deletes,
            "routes": [r.to_list() for r in self.routes],
            "attempts": self.attempts,
            "seq": self.seq,
        }
        if self.dynamic_nodes:
            data["dynamicNodes"] = self.dynamic_nodes
        if self.error:
            data["error"] = self.error
        if self.wake_at is not None:
            data["wakeAt"] = self.wake_at
        if self.delivery is not None:
            data["delivery"] = self.delivery
        if self.child is not None:
            data["child"] = self.child
        if self.started_at is not None:
            data["startedAt"] = self.started_at
        if self.finished_at is not None:
            data["finishedAt"] = self.finished_at
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeRecord:
        """Inverse of to_dict."""
        return cls(
            node_id=data["nodeId"],
            iteration=int(data.get("iteration", 0)),
            status=data.get("status", "completed"),
            output=data.get("output"),
            action=data.get("action"),
            changes=dict(data.get("changes") or {}),
            deletes=list(data.get("deletes") or []),
            routes=[Route.from_list(r) for r in data.get("routes") or []],
            dynamic_nodes=data.get("dynamicNodes"),
            error=data.get("error"),
            wake_at=data.get("wakeAt"),
            attempts=int(data.get("attempts", 1)),
            seq=int(data.get("seq", 0)),
            delivery=data.get("delivery"),
            started_at=data.get("startedAt"),
            finished_at=data.get("finishedAt"),
            child=data.get("child"),
        )


@dataclass
class RunHeader:
    """What a run was started with."""

    run_id: str
    blueprint_id: str
    blueprint_version: str
    created_at: float
    initial_context: dict[str, Any] = field(default_factory=dict)
    # A child run's link to its parent (the fields its status item carries too): kept with the run so
    # that ending a run needs no status read to learn whether a parent waits for it.
    parent: dict[str, Any] | None = None


@dataclass
class RunState:
    """A run as loaded by one job: its header, folded context, node records and control markers."""

    header: RunHeader
    context: dict[str, Any]
    records: dict[str, NodeRecord]
    cancelled: str | None = None
    failed: dict[str, Any] | None = None
    # Set once the completion rule held and the run was marked completed (before its final status).
    completed: bool = False

    def record(self, node_id: str, iteration: int = 0) -> NodeRecord | None:
        """The record of one execution, if it was committed."""
        return self.records.get(job_key(node_id, iteration))

    @property
    def stopped(self) -> bool:
        """True when the run was cancelled, failed or completed: no node of it may start any more."""
        return self.cancelled is not None or self.failed is not None or self.completed


def fold_context(initial: dict[str, Any], records: list[NodeRecord]) -> dict[str, Any]:
    """The context a run has after applying records in commit order."""
    from .context import output_key

    context = dict(initial)
    for rec in sorted(records, key=lambda r: (r.seq, r.key)):
        apply_record(context, rec, output_key)
    return context


def apply_record(context: dict[str, Any], rec: NodeRecord, output_key: Any = None) -> None:
    """Apply one record's changes (and its output, once completed) to a folded context."""
    if output_key is None:
        from .context import output_key as _ok

        output_key = _ok
    for key in rec.deletes:
        context.pop(key, None)
    context.update(rec.changes)
    if rec.status == "completed":
        context[output_key(rec.node_id)] = rec.output


def change_status(item: dict[str, Any], status: RunStatus, now: float, *, final: bool,
                  result: dict[str, Any] | None = None, reason: str | None = None,
                  extra: dict[str, Any] | None = None) -> bool:
    """Apply a status transition to a status item in place; False (unchanged) once the run is final.

    Every status store applies this one rule, so a final status is written once whatever the store.
    """
    if item["status"] in FINAL_STATUSES:
        return False
    item.update({"status": status, "lastUpdated": now, **(extra or {})})
    if final:
        item.pop("awaiting", None)
    if result is not None:
        item["result"] = result
    if reason is not None:
        item["reason"] = reason
    return True


class RunStore(Protocol):
    """Durable per-run state: header, initial context, node records, control markers."""

    async def create_run(self, header: RunHeader) -> None:
        """Create a run; raise RunStateError when the id is taken."""

    async def load(self, run_id: str) -> RunState | None:
        """The whole run (records, folded context, markers), or None when unknown.

        A store may serve it from a per-process cache refreshed by an incremental read; it must then be
        as fresh as one read of the store would be.
        """

    async def commit(self, run_id: str, record: NodeRecord) -> tuple[NodeRecord, bool]:
        """Store a record unless one exists for its key; return the stored record and whether it is new."""

    async def replace(self, run_id: str, record: NodeRecord, *, expected_status: str) -> bool:
        """Overwrite a record only while its stored status is expected_status (resume of a wait)."""

    async def mark(self, run_id: str, marker: Literal["cancelled", "failed", "completed"],
                   data: dict[str, Any]) -> None:
        """Record that a run was cancelled, failed or completed so that its other jobs stop."""

    async def delete_run(self, run_id: str) -> int:
        """Remove every item of the run; returns how many there were."""

    def forget(self, run_id: str) -> None:
        """The run completed: drop what this process caches of it (the stored run stays)."""


class StatusStore(Protocol):
    """The status item of each run, polled by clients and scanned by the reconciler."""

    async def create(self, run_id: str, blueprint_id: str, created_at: float, *,
                     extra: dict[str, Any] | None = None) -> None:
        """Create a running status item (with extra fields, e.g. a child's parent); RunStateError when taken."""

    async def get(self, run_id: str) -> dict[str, Any] | None:
        """The status item, or None."""

    async def touch(self, run_id: str) -> None:
        """Refresh lastUpdated (cheaply) to show the run is alive."""

    async def set_status(self, run_id: str, status: RunStatus, *, reason: str | None = None,
                         extra: dict[str, Any] | None = None) -> bool:
        """Set a non-final status (running, awaiting) unless the run is already final."""

    async def finalize(self, run_id: str, status: RunStatus, *, result: dict[str, Any] | None = None,
                       reason: str | None = None) -> bool:
        """Write the final status exactly once; return False when it was already final."""

    async def list_stalled(self, older_than: float, limit: int = 100) -> list[str]:
        """Run ids whose status is running and lastUpdated is older than the given epoch seconds."""

    async def list_runs(self, query: RunQuery, top: int, continuation: str | None = None) -> RunPage:
        """One page of status items matching query, newest first; continuation resumes after it."""

    async def delete(self, run_id: str) -> bool:
        """Remove the status item; False when there was none."""


class CoordinationStore(Protocol):
    """Short-lived coordination state (Redis): Flowcraft's store contract plus idempotent gates."""

    async def increment(self, key: str, ttl_seconds: int) -> int:
        """Atomically add one to a counter and return it."""

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: int) -> bool:
        """Set a key only if absent (a lock); True when set."""

    async def extend_ttl(self, key: str, ttl_seconds: int) -> bool:
        """Extend a key's expiry; False when the key is gone."""

    async def delete(self, key: str) -> None:
        """Remove a key."""

    async def get(self, key: str) -> str | None:
        """Read a key."""

    async def arrive(self, gate: str, member: str, *, done: bool, expected: int, strategy: str,
                     ttl_seconds: int) -> tuple[GateDecision, bool]:
        """Record a predecessor's arrival at a join; return (decision, first time decided).

        A member counts once however often it arrives (a 'done' arrival overrides an earlier 'skip').
        'all' decides when every expected member arrived: fire if any was done, else skip. 'any' fires
        on the first done arrival and skips when all arrived skipped. The decision, once taken, is
        returned again to later callers so that a redelivered job can finish what a crash interrupted.
        """

    async def claim(self, run_id: str, name: str, token: str, ttl_seconds: int, *,
                    gate: str) -> tuple[bool, dict[str, bool]]:
        """Claim a join's execution for token (True also when token already holds it) and return the
        arrivals recorded at its gate ({member: done})."""

    async def resolve_terminal(self, run_id: str, member: str, expected: int, ttl_seconds: int) -> bool:
        """Record that a terminal node ended (ran or was skipped); True once all expected have."""

    async def forget_run(self, run_id: str) -> None:
        """Drop the run's coordination keys after it ended."""

    async def purge_run(self, run_id: str) -> int:
        """Drop every key of the run, also those that would expire on their own; returns how many."""


@dataclass
class Job:
    """One node execution to perform: ids only (a queue message must stay far below 64 KB)."""

    run_id: str
    blueprint_id: str
    node_id: str
    iteration: int = 0
    attempt: int = 1
    via: str | None = None
    # W3C trace context of the span that enqueued the job (flowcraft_core.telemetry), when there was one.
    traceparent: str | None = None

    @property
    def key(self) -> str:
        """The execution's identity."""
        return job_key(self.node_id, self.iteration)

    def to_dict(self) -> dict[str, Any]:
        """The queue message body (camelCase, minimal)."""
        data: dict[str, Any] = {"runId": self.run_id, "blueprintId": self.blueprint_id, "nodeId": self.node_id}
        if self.iteration:
            data["iteration"] = self.iteration
        if self.attempt != 1:
            data["attempt"] = self.attempt
        if self.via:
            data["via"] = self.via
        if self.traceparent:
            data["traceparent"] = self.traceparent
        return data


class JobQueue(Protocol):
    """Where jobs wait to be executed."""

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        """Send a job, visible after delay_seconds."""
