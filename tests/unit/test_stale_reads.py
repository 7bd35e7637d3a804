"""A replica that lags a write (Cosmos DB reads from another session) never makes a node run on a snapshot
missing what scheduled or released it: the engine reads the run again first."""

from __future__ import annotations

from typing import Any

from flowcraft_core import FlowRuntime, NodeContext
from flowcraft_core.context import output_key
from flowcraft_core.memory import InMemoryRunStore
from flowcraft_core.protocols import RunState


class LaggingRunStore(InMemoryRunStore):
    """Hides one node's record from the next `hide_loads` loads that would otherwise see it."""

    def __init__(self, hidden_node: str, hide_loads: int) -> None:
        super().__init__()
        self.hidden_node = hidden_node
        self.hide_loads = hide_loads
        self.hidden = 0

    async def load(self, run_id: str) -> RunState | None:
        state = await super().load(run_id)
        if state is None or self.hide_loads <= 0:
            return state
        if not any(r.node_id == self.hidden_node for r in state.records.values()):
            return state
        self.hide_loads -= 1
        self.hidden += 1
        return RunState(
            header=state.header,
            context={k: v for k, v in state.context.items() if k != output_key(self.hidden_node)},
            records={k: r for k, r in state.records.items() if r.node_id != self.hidden_node},
            cancelled=state.cancelled, failed=state.failed)


def value(name: str) -> Any:
    async def node(ctx: NodeContext) -> dict[str, Any]:
        return {"output": name}
    return node


async def join(ctx: NodeContext) -> dict[str, Any]:
    return {"output": dict(ctx.input)}


def runtime(store: LaggingRunStore) -> FlowRuntime:
    rt = FlowRuntime(registry={"value_a": value("A"), "value_b": value("B"), "value_c": value("C"),
                               "join": join})
    rt.engine.run_store = store
    return rt


async def test_a_join_waits_until_every_predecessor_that_released_it_is_visible() -> None:
    store = LaggingRunStore("c", hide_loads=2)
    bp = {"id": "diamond", "nodes": [
        {"id": "a", "uses": "value_a"}, {"id": "b", "uses": "value_b"}, {"id": "c", "uses": "value_c"},
        {"id": "d", "uses": "join", "inputs": {"b": "b", "c": "c"}}],
        "edges": [{"source": "a", "target": "b"}, {"source": "a", "target": "c"},
                  {"source": "b", "target": "d"}, {"source": "c", "target": "d"}]}
    result = await runtime(store).run(bp)

    assert result.status == "completed", result
    assert store.hidden == 2, "the lagging snapshot was never served: the test proves nothing"
    assert result.context["_outputs.d"] == {"b": "B", "c": "C"}


async def test_a_node_whose_scheduling_record_lags_is_read_again_not_refused() -> None:
    store = LaggingRunStore("a", hide_loads=2)
    bp = {"id": "chain", "nodes": [{"id": "a", "uses": "value_a"}, {"id": "b", "uses": "join"}],
          "edges": [{"source": "a", "target": "b", "transform": "{'from_a': input}"}]}
    result = await runtime(store).run(bp)

    assert result.status == "completed", result
    assert store.hidden == 2
    assert result.context["_outputs.b"] == {"from_a": "A"}
