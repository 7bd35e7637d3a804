"""What a run still owes, derived from its stored records alone: the completion rule.

The records are the truth (Redis only coordinates): a node is scheduled by the run's start or by a
taken route of a committed record, and it is done once its own record is committed. So the work a
run still owes is every scheduled execution without a record, every sleep not yet woken, every wait
not yet resumed. Both runtimes and the reconciler ask the same question here.
"""

from __future__ import annotations

from .graph import CompiledGraph, entry_node_ids
from .protocols import RunState, job_key


def unfinished_work(state: RunState, graph: CompiledGraph, now: float) -> list[str]:
    """Execution keys (``iteration:nodeId``) the run still owes, in no particular order.

    An execution is owed when a start node or the target of a taken route (at the iteration that
    route leads to) has no committed record, when a node's dynamic nodes (batch workers, their
    gather, an expansion) have none, when a sleep's wake-up time is still ahead, and when a node
    awaits input. An ``any`` join that fired has its record, so a sibling still arriving at it is
    owed through its own missing record, not through the join.
    """
    owed: set[str] = set()
    for node_id in entry_node_ids(graph):
        if state.record(node_id) is None:
            owed.add(job_key(node_id))
    for rec in state.records.values():
        if rec.status == "awaiting":
            owed.add(rec.key)
            continue
        if rec.status != "completed":
            continue  # a failed record fails the run; an external one is a context write
        if rec.wake_at is not None and rec.wake_at > now:
            owed.add(rec.key)
        for dyn in rec.dynamic_nodes or ():
            for dyn_id in (dyn.get("id"), dyn.get("gatherNodeId")):
                if dyn_id and state.record(str(dyn_id), rec.iteration) is None:
                    owed.add(job_key(str(dyn_id), rec.iteration))
        for route in rec.routes:
            if not route.taken:
                continue
            iteration = graph.target_iteration(rec.node_id, route.target, route.kind, rec.iteration)
            if state.record(route.target, iteration) is None:
                owed.add(job_key(route.target, iteration))
    return sorted(owed)


def run_may_complete(state: RunState, graph: CompiledGraph, now: float) -> bool:
    """The completion rule: a run completes only when no branch can still execute.

    Nothing is in flight or scheduled (every scheduled execution committed its record), no sleep is
    pending and no node awaits input; every reachable node therefore ran or was skipped. An ``any``
    join firing does not end its siblings: they are scheduled executions like any other.
    """
    return state.cancelled is None and state.failed is None and not unfinished_work(state, graph, now)


__all__ = ["run_may_complete", "unfinished_work"]
