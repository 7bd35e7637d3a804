"""Routing reads the node's context only for edges that need it, and then sees the node's own writes."""

from __future__ import annotations

from typing import Any

from flowcraft_core.context import NodeContextView
from flowcraft_core.expressions import SafeEvaluator
from flowcraft_core.graph import compile_graph
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeResult
from flowcraft_core.routing import plan_routes
from tests.helpers import bp


class CountingView(NodeContextView):
    """A view that counts whole-context copies."""

    copies = 0

    def to_dict_sync(self) -> dict[str, Any]:
        self.copies += 1
        return super().to_dict_sync()


def graph(edges: list[dict[str, Any]]) -> Any:
    return compile_graph(WorkflowBlueprint.model_validate(bp(["a", "b", "c"], edges)))


def test_plain_edges_never_copy_the_context() -> None:
    view = CountingView({f"k{i}": i for i in range(1000)})
    plan = plan_routes(graph([{"source": "a", "target": "b"}, {"source": "a", "target": "c"}]), "a",
                       NodeResult(output=1), view.lazy_dict(), SafeEvaluator())
    assert [(r.target, r.taken) for r in plan.routes] == [("b", True), ("c", True)]
    assert view.copies == 0


def test_a_condition_sees_the_base_and_the_nodes_own_writes_and_deletes() -> None:
    view = CountingView({"base": 1, "gone": 1})
    view.set_sync("mine", 2)
    view.delete_sync("gone")
    edges = [{"source": "a", "target": "b", "condition": "base == 1 and mine == 2"},
             {"source": "a", "target": "c", "condition": "context.gone == 1"}]
    plan = plan_routes(graph(edges), "a", NodeResult(output=1), view.lazy_dict(), SafeEvaluator())
    assert [(r.target, r.taken) for r in plan.routes] == [("b", True), ("c", False)]
    assert view.copies == 1  # once for both edges


def test_the_lazy_mapping_equals_the_copy() -> None:
    view = NodeContextView({"x": 1, "y": 2})
    view.set_sync("z", 3)
    view.delete_sync("x")
    lazy = view.lazy_dict()
    assert dict(lazy) == view.to_dict_sync() == {"y": 2, "z": 3}
    assert len(lazy) == 2 and "x" not in lazy and lazy["z"] == 3
