"""Fallback nodes, sleep strings, join inputs, bare node ids, after_node on failure, lint at load."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from helpers import bp

from flowcraft_core import BlueprintError, FlowRuntime, Middleware, NodeContext, NodeResult, WorkflowBlueprint
from flowcraft_core.builtins.durations import duration_ms
from flowcraft_core.lint import lint_blueprint


def recorder(calls: list[tuple[str, Any, Any]], name: str, output: Any = None, *, fail: bool = False,
             action: str | None = None) -> Any:
    async def node(ctx: NodeContext) -> NodeResult:
        calls.append((name, ctx.input, dict(ctx.params)))
        if fail:
            raise RuntimeError(f"{name} broke")
        return NodeResult(output=name if output is None else output, action=action)

    return node


async def test_fallback_naming_a_node_runs_that_nodes_implementation_in_place() -> None:
    calls: list[tuple[str, Any, Any]] = []
    registry = {"a": recorder(calls, "a", {"n": 1}), "b": recorder(calls, "b", fail=True),
                "rescue": recorder(calls, "rescue", "rescued"), "c": recorder(calls, "c")}
    blueprint = bp(["a", {"id": "b", "uses": "b", "config": {"maxRetries": 2, "fallback": "b_rescue"}},
                    {"id": "b_rescue", "uses": "rescue", "params": {"mode": "safe"}}, "c"],
                   [("a", "b"), ("b", "c")])
    result = await FlowRuntime(registry=registry).run(blueprint)

    assert result.status == "completed", result.errors
    # b twice, then the rescue node's implementation once with its params and b's input; the rescue node
    # never runs as a start node of its own.
    assert calls == [("a", None, {}), ("b", {"n": 1}, {}), ("b", {"n": 1}, {}),
                     ("rescue", {"n": 1}, {"mode": "safe"}), ("c", "rescued", {})]
    assert result.context["_outputs.b"] == "rescued"
    assert "_outputs.b_rescue" not in result.context


async def test_fallback_naming_a_uses_key_still_works() -> None:
    calls: list[tuple[str, Any, Any]] = []
    registry = {"b": recorder(calls, "b", fail=True), "rescue": recorder(calls, "rescue", "rescued")}
    result = await FlowRuntime(registry=registry).run(
        bp([{"id": "b", "uses": "b", "config": {"fallback": "rescue"}}]))
    assert result.status == "completed"
    assert result.context["_outputs.b"] == "rescued"


def test_lint_refuses_a_fallback_that_is_neither_node_nor_implementation() -> None:
    blueprint = WorkflowBlueprint.model_validate(bp([{"id": "b", "uses": "b", "config": {"fallback": "ghost"}}]))
    assert [(i.path, i.code) for i in lint_blueprint(blueprint, {"b": object()})] == [
        ("nodes[0].config.fallback", "unknown-fallback")]


@pytest.mark.parametrize("value, ms", [("500ms", 500), ("5s", 5000), ("1m", 60_000), ("2h", 7_200_000),
                                       ("1d", 86_400_000), (250, 250), (0, 0), (1.5, 1.5)])
def test_sleep_durations(value: Any, ms: float) -> None:
    assert duration_ms(value) == ms


@pytest.mark.parametrize("value", ["5 s", "1.5s", "5w", "soon", -1, True, None, float("nan")])
def test_bad_sleep_durations_name_the_accepted_forms(value: Any) -> None:
    with pytest.raises(ValueError, match='"500ms", "5s", "1m", "2h", "1d"'):
        duration_ms(value)
    blueprint = WorkflowBlueprint.model_validate(bp([{"id": "z", "uses": "sleep", "params": {"duration": value}}]))
    messages = [i.message for i in lint_blueprint(blueprint, {})]
    assert len(messages) == 1 and '"500ms"' in messages[0]


async def test_sleep_with_a_string_duration_completes() -> None:
    calls: list[tuple[str, Any, Any]] = []
    result = await FlowRuntime(registry={"a": recorder(calls, "a"), "b": recorder(calls, "b")}).run(
        bp(["a", {"id": "s", "uses": "sleep", "params": {"duration": "20ms"}}, "b"], [("a", "s"), ("s", "b")]))
    assert result.status == "completed"
    assert calls[-1][:2] == ("b", "a")


async def test_join_inputs_count_only_delivering_edges() -> None:
    calls: list[tuple[str, Any, Any]] = []
    registry = {n: recorder(calls, n, {"go": False} if n == "b" else None) for n in "abcd"}
    # b ran but its edge into d was not taken: d (all) sees c alone, as its plain output.
    blueprint = bp(list("abcd"), [("a", "b"), ("a", "c"), {"source": "b", "target": "d",
                                                           "condition": "result.output.go"}, ("c", "d")])
    result = await FlowRuntime(registry=registry).run(blueprint)
    assert result.status == "completed"
    assert [c[1] for c in calls if c[0] == "d"] == ["c"]


async def test_join_with_several_delivering_edges_gets_a_mapping() -> None:
    calls: list[tuple[str, Any, Any]] = []
    registry = {n: recorder(calls, n) for n in "abcd"}
    await FlowRuntime(registry=registry).run(bp(list("abcd"), [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]))
    assert [c[1] for c in calls if c[0] == "d"] == [{"b": "b", "c": "c"}]


async def test_bare_node_ids_resolve_in_conditions_transforms_and_inputs() -> None:
    calls: list[tuple[str, Any, Any]] = []
    registry = {"a": recorder(calls, "a", {"ok": True, "v": 7}), "m": recorder(calls, "m"),
                "yes": recorder(calls, "yes"), "no": recorder(calls, "no"), "k": recorder(calls, "k")}
    blueprint = bp(["a", "m", "yes", "no", {"id": "k", "uses": "k", "inputs": {"x": "a"}}],
                   [("a", "m"), {"source": "m", "target": "yes", "condition": "a.ok && a.v > 5",
                                 "transform": "a.v"},
                    {"source": "m", "target": "no", "condition": "!a.ok"}, ("m", "k")])
    result = await FlowRuntime(registry=registry).run(blueprint)
    assert result.status == "completed"
    ran = {c[0]: c[1] for c in calls}
    assert ran["yes"] == 7 and "no" not in ran
    assert ran["k"] == {"x": {"ok": True, "v": 7}}
    assert "a" not in result.context  # an alias on lookup, not a second stored copy


async def test_after_node_sees_a_failure_with_its_error() -> None:
    seen: list[tuple[str, Any, str | None]] = []

    class Watch(Middleware):
        async def after_node(self, ctx: NodeContext, result: NodeResult | None,
                             error: BaseException | None = None) -> None:
            seen.append((ctx.node_id, result.output if result else None, str(error) if error else None))

    class OldStyle(Middleware):  # written before errors were passed: still called for successes
        async def after_node(self, ctx: NodeContext, result: NodeResult) -> None:  # type: ignore[override]
            seen.append(("old:" + ctx.node_id, result.output, None))

    calls: list[tuple[str, Any, Any]] = []
    runtime = FlowRuntime(registry={"a": recorder(calls, "a"), "b": recorder(calls, "b", fail=True)},
                          middleware=[Watch(), OldStyle()])
    result = await runtime.run(bp(["a", "b"], [("a", "b")]))
    assert result.status == "failed"
    assert seen == [("a", "a", None), ("old:a", "a", None), ("b", None, "b broke")]


async def test_runtime_refuses_a_broken_blueprint_listing_every_problem() -> None:
    broken = bp([{"id": "a", "uses": "a"}, {"id": "a", "uses": "nope"}],
                [("a", "ghost"), {"source": "a", "target": "a2"}])
    with pytest.raises(BlueprintError) as refused:
        await FlowRuntime(registry={"a": recorder([], "a")}).run(broken)
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "nodes[1].id", "nodes[1].uses", "edges[0].target", "edges[1].target"]


async def test_broken_blueprint_at_start_up_is_logged_once_and_its_runs_refused(
        caplog: pytest.LogCaptureFixture) -> None:
    good = WorkflowBlueprint.model_validate(bp(["a"], bp_id="good"))
    bad = WorkflowBlueprint.model_validate(bp(["a", "b"], [("a", "ghost")], bp_id="bad"))
    with caplog.at_level(logging.ERROR, logger="flowcraft.engine"):
        runtime = FlowRuntime(registry={"a": recorder([], "a")}, blueprints={"good": good, "bad": bad})
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["blueprint bad refused"]
    assert set(runtime.engine.broken) == {"bad"}
    assert (await runtime.run("good")).status == "completed"
    with pytest.raises(BlueprintError, match="refused") as refused:
        await runtime.run("bad")
    assert any("ghost" in p for p in refused.value.problems)


async def test_schema_and_graph_problems_are_reported_together() -> None:
    blueprint = {"id": "t", "nodes": [{"id": "a", "uses": "a"}, {"id": "a"}, {"id": "b", "uses": 3}],
                 "edges": [{"source": "a", "target": "ghost"}]}
    with pytest.raises(BlueprintError) as refused:
        await FlowRuntime(registry={"a": recorder([], "a")}).run(blueprint)
    paths = [p.split(":")[0] for p in refused.value.problems]
    assert paths == ["nodes.1.uses", "nodes.2.uses", "nodes[1].id", "edges[0].target"]


async def test_subflow_naming_a_blueprint_not_deployed_is_refused_at_start_up() -> None:
    parent = WorkflowBlueprint.model_validate(
        bp([{"id": "s", "uses": "subflow", "params": {"blueprintId": "missing"}}], bp_id="parent"))
    runtime = FlowRuntime(blueprints={"parent": parent})
    assert runtime.engine.broken["parent"] == [
        "nodes[0].params.blueprintId: subflow node 's' runs blueprint 'missing', which is not loaded"]
