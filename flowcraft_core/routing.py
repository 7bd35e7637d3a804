"""Which edges a finished node takes: actions, the default route, conditions and transforms.

Pure functions: both runtimes call them and store the decision with the node's record, so that a
redelivered job replays the same routing instead of evaluating again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .context import OUTPUTS_PREFIX, input_key, nested_view
from .errors import ExpressionError
from .expressions import Evaluator
from .graph import CompiledGraph
from .models import EdgeDefinition
from .nodes import NodeResult
from .protocols import Route


@dataclass
class RoutingPlan:
    """The routes of one finished node, the inputs its transforms computed, and evaluation events."""

    routes: list[Route]
    inputs: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def edge_kind(graph: CompiledGraph, edge: EdgeDefinition) -> str:
    """forward, back (starts a loop iteration) or exit (leaves a loop)."""
    if graph.is_back_edge(edge):
        return "back"
    if graph.common_depth(edge.source, edge.target) < graph.depth(edge.source):
        return "exit"  # leaves at least one loop the source is in
    return "forward"


def plan_routes(graph: CompiledGraph, node_id: str, result: NodeResult, context: Mapping[str, Any],
                evaluator: Evaluator, *, node_input: Any = None) -> RoutingPlan:
    """Decide every outgoing edge of a finished node; raise ExpressionError on a bad expression."""
    edges = graph.out_edges.get(node_id, [])
    if not edges:
        return RoutingPlan([])
    nested: dict[str, Any] | None = None
    result_view = {"output": result.output, "action": result.action}
    taken: set[int] = set()
    plan = RoutingPlan([])

    def scope() -> dict[str, Any]:
        nonlocal nested
        if nested is None:
            # The node's own output is part of the context its edges see, as in Flowcraft (which
            # stores it before deciding the next nodes): `r.score > 0.5` on r's own edge resolves.
            nested = nested_view({**context, f"{OUTPUTS_PREFIX}{node_id}": result.output})
        # Flowcraft spreads the context at the top level too, so `score > 1` and `context.score > 1`
        # both work.
        return {**nested, "context": nested, "result": result_view, "input": result.output,
                "nodeInput": node_input}

    def passes(index: int, edge: EdgeDefinition) -> bool:
        if edge.condition is None:
            return True
        try:
            value = bool(evaluator.evaluate(edge.condition, scope()))
        except ExpressionError as exc:
            raise ExpressionError(f"condition of edge {edge.source}->{edge.target} failed: {exc}") from None
        plan.events.append({"type": "edge:evaluate", "payload": {
            "source": edge.source, "target": edge.target, "condition": edge.condition, "result": value}})
        return value

    if result.action is not None:
        for i, edge in enumerate(edges):
            if edge.action == result.action and passes(i, edge):
                taken.add(i)
    if not taken:
        for i, edge in enumerate(edges):
            if edge.action is None and passes(i, edge):
                taken.add(i)

    for i, edge in enumerate(edges):
        is_taken = i in taken
        plan.routes.append(Route(edge.target, is_taken, edge_kind(graph, edge)))  # type: ignore[arg-type]
        if is_taken and edge.transform is not None:
            try:
                plan.inputs[input_key(edge.target)] = evaluator.evaluate(edge.transform, scope())
            except ExpressionError as exc:
                raise ExpressionError(
                    f"transform of edge {edge.source}->{edge.target} failed: {exc}") from None
    return plan
