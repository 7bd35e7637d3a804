"""Outcomes of one case on each runtime, what the runtimes must agree on, and the invariants.

All three runtimes are reduced to an ``Observed``: final status (and failing node), the final context
without engine bookkeeping keys, node executions per ``<blueprintId>:<nodeId>``, and the event trace
(node starts, fallbacks, final-status writes) the invariants are checked on.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trace:
    """Events of one run (and its child runs) in the order observed: (time, type, runId, blueprintId, nodeId)."""

    events: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    # True when the times are positions in one event loop's emission order rather than seconds.
    ordinal: bool = False

    def add(self, event: dict[str, Any], at: float) -> None:
        """Record an engine event."""
        p = event.get("payload") or {}
        self.events.append((at, str(event.get("type")), str(p.get("runId", "")), str(p.get("blueprintId", "")),
                            str(p.get("nodeId", ""))))

    def counts(self) -> Counter[str]:
        """Node executions per blueprintId:nodeId."""
        return Counter(f"{bp}:{node}" for _t, kind, _r, bp, node in self.events if kind == "node:start")

    def of(self, kind: str) -> list[tuple[float, str, str, str, str]]:
        """Events of one type."""
        return [e for e in self.events if e[1] == kind]


@dataclass
class Observed:
    """How a case ended on one runtime."""

    runtime: str
    status: str
    context: dict[str, Any]
    counts: Counter[str]
    failed_node: str | None = None
    detail: str = ""
    trace: Trace | None = None
    # Final-status writes per run id (root and children), when the runtime can count them.
    finals: Counter[str] | None = None
    # When each run's final status was written (epoch seconds), when known.
    final_at: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-able view for reports."""
        return {"runtime": self.runtime, "status": self.status, "failedNode": self.failed_node,
                "detail": self.detail[:300], "counts": dict(sorted(self.counts.items())),
                "context": self.context}


def disagreements(ref: Observed, other: Observed, *, repeats_allowed: bool = False,
                  joins: frozenset[str] = frozenset(), join_repeats_allowed: bool = False) -> list[str]:
    """What ``other`` gets wrong compared with the reference ([] when they agree).

    ``repeats_allowed``: at-least-once faults happened, so a node may run more often than the reference
    says (never less). Joins (count keys in ``joins``) run once per iteration even under duplicate
    deliveries: only ``join_repeats_allowed`` (a worker was killed mid-join) lets them repeat.
    """
    problems: list[str] = []
    if ref.status != other.status:
        problems.append(f"status: reference {ref.status}, {other.runtime} {other.status} ({other.detail[:200]})")
        return problems
    if ref.status == "failed":
        # Which concurrent branches ran before the failure stopped the run is timing: compare the node.
        if ref.failed_node != other.failed_node:
            problems.append(f"failing node: reference {ref.failed_node}, {other.runtime} {other.failed_node}")
        return problems
    if ref.context != other.context:
        keys = sorted(set(ref.context) | set(other.context))
        diff = [k for k in keys if ref.context.get(k, "<absent>") != other.context.get(k, "<absent>")]
        problems.append(f"context differs at {diff[:8]}: reference "
                        f"{_short({k: ref.context.get(k, '<absent>') for k in diff[:3]})}, {other.runtime} "
                        f"{_short({k: other.context.get(k, '<absent>') for k in diff[:3]})}")
    for key in sorted(set(ref.counts) | set(other.counts)):
        want, got = ref.counts.get(key, 0), other.counts.get(key, 0)
        allowed = join_repeats_allowed if key in joins else repeats_allowed
        if got != want and not (allowed and got > want > 0):
            problems.append(f"executions of {key}: reference {want}, {other.runtime} {got}")
    return problems


def invariant_violations(obs: Observed, *, tolerance: float = 0.0, child_repeats: bool = False) -> list[str]:
    """Invariants every run must keep, whatever the faults: nothing of a run starts after its final
    status; the final status is written once per run.

    ``child_repeats``: a subflow's child run (id ``<parent>.<node>``) runs inside its parent node's job
    today, so when at-least-once repeats that node, its child runs again under the same id (final status
    written again, its nodes starting after the first final status): tolerated for child runs then (F12).
    """
    problems: list[str] = []

    def lenient(run_id: str) -> bool:
        return child_repeats and "." in run_id

    trace = obs.trace
    if trace is not None:
        finished: dict[str, float] = dict(obs.final_at)
        for at, _kind, run_id, _bp, _node in trace.of("workflow:finish"):
            finished[run_id] = min(at, finished.get(run_id, at))
        for at, kind, run_id, bp, node in trace.events:
            if kind in ("node:start", "node:fallback", "node:retry") and run_id in finished \
                    and at > finished[run_id] + tolerance and not lenient(run_id):
                later = f"{int(at - finished[run_id])} events" if trace.ordinal else f"{at - finished[run_id]:.3f}s"
                problems.append(f"{kind} of {bp}:{node} {later} after run {run_id} got its final status")
    if obs.finals is not None:
        for run_id, n in obs.finals.items():
            if n != 1 and not lenient(run_id):
                problems.append(f"final status of run {run_id} written {n} times")
    return problems


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) < 400 else text[:400] + "..."
