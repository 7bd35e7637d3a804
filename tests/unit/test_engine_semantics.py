"""In-process acceptance tests of the workflow semantics (SPEC acceptance cases 1-9).

Every run here goes through FlowRuntime, which is the same engine as the distributed runtime on
in-memory stores. Tests look at what a user sees: the status, the final context, which nodes ran and
how often, and the events emitted. Concurrency is coordinated with events and deadlines, never with
sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from flowcraft_core import CollectingEventBus, FlowRuntime, NodeContext, NodeResult, WorkflowResult
from tests.helpers import bp

DEADLINE = 5.0  # seconds; only ever reached when something is broken


# --- helpers ---------------------------------------------------------------------------------------




class Trace:
    """Records every execution: node ids in order, and each node's inputs."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.inputs: dict[str, list[Any]] = {}

    def hit(self, ctx: NodeContext) -> None:
        self.order.append(ctx.node_id)
        self.inputs.setdefault(ctx.node_id, []).append(ctx.input)

    def count(self, node_id: str) -> int:
        return self.order.count(node_id)

    def ran(self) -> set[str]:
        return set(self.order)


def returning(trace: Trace, value: Any = None, *, action: str | None = None,
              from_input: Callable[[Any], Any] | None = None) -> Callable[[NodeContext], Any]:
    """An async node that records its call and returns value (or from_input(ctx.input)) and action."""

    async def node(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        out = from_input(ctx.input) if from_input is not None else value
        return NodeResult(output=out, action=action)

    return node


def run_events(bus: CollectingEventBus, run_id: str, event_type: str) -> list[dict[str, Any]]:
    return [e for e in bus.of_type(event_type) if e["payload"].get("runId") == run_id]


async def run(runtime: FlowRuntime, blueprint: dict[str, Any], context: dict[str, Any] | None = None,
              **kwargs: Any) -> WorkflowResult:
    """runtime.run with a deadline, so a run that never ends fails the test instead of hanging it."""
    return await asyncio.wait_for(runtime.run(blueprint, context or {}, **kwargs), DEADLINE)


# --- 1. linear -------------------------------------------------------------------------------------


async def test_linear_chain_passes_outputs_along() -> None:
    trace = Trace()
    registry = {
        "a": returning(trace, "A"),
        "b": returning(trace, from_input=lambda x: x + "B"),
        "c": returning(trace, from_input=lambda x: x + "C"),
    }
    result = await run(FlowRuntime(registry=registry), bp(["a", "b", "c"], [("a", "b"), ("b", "c")]))

    assert result.status == "completed"
    assert result.errors == []
    assert trace.order == ["a", "b", "c"]
    assert trace.inputs["b"] == ["A"]
    assert trace.inputs["c"] == ["AB"]
    assert result.context["_outputs.c"] == "ABC"
    assert {k: result.context[k] for k in ("_outputs.a", "_outputs.b")} == {"_outputs.a": "A", "_outputs.b": "AB"}


async def test_start_node_sees_initial_context_and_no_input() -> None:
    seen: dict[str, Any] = {}

    async def a(ctx: NodeContext) -> dict[str, Any]:
        seen["input"] = ctx.input
        seen["topic"] = await ctx.context.get("topic")
        return {"output": 1}

    result = await run(FlowRuntime(registry={"a": a}), bp(["a"]), {"topic": "x"})
    assert result.status == "completed"
    assert seen == {"input": None, "topic": "x"}
    assert result.context["topic"] == "x"


# --- 2. fan-out / fan-in ---------------------------------------------------------------------------


async def test_fan_out_runs_branches_concurrently_and_join_runs_once_after_all() -> None:
    trace = Trace()
    started: set[str] = set()
    all_started = asyncio.Event()

    async def branch(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        started.add(ctx.node_id)
        if len(started) == 3:
            all_started.set()
        # Each branch waits until all three are running: proves they run concurrently.
        await asyncio.wait_for(all_started.wait(), DEADLINE)
        await ctx.context.set(f"seen_{ctx.node_id}", ctx.input)
        return NodeResult(output=ctx.node_id.upper())

    join_view: dict[str, Any] = {}

    async def e(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        join_view.update({k: await ctx.context.get(f"_outputs.{k}") for k in "bcd"})
        return NodeResult(output="E")

    registry = {"a": returning(trace, "A"), "b": branch, "c": branch, "d": branch, "e": e}
    blueprint = bp("abcde", [("a", "b"), ("a", "c"), ("a", "d"), ("b", "e"), ("c", "e"), ("d", "e")])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.count("e") == 1
    assert trace.order.index("e") > max(trace.order.index(x) for x in "bcd")
    assert join_view == {"b": "B", "c": "C", "d": "D"}
    # Without explicit inputs a join's input holds every predecessor's output.
    assert trace.inputs["e"] == [{"b": "B", "c": "C", "d": "D"}]
    assert {result.context[f"seen_{x}"] for x in "bcd"} == {"A"}
    assert result.context["_outputs.e"] == "E"


# --- 3/4. actions ----------------------------------------------------------------------------------


async def test_router_action_takes_only_matching_edge() -> None:
    trace = Trace()
    registry = {"a": returning(trace, "routed", action="x"), "on_x": returning(trace, "X"),
                "on_y": returning(trace, "Y")}
    bus = CollectingEventBus()
    blueprint = bp(["a", "on_x", "on_y"], [{"source": "a", "target": "on_x", "action": "x"},
                                           {"source": "a", "target": "on_y", "action": "y"}])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"a", "on_x"}
    assert trace.inputs["on_x"] == ["routed"]
    assert "_outputs.on_y" not in result.context
    skipped = {e["payload"]["nodeId"] for e in run_events(bus, result.run_id, "node:skipped")}
    assert skipped == {"on_y"}


async def test_unmatched_action_takes_edge_without_action() -> None:
    trace = Trace()
    registry = {"a": returning(trace, 1, action="unknown"), "on_x": returning(trace),
                "fallthrough": returning(trace)}
    blueprint = bp(["a", "on_x", "fallthrough"], [{"source": "a", "target": "on_x", "action": "x"},
                                                  {"source": "a", "target": "fallthrough"}])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"a", "fallthrough"}


async def test_matched_action_does_not_also_take_the_default_edge() -> None:
    # Flowcraft's rule: the edge without action is the default route, used only when no action matches.
    trace = Trace()
    registry = {"a": returning(trace, 1, action="x"), "on_x": returning(trace), "fallthrough": returning(trace)}
    blueprint = bp(["a", "on_x", "fallthrough"], [{"source": "a", "target": "on_x", "action": "x"},
                                                  {"source": "a", "target": "fallthrough"}])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"a", "on_x"}


async def test_no_action_with_only_action_edges_ends_the_branch_quietly() -> None:
    trace = Trace()
    registry = {"a": returning(trace, 1), "on_x": returning(trace), "after": returning(trace)}
    blueprint = bp(["a", "on_x", "after"], [{"source": "a", "target": "on_x", "action": "x"}, ("on_x", "after")])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"a"}


# --- 5. conditions and transforms ------------------------------------------------------------------


@pytest.mark.parametrize(("score", "expected"), [(0.7, "high"), (0.3, "low"), (0.5, "low")])
async def test_condition_routes_on_result(score: float, expected: str) -> None:
    trace = Trace()
    bus = CollectingEventBus()
    registry = {"a": returning(trace, {"score": score}), "high": returning(trace), "low": returning(trace)}
    blueprint = bp(["a", "high", "low"], [
        {"source": "a", "target": "high", "condition": "result.output.score > 0.5"},
        {"source": "a", "target": "low", "condition": "result.output.score <= 0.5"},
    ])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"a", expected}
    evaluated = {(e["payload"]["target"], e["payload"]["result"])
                 for e in run_events(bus, result.run_id, "edge:evaluate")}
    assert evaluated == {("high", expected == "high"), ("low", expected == "low")}


async def test_condition_can_read_the_context() -> None:
    trace = Trace()
    registry = {"a": returning(trace, 1), "yes": returning(trace), "no": returning(trace)}
    blueprint = bp(["a", "yes", "no"], [
        {"source": "a", "target": "yes", "condition": "context.limit > 10"},
        {"source": "a", "target": "no", "condition": "limit <= 10"},
    ])
    result = await run(FlowRuntime(registry=registry), blueprint, {"limit": 42})
    assert result.status == "completed"
    assert trace.ran() == {"a", "yes"}


async def test_transform_becomes_the_targets_input() -> None:
    trace = Trace()
    registry = {"a": returning(trace, {"value": [1, 2, 3], "noise": "x"}), "b": returning(trace, "done")}
    blueprint = bp(["a", "b"], [{"source": "a", "target": "b", "transform": "result.output.value"}])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.inputs["b"] == [[1, 2, 3]]


async def test_condition_and_transform_together() -> None:
    trace = Trace()
    registry = {"a": returning(trace, {"score": 0.9, "value": "payload"}), "b": returning(trace),
                "c": returning(trace)}
    blueprint = bp(["a", "b", "c"], [
        {"source": "a", "target": "b", "condition": "result.output.score > 0.5", "transform": "result.output.value"},
        {"source": "a", "target": "c", "condition": "result.output.score <= 0.5", "transform": "'never'"},
    ])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"a", "b"}
    assert trace.inputs["b"] == ["payload"]


async def test_failing_condition_fails_the_run_and_names_the_edge() -> None:
    trace = Trace()
    registry = {"a": returning(trace, 1), "b": returning(trace)}
    # Passes lint, fails when evaluated: the length of a number.
    blueprint = bp(["a", "b"], [{"source": "a", "target": "b", "condition": "len(result.output) > 0"}])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "failed"
    assert trace.ran() == {"a"}
    assert result.errors and result.errors[0]["nodeId"] == "a"
    assert "a->b" in result.errors[0]["message"]


# --- 6. joins --------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["x", "y"])
async def test_any_join_after_router_runs_once(action: str) -> None:
    trace = Trace()
    registry = {"route": returning(trace, "r", action=action), "bx": returning(trace, "BX"),
                "by": returning(trace, "BY"), "join": returning(trace, "J")}
    blueprint = bp(
        ["route", "bx", "by", {"id": "join", "uses": "join", "config": {"joinStrategy": "any"}}],
        [{"source": "route", "target": "bx", "action": "x"}, {"source": "route", "target": "by", "action": "y"},
         ("bx", "join"), ("by", "join")],
    )
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.count("join") == 1
    assert trace.ran() == {"route", f"b{action}", "join"}
    assert result.context["_outputs.join"] == "J"


async def test_any_join_with_both_branches_arriving_runs_once_on_the_first() -> None:
    trace = Trace()
    join_ran = asyncio.Event()

    async def join(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        join_ran.set()
        return NodeResult(output="J")

    async def slow(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        # Arrive only after the join already ran on the fast branch.
        await asyncio.wait_for(join_ran.wait(), DEADLINE)
        return NodeResult(output="SLOW")

    registry = {"a": returning(trace, 0), "fast": returning(trace, "FAST"), "slow": slow, "join": join}
    blueprint = bp(
        ["a", "fast", "slow", {"id": "join", "uses": "join", "config": {"joinStrategy": "any"}}],
        [("a", "fast"), ("a", "slow"), ("fast", "join"), ("slow", "join")],
    )
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.count("join") == 1
    assert trace.count("slow") == 1
    assert result.context["_outputs.slow"] == "SLOW"


async def test_all_join_after_router_runs_once_with_the_branch_that_ran() -> None:
    # "all" waits for every predecessor that can still arrive: the branch not taken does not block it.
    trace = Trace()
    registry = {"route": returning(trace, "r", action="x"), "bx": returning(trace, "BX"),
                "by": returning(trace, "BY"), "join": returning(trace, "J")}
    blueprint = bp(
        ["route", "bx", "by", "join"],
        [{"source": "route", "target": "bx", "action": "x"}, {"source": "route", "target": "by", "action": "y"},
         ("bx", "join"), ("by", "join")],
    )
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert trace.count("join") == 1
    # Exactly one edge delivered: the join gets that predecessor's output, as in Flowcraft.
    assert trace.inputs["join"] == ["BX"]


async def test_dead_path_skips_a_whole_chain_and_the_run_completes() -> None:
    trace = Trace()
    bus = CollectingEventBus()
    registry = {n: returning(trace, n) for n in ("s", "p", "q", "r", "z")}
    registry["s"] = returning(trace, "s", action="left")
    blueprint = bp("spqrz", [{"source": "s", "target": "p", "action": "left"},
                             {"source": "s", "target": "q", "action": "right"},
                             ("q", "r"), ("p", "z"), ("r", "z")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed"
    assert trace.ran() == {"s", "p", "z"}
    skipped = [e["payload"]["nodeId"] for e in run_events(bus, result.run_id, "node:skipped")]
    assert sorted(skipped) == ["q", "r"]


async def test_all_branches_untaken_skips_the_join_too() -> None:
    trace = Trace()
    registry = {"route": returning(trace, "r", action="none"), "bx": returning(trace), "by": returning(trace),
                "join": returning(trace)}
    blueprint = bp(
        ["route", "bx", "by", "join"],
        [{"source": "route", "target": "bx", "action": "x"}, {"source": "route", "target": "by", "action": "y"},
         ("bx", "join"), ("by", "join")],
    )
    result = await run(FlowRuntime(registry=registry), blueprint)
    assert result.status == "completed"
    assert trace.ran() == {"route"}


# --- 7. retries ------------------------------------------------------------------------------------


def flaky(trace: Trace, failures: int, output: Any = "ok") -> Callable[[NodeContext], Any]:
    """Fails its first `failures` calls, then returns output."""
    calls = Counter[str]()

    async def node(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        calls[ctx.node_id] += 1
        if calls[ctx.node_id] <= failures:
            raise RuntimeError(f"boom {calls[ctx.node_id]}")
        return NodeResult(output=output)

    return node


async def test_retries_until_success() -> None:
    trace = Trace()
    bus = CollectingEventBus()
    registry = {"f": flaky(trace, failures=2), "after": returning(trace, "after")}
    blueprint = bp([{"id": "f", "uses": "f", "config": {"maxRetries": 3, "retryDelay": 1}}, "after"], [("f", "after")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed"
    assert trace.count("f") == 3
    assert trace.count("after") == 1
    assert trace.inputs["after"] == ["ok"]
    retries = run_events(bus, result.run_id, "node:retry")
    assert [(e["payload"]["nodeId"], e["payload"]["attempt"]) for e in retries] == [("f", 1), ("f", 2)]
    assert "boom 1" in retries[0]["payload"]["error"]
    finish = [e for e in run_events(bus, result.run_id, "node:finish") if e["payload"]["nodeId"] == "f"]
    assert [e["payload"]["attempts"] for e in finish] == [3]
    assert run_events(bus, result.run_id, "node:error") == []


async def test_retries_exhausted_fails_with_last_attempt() -> None:
    trace = Trace()
    bus = CollectingEventBus()
    registry = {"f": flaky(trace, failures=5), "after": returning(trace)}
    blueprint = bp([{"id": "f", "uses": "f", "config": {"maxRetries": 3, "retryDelay": 1}}, "after"], [("f", "after")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "failed"
    assert trace.count("f") == 3
    assert "after" not in trace.ran()
    assert result.errors == [{"nodeId": "f", "message": "RuntimeError: boom 3", "attempt": 3}]
    assert len(run_events(bus, result.run_id, "node:retry")) == 2
    assert [e["payload"]["nodeId"] for e in run_events(bus, result.run_id, "node:error")] == ["f"]


async def test_default_is_a_single_attempt() -> None:
    trace = Trace()
    result = await run(FlowRuntime(registry={"f": flaky(trace, failures=1)}), bp(["f"]))
    assert result.status == "failed"
    assert trace.count("f") == 1


async def test_failed_attempt_leaves_no_context_writes_behind() -> None:
    calls = Counter[str]()

    async def f(ctx: NodeContext) -> NodeResult:
        calls["f"] += 1
        await ctx.context.set(f"attempt_{calls['f']}", True)
        if calls["f"] == 1:
            raise RuntimeError("first attempt fails after writing")
        return NodeResult(output="ok")

    blueprint = bp([{"id": "f", "uses": "f", "config": {"maxRetries": 2, "retryDelay": 1}}])
    result = await run(FlowRuntime(registry={"f": f}), blueprint)

    assert result.status == "completed"
    assert "attempt_1" not in result.context
    assert result.context["attempt_2"] is True


# --- 8. timeouts and fallback ----------------------------------------------------------------------


async def test_timeout_then_fallback_output_is_used() -> None:
    trace = Trace()
    bus = CollectingEventBus()

    async def hang(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        await asyncio.Event().wait()  # never finishes on its own
        raise AssertionError("unreachable")

    async def rescue(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        return NodeResult(output=f"rescued {ctx.node_id}")

    registry = {"hang": hang, "rescue": rescue, "after": returning(trace, "after")}
    blueprint = bp([{"id": "slow", "uses": "hang", "config": {"timeout": 50, "fallback": "rescue"}}, "after"],
                   [("slow", "after")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed"
    assert result.context["_outputs.slow"] == "rescued slow"
    assert trace.inputs["after"] == ["rescued slow"]
    fallbacks = run_events(bus, result.run_id, "node:fallback")
    assert len(fallbacks) == 1
    assert fallbacks[0]["payload"]["nodeId"] == "slow"
    assert "timed out" in fallbacks[0]["payload"]["error"]


async def test_timeout_without_fallback_fails_the_node() -> None:
    trace = Trace()

    async def hang(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    blueprint = bp([{"id": "slow", "uses": "hang", "config": {"timeout": 50, "maxRetries": 2, "retryDelay": 1}},
                    "after"], [("slow", "after")])
    result = await run(FlowRuntime(registry={"hang": hang, "after": returning(trace)}), blueprint)

    assert result.status == "failed"
    assert trace.count("slow") == 2
    assert "after" not in trace.ran()
    assert result.errors[0]["nodeId"] == "slow"
    assert result.errors[0]["attempt"] == 2
    assert "timed out after 50 ms" in result.errors[0]["message"]


async def test_timeout_of_a_blocking_sync_node_uses_the_fallback() -> None:
    release = threading.Event()

    def blocking(ctx: NodeContext) -> dict[str, Any]:
        release.wait(DEADLINE)
        return {"output": "too late"}

    def rescue(ctx: NodeContext) -> dict[str, Any]:
        return {"output": "rescued"}

    blueprint = bp([{"id": "slow", "uses": "blocking", "config": {"timeout": 50, "fallback": "rescue"}}])
    try:
        result = await run(FlowRuntime(registry={"blocking": blocking, "rescue": rescue}), blueprint)
    finally:
        release.set()
    assert result.status == "completed"
    assert result.context["_outputs.slow"] == "rescued"


async def test_fallback_after_retries_runs_once() -> None:
    trace = Trace()
    bus = CollectingEventBus()
    rescued: list[str] = []

    async def rescue(ctx: NodeContext) -> NodeResult:
        rescued.append(ctx.node_id)  # the fallback runs in the failed node's place
        return NodeResult(output="plan b")

    registry = {"f": flaky(trace, failures=99), "rescue": rescue, "after": returning(trace)}
    blueprint = bp([{"id": "f", "uses": "f", "config": {"maxRetries": 2, "retryDelay": 1, "fallback": "rescue"}},
                    "after"], [("f", "after")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed"
    assert trace.count("f") == 2
    assert rescued == ["f"]
    assert trace.inputs["after"] == ["plan b"]
    assert len(run_events(bus, result.run_id, "node:fallback")) == 1
    assert run_events(bus, result.run_id, "node:error") == []


async def test_failing_fallback_fails_the_node() -> None:
    trace = Trace()

    async def broken_rescue(ctx: NodeContext) -> NodeResult:
        raise ValueError("rescue failed too")

    registry = {"f": flaky(trace, failures=99), "rescue": broken_rescue, "after": returning(trace)}
    bus = CollectingEventBus()
    blueprint = bp([{"id": "f", "uses": "f", "config": {"fallback": "rescue"}}, "after"], [("f", "after")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "failed"
    assert result.errors == [{"nodeId": "f", "attempt": 1, "message":
                              "RuntimeError: boom 1 (and its fallback failed: ValueError: rescue failed too)"}]
    assert "after" not in trace.ran()
    assert len(run_events(bus, result.run_id, "node:error")) == 1


async def test_fallback_returning_an_error_fails_the_node() -> None:
    trace = Trace()
    registry = {"f": flaky(trace, failures=99), "rescue": lambda ctx: {"error": "no plan b"},
                "after": returning(trace)}
    blueprint = bp([{"id": "f", "uses": "f", "config": {"fallback": "rescue"}}, "after"], [("f", "after")])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "failed"
    assert "no plan b" in result.errors[0]["message"]
    assert "after" not in trace.ran()


# --- 9. failure ------------------------------------------------------------------------------------


async def test_failure_fails_the_run_names_the_node_and_stops_successors() -> None:
    trace = Trace()
    bus = CollectingEventBus()

    async def broken(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        raise ValueError("bad input")

    registry = {"a": returning(trace, 1), "b": broken, "after_b": returning(trace), "c": returning(trace, "C"),
                "join": returning(trace)}
    blueprint = bp(["a", "b", "after_b", "c", "join"],
                   [("a", "b"), ("b", "after_b"), ("a", "c"), ("b", "join"), ("c", "join")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "failed"
    assert result.errors == [{"nodeId": "b", "message": "ValueError: bad input", "attempt": 1}]
    assert result.reason is not None and "'b'" in result.reason and "bad input" in result.reason
    assert "after_b" not in trace.ran()
    assert "join" not in trace.ran()
    finish = run_events(bus, result.run_id, "workflow:finish")
    assert [e["payload"]["status"] for e in finish] == ["failed"]


async def test_branch_finishing_after_a_failure_starts_nothing() -> None:
    # c is still running when b fails; when c ends, neither its successor nor the join may run,
    # and the run must still return (nothing waits forever for b).
    trace = Trace()
    runtime: FlowRuntime

    async def broken(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        raise ValueError("bad")

    async def slow(ctx: NodeContext) -> NodeResult:
        trace.hit(ctx)
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while (await runtime.engine.status_store.get(ctx.run_id) or {}).get("status") != "failed":
            assert asyncio.get_running_loop().time() < deadline, "run never failed"
            await asyncio.sleep(0.001)
        return NodeResult(output="late")

    registry = {"a": returning(trace, 1), "b": broken, "c": slow, "after_c": returning(trace),
                "join": returning(trace)}
    runtime = FlowRuntime(registry=registry)
    blueprint = bp(["a", "b", "c", "after_c", "join"],
                   [("a", "b"), ("a", "c"), ("c", "after_c"), ("b", "join"), ("c", "join")])
    result = await run(runtime, blueprint)

    assert result.status == "failed"
    assert trace.count("c") == 1
    assert "after_c" not in trace.ran()
    assert "join" not in trace.ran()
    assert result.errors[0]["nodeId"] == "b"


async def test_unknown_implementation_is_refused_at_load() -> None:
    from flowcraft_core import BlueprintError

    with pytest.raises(BlueprintError) as refused:
        await run(FlowRuntime(registry={}), bp([{"id": "a", "uses": "nope"}]))
    assert refused.value.problems == [
        "nodes[0].uses: node 'a' uses 'nope', which is neither registered nor built in"]


async def test_unknown_blueprint_id_raises() -> None:
    from flowcraft_core import BlueprintError

    with pytest.raises(BlueprintError, match="unknown blueprint 'missing'"):
        await FlowRuntime().run("missing")


async def test_node_result_error_field_fails_the_attempt() -> None:
    async def soft_fail(ctx: NodeContext) -> dict[str, Any]:
        return {"error": "upstream said no"}

    result = await run(FlowRuntime(registry={"a": soft_fail}), bp(["a"]))
    assert result.status == "failed"
    assert "upstream said no" in result.errors[0]["message"]


async def test_concurrent_runs_on_one_runtime_stay_apart() -> None:
    async def a(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=await ctx.context.get("n"))

    async def b(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=ctx.input * 10)

    runtime = FlowRuntime(registry={"a": a, "b": b})
    blueprint = bp(["a", "b"], [("a", "b")])
    results = await asyncio.wait_for(asyncio.gather(*(runtime.run(blueprint, {"n": n}) for n in range(8))),
                                     DEADLINE)
    assert [r.status for r in results] == ["completed"] * 8
    assert [r.context["_outputs.b"] for r in results] == [n * 10 for n in range(8)]
    assert len({r.run_id for r in results}) == 8
