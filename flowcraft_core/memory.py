"""In-process implementations of the store protocols, for the in-memory runtime and unit tests."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any, Literal

from .context import output_key
from .errors import RunStateError
from .protocols import (
    GateDecision,
    Job,
    NodeRecord,
    RunHeader,
    RunPage,
    RunQuery,
    RunState,
    RunStatus,
    apply_record,
    change_status,
)


class InMemoryRunStore:
    """Run state in a dict; the folded context is maintained incrementally, so a load costs nothing."""

    def __init__(self) -> None:
        self._runs: dict[str, RunState] = {}
        self._seq = 0

    async def create_run(self, header: RunHeader) -> None:
        """Create a run; raise RunStateError when the id is taken."""
        if header.run_id in self._runs:
            raise RunStateError(f"run {header.run_id!r} already exists")
        self._runs[header.run_id] = RunState(
            header=header, context=copy.deepcopy(header.initial_context), records={}
        )

    async def load(self, run_id: str) -> RunState | None:
        """The live run state (shared, not copied: the in-process runtime reads it in place)."""
        return self._runs.get(run_id)

    async def commit(self, run_id: str, record: NodeRecord) -> tuple[NodeRecord, bool]:
        """Store a record unless one exists for its key."""
        state = self._require(run_id)
        existing = state.records.get(record.key)
        if existing is not None:
            return existing, False
        self._seq += 1
        record.seq = self._seq
        state.records[record.key] = record
        apply_record(state.context, record, output_key)
        return record, True

    async def replace(self, run_id: str, record: NodeRecord, *, expected_status: str) -> bool:
        """Overwrite a record while its status is expected_status."""
        state = self._require(run_id)
        existing = state.records.get(record.key)
        if existing is None or existing.status != expected_status:
            return False
        self._seq += 1
        record.seq = self._seq
        state.records[record.key] = record
        apply_record(state.context, record, output_key)
        return True

    async def mark(self, run_id: str, marker: Literal["cancelled", "failed", "completed"],
                   data: dict[str, Any]) -> None:
        """Record cancellation, failure or completion."""
        state = self._require(run_id)
        if marker == "cancelled":
            state.cancelled = str(data.get("reason", "cancelled"))
        elif marker == "completed":
            state.completed = True
        else:
            state.failed = data

    async def delete_run(self, run_id: str) -> int:
        """Forget the run; returns how many items a Cosmos store would have held (header + records)."""
        state = self._runs.pop(run_id, None)
        if state is None:
            return 0
        return 1 + len(state.records) + (state.cancelled is not None) + (state.failed is not None)

    def forget(self, run_id: str) -> None:
        """Nothing to drop: this store is the run's only copy."""

    def _require(self, run_id: str) -> RunState:
        state = self._runs.get(run_id)
        if state is None:
            raise RunStateError(f"run {run_id!r} does not exist")
        return state


class InMemoryStatusStore:
    """Status items in a dict."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.final_writes: dict[str, int] = {}

    async def create(self, run_id: str, blueprint_id: str, created_at: float, *,
                     extra: dict[str, Any] | None = None) -> None:
        """Create a running status item."""
        if run_id in self.items:
            raise RunStateError(f"run {run_id!r} already exists")
        self.items[run_id] = {
            "id": run_id,
            "runId": run_id,
            "blueprintId": blueprint_id,
            "status": "running",
            "createdAt": created_at,
            "lastUpdated": created_at,
            **(extra or {}),
        }

    async def get(self, run_id: str) -> dict[str, Any] | None:
        """A copy of the status item."""
        item = self.items.get(run_id)
        return dict(item) if item else None

    async def touch(self, run_id: str) -> None:
        """Refresh lastUpdated."""
        if run_id in self.items:
            self.items[run_id]["lastUpdated"] = time.time()

    async def set_status(self, run_id: str, status: RunStatus, *, reason: str | None = None,
                         extra: dict[str, Any] | None = None) -> bool:
        """Set a non-final status."""
        item = self.items.get(run_id)
        return item is not None and change_status(item, status, time.time(), final=False, reason=reason,
                                                  extra=extra)

    async def finalize(self, run_id: str, status: RunStatus, *, result: dict[str, Any] | None = None,
                       reason: str | None = None) -> bool:
        """Write the final status once."""
        item = self.items.get(run_id)
        if item is None or not change_status(item, status, time.time(), final=True, result=result, reason=reason):
            return False
        self.final_writes[run_id] = self.final_writes.get(run_id, 0) + 1
        return True

    async def list_stalled(self, older_than: float, limit: int = 100) -> list[str]:
        """Running runs not updated since older_than."""
        return [
            rid for rid, item in self.items.items()
            if item["status"] == "running" and item["lastUpdated"] < older_than
        ][:limit]

    async def list_runs(self, query: RunQuery, top: int, continuation: str | None = None) -> RunPage:
        """Newest first (createdAt, then run id, descending); the continuation is the last item's sort key."""
        rows = sorted((item for item in self.items.values() if query.matches(item)),
                      key=lambda item: (item["createdAt"], item["runId"]), reverse=True)
        if continuation is not None:
            try:
                created, run_id = json.loads(continuation)
                after = (float(created), str(run_id))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"malformed continuation: {exc}") from None
            # Keyset, not offset: runs created meanwhile sort before the key, so pages never shift.
            rows = [item for item in rows if (item["createdAt"], item["runId"]) < after]
        page = [dict(item) for item in rows[:top]]
        more = len(rows) > top
        token = json.dumps([page[-1]["createdAt"], page[-1]["runId"]]) if more and page else None
        return RunPage(page, token)

    async def delete(self, run_id: str) -> bool:
        """Remove the status item."""
        self.final_writes.pop(run_id, None)
        return self.items.pop(run_id, None) is not None


class InMemoryCoordinationStore:
    """Coordination state in dicts; single event loop, so every method is atomic."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._gates: dict[str, dict[str, bool]] = {}
        self._decisions: dict[str, GateDecision] = {}
        self._terminals: dict[str, set[str]] = {}

    async def increment(self, key: str, ttl_seconds: int) -> int:
        """Add one to a counter."""
        value = int(self._values.get(key, "0")) + 1
        self._values[key] = str(value)
        return value

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: int) -> bool:
        """Set a key if absent."""
        if key in self._values:
            return False
        self._values[key] = value
        return True

    async def extend_ttl(self, key: str, ttl_seconds: int) -> bool:
        """No expiry in memory; True while the key exists."""
        return key in self._values

    async def delete(self, key: str) -> None:
        """Remove a key."""
        self._values.pop(key, None)

    async def get(self, key: str) -> str | None:
        """Read a key."""
        return self._values.get(key)

    async def arrive(self, gate: str, member: str, *, done: bool, expected: int, strategy: str,
                     ttl_seconds: int) -> tuple[GateDecision, bool]:
        """See CoordinationStore.arrive."""
        members = self._gates.setdefault(gate, {})
        members[member] = members.get(member, False) or done
        decided = self._decisions.get(gate)
        if decided is not None:
            return decided, False
        decision = decide_gate(members, expected, strategy)
        if decision == "wait":
            return "wait", False
        self._decisions[gate] = decision
        return decision, True

    async def claim(self, run_id: str, name: str, token: str, ttl_seconds: int, *,
                    gate: str) -> tuple[bool, dict[str, bool]]:
        """Claim a join's execution; see CoordinationStore.claim."""
        key = f"flowcraft:{{{run_id}}}:claim:{name}"
        held = self._values.setdefault(key, token) == token
        return held, dict(self._gates.get(gate, {}))

    async def resolve_terminal(self, run_id: str, member: str, expected: int, ttl_seconds: int) -> bool:
        """Record a terminal's end; True once all have ended."""
        ended = self._terminals.setdefault(run_id, set())
        ended.add(member)
        return len(ended) >= expected

    async def forget_run(self, run_id: str) -> None:
        """Drop the run's keys."""
        self._terminals.pop(run_id, None)
        prefix = f"{run_id}|"
        for store in (self._gates, self._decisions):
            for key in [k for k in store if k.startswith(prefix)]:
                store.pop(key, None)
        # Engine-made keys (join claims) carry the run id in a {hash tag}; a long-lived runtime must not
        # keep one per join execution forever.
        tag = f"{{{run_id}}}"
        for key in [k for k in self._values if tag in k]:
            self._values.pop(key, None)

    async def purge_run(self, run_id: str) -> int:
        """Drop every key of the run (in memory, forget_run already drops them all)."""
        prefix, tag = f"{run_id}|", f"{{{run_id}}}"
        count = (len([k for store in (self._gates, self._decisions) for k in store if k.startswith(prefix)])
                 + len([k for k in self._values if tag in k]) + (run_id in self._terminals))
        await self.forget_run(run_id)
        return count


def decide_gate(members: dict[str, bool], expected: int, strategy: str) -> GateDecision:
    """The join rule shared by every coordination store (Redis runs the same rule in Lua)."""
    if strategy == "any":
        if any(members.values()):
            return "fire"
        return "skip" if len(members) >= expected else "wait"
    if len(members) < expected:
        return "wait"
    return "fire" if any(members.values()) else "skip"


class InMemoryJobQueue:
    """An asyncio queue with delayed delivery, for the in-process runtime."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self._delayed: set[asyncio.Task[None]] = set()
        self.sent = 0
        # Set once the run ended, so that whoever waits for jobs stops waiting for delayed ones.
        self.stopped = asyncio.Event()

    async def enqueue(self, job: Job, *, delay_seconds: float = 0) -> None:
        """Put a job on the queue, now or after a delay."""
        self.sent += 1
        if delay_seconds <= 0:
            self.queue.put_nowait(job)
            return

        async def later() -> None:
            await asyncio.sleep(delay_seconds)
            self.queue.put_nowait(job)

        task = asyncio.create_task(later())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)

    @property
    def idle(self) -> bool:
        """True when nothing is queued or scheduled."""
        return self.queue.empty() and not self._delayed

    def close(self) -> None:
        """Cancel delayed deliveries and wake whoever waits on ``stopped``."""
        for task in list(self._delayed):
            task.cancel()
        self.stopped.set()
