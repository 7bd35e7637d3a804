"""Benchmark workloads: blueprint builders and the trivial node every benchmark node uses.

Shared by ``bench/inprocess.py``, ``bench/distributed.py`` and ``bench/profile.py`` so the figures
of the two runtimes come from the same graphs.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowcraft_core import NodeContext, WorkflowBlueprint

NODE_USES = "bench-noop"


async def noop_node(ctx: NodeContext) -> dict[str, Any]:
    """A trivial node: no I/O, a tiny output (so outputs exist in the context, as in real runs)."""
    return {"output": ctx.node_id}


REGISTRY: dict[str, Any] = {NODE_USES: noop_node}


def _node(node_id: str) -> dict[str, Any]:
    return {"id": node_id, "uses": NODE_USES}


def _edge(source: str, target: str) -> dict[str, Any]:
    return {"source": source, "target": target}


def chain(length: int) -> WorkflowBlueprint:
    """n0 -> n1 -> ... -> n<length-1>."""
    ids = [f"n{i}" for i in range(length)]
    return WorkflowBlueprint.model_validate({
        "id": f"chain-{length}",
        "nodes": [_node(i) for i in ids],
        "edges": [_edge(a, b) for a, b in itertools.pairwise(ids)],
    })


def fanout(width: int, *, end: bool = True) -> WorkflowBlueprint:
    """start -> w0..w<width-1> (parallel) -> join (all) [-> end]."""
    workers = [f"w{i}" for i in range(width)]
    nodes = [_node("start"), *(_node(w) for w in workers), _node("join")]
    edges = [*(_edge("start", w) for w in workers), *(_edge(w, "join") for w in workers)]
    if end:
        nodes.append(_node("end"))
        edges.append(_edge("join", "end"))
    return WorkflowBlueprint.model_validate({"id": f"fanout-{width}", "nodes": nodes, "edges": edges})


def diamond() -> WorkflowBlueprint:
    """a -> (b, c) -> d (all) -> e."""
    return WorkflowBlueprint.model_validate({
        "id": "diamond",
        "nodes": [_node(n) for n in "abcde"],
        "edges": [_edge("a", "b"), _edge("a", "c"), _edge("b", "d"), _edge("c", "d"), _edge("d", "e")],
    })


def predecessors(bp: WorkflowBlueprint) -> dict[str, list[str]]:
    """Each node's predecessors (from the edges)."""
    preds: dict[str, list[str]] = {n.id: [] for n in bp.nodes}
    for e in bp.edges:
        preds[e.target].append(e.source)
    return preds


@dataclass
class Workload:
    """One benchmark case: a blueprint run `runs` times concurrently."""

    name: str
    blueprint: WorkflowBlueprint
    runs: int = 1

    @property
    def nodes(self) -> int:
        """Node executions the workload should make."""
        return len(self.blueprint.nodes) * self.runs


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))])
