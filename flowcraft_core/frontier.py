"""What a run still owes, derived from its stored records alone: the completion rule.

The records are the truth (Redis only coordinates): a node is scheduled by the run's start or by a
taken route of a committed record, and it is done once its own record is committed. So the work a
run still owes is every scheduled execution without a record, every sleep not yet woken, every wait
not yet resumed. Both runtimes and the reconciler ask the same question here.
"""

from __future__ import annotations

from .builtins.names import BATCH_GATHER
from .graph import CompiledGraph, entry_node_ids
from .models import NodeDefinition
from .protocols import PENDING_RECORD_STATUSES, RunState, job_key

# How far the release check walks up through predecessors without records before it gives up and
# assumes they are dead (lenient: it never refuses a join the gates legitimately released).
_DEAD_WALK_LIMIT = 500


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
        if rec.status in PENDING_RECORD_STATUSES:
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


def delivered(state: RunState, graph: CompiledGraph, source: str, target: str, target_it: int) -> bool:
    """True when a completed record of ``source`` took an edge to ``target`` in that target iteration."""
    if graph.depth(source) <= graph.common_depth(source, target):
        # Not deeper than the target: its one execution feeding this iteration has a known key.
        rec = state.record(source, graph.truncate_iteration(target, target_it, graph.depth(source)))
        return rec is not None and rec.status == "completed" and any(
            r.target == target and r.taken for r in rec.routes)
    return took_exit(state, graph, source, target, target_it)


def took_exit(state: RunState, graph: CompiledGraph, source: str, target: str, target_it: int) -> bool:
    """True when a stored record of ``source`` took its edge to ``target`` into that target iteration."""
    for rec in state.records.values():
        if rec.node_id != source:
            continue
        for route in rec.routes:
            if (route.target == target and route.taken
                    and graph.target_iteration(source, target, route.kind, rec.iteration) == target_it):
                return True
    return False


def unreleased_predecessors(state: RunState, graph: CompiledGraph, node: NodeDefinition,
                            iteration: int) -> list[str]:
    """The predecessors that keep a join from being released by the stored records (empty: released).

    An ``all`` join is released when every forward predecessor that can still arrive has committed its
    record (a predecessor none of whose own predecessors can deliver to it is dead and does not count);
    an ``any`` join when one predecessor's record took its edge into this round; a batch gather when
    every worker of the round committed. Whatever a queue message claims, a join runs only then.
    Where the records cannot tell (a predecessor inside a loop the join is not in, a walk too long), it
    errs towards released, which is what the Redis gates decided anyway.
    """
    if node.uses == BATCH_GATHER or node.id not in graph.nodes:
        workers = [str(dyn["id"]) for rec in state.records.values() if rec.iteration == iteration
                   for dyn in rec.dynamic_nodes or () if dyn.get("gatherNodeId") == node.id]
        return [w for w in workers if state.record(w, iteration) is None]
    preds = graph.forward_predecessors.get(node.id, [])
    if node.config.join_strategy == "any":
        if any(delivered(state, graph, p, node.id, iteration) for p in preds):
            return []
        return list(preds)
    memo: dict[tuple[str, int], bool] = {}
    return [p for p in preds if not _arrived_or_dead(state, graph, p, node.id, iteration, memo)]


def _arrived_or_dead(state: RunState, graph: CompiledGraph, pred: str, target: str, target_it: int,
                     memo: dict[tuple[str, int], bool]) -> bool:
    if graph.depth(pred) > graph.common_depth(pred, target):
        return True  # leaves a loop the target is not in: its round is not known from here
    pred_it = graph.truncate_iteration(target, target_it, graph.depth(pred))
    rec = state.record(pred, pred_it)
    if rec is not None:
        return rec.status not in PENDING_RECORD_STATUSES
    return _dead(state, graph, pred, pred_it, memo)


def _dead(state: RunState, graph: CompiledGraph, node_id: str, iteration: int,
          memo: dict[tuple[str, int], bool]) -> bool:
    """True when no predecessor of this (unrecorded) execution can deliver to it any more."""
    key = (node_id, iteration)
    if key in memo:
        return memo[key]
    if len(memo) > _DEAD_WALK_LIMIT or node_id not in graph.nodes:
        return True
    memo[key] = True  # a cycle back to here says nothing new
    result = True
    if node_id in entry_node_ids(graph) or (graph.depth(node_id) and iteration):
        # A start node always runs; a later round of a loop is scheduled by its back edge: unknown here.
        result = node_id not in entry_node_ids(graph)
    else:
        for edge in graph.in_edges.get(node_id, []):
            if graph.is_back_edge(edge):
                continue
            source = edge.source
            if graph.depth(source) > graph.common_depth(source, node_id):
                continue  # an inner loop's exit: unknown here, counted as not delivering
            source_it = graph.truncate_iteration(node_id, iteration, graph.depth(source))
            rec = state.record(source, source_it)
            if rec is not None:
                if rec.status in PENDING_RECORD_STATUSES or any(r.target == node_id and r.taken for r in rec.routes):
                    result = False
                    break
            elif not _dead(state, graph, source, source_it, memo):
                result = False
                break
    memo[key] = result
    return result


__all__ = ["delivered", "run_may_complete", "took_exit", "unfinished_work", "unreleased_predecessors"]
