"""In-process tests of the built-in nodes: subflow, wait, webhook, sleep, batch, loop, and cancellation.

SPEC acceptance cases 10-13, plus resume, webhook, batch failures, loop limits and cancel. Runs go
through FlowRuntime (the engine on in-memory stores); concurrency is coordinated with events and
deadlines, never with sleeps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowcraft_core import (
    CollectingEventBus,
    FlowRuntime,
    NodeContext,
    NodeResult,
    RunStateError,
    UnknownRunError,
    WorkflowBlueprint,
    WorkflowResult,
)
from tests.helpers import bp, wait_until

DEADLINE = 5.0




def blueprints(*dicts: dict[str, Any]) -> dict[str, WorkflowBlueprint]:
    return {d["id"]: WorkflowBlueprint.model_validate(d) for d in dicts}


class Ran:
    """Counts executions per node id (per run id when several runs share a registry)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.inputs: dict[str, list[Any]] = {}

    def hit(self, ctx: NodeContext) -> None:
        self.calls.append((ctx.run_id, ctx.node_id))
        self.inputs.setdefault(ctx.node_id, []).append(ctx.input)

    def nodes(self) -> list[str]:
        return [n for _, n in self.calls]

    def count(self, node_id: str) -> int:
        return self.nodes().count(node_id)


def const(ran: Ran, value: Any = None, action: str | None = None) -> Any:
    async def node(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=value, action=action)

    return node


async def run(runtime: FlowRuntime, blueprint: dict[str, Any] | str, context: dict[str, Any] | None = None,
              **kwargs: Any) -> WorkflowResult:
    return await asyncio.wait_for(runtime.run(blueprint, context or {}, **kwargs), DEADLINE)


# --- 10. subflow -----------------------------------------------------------------------------------


def _subflow_fixture(ran: Ran) -> tuple[dict[str, Any], dict[str, WorkflowBlueprint]]:
    async def double(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        n = await ctx.context.get("n")
        await ctx.context.set("doubled_here", True)
        return NodeResult(output=n * 2)

    async def inc(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=await ctx.context.get("x") + 1)

    async def fmt(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=f"child:{await ctx.context.get('gc_result')}")

    async def p_end(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output={"child_out": await ctx.context.get("child_out"),
                                  "child_raw": await ctx.context.get("child_raw")})

    registry = {"double": double, "inc": inc, "fmt": fmt, "p1": const(ran, 5), "p_end": p_end}
    grandchild = bp([{"id": "g1", "uses": "double"}], bp_id="gc")
    child = bp(
        [{"id": "c1", "uses": "inc"},
         {"id": "c_sub", "uses": "subflow",
          "params": {"blueprintId": "gc", "inputs": {"n": "c1"}, "outputs": {"gc_result": "g1"}}},
         {"id": "c_end", "uses": "fmt"}],
        [("c1", "c_sub"), ("c_sub", "c_end")], bp_id="child",
    )
    parent = bp(
        ["p1",
         {"id": "p_sub", "uses": "subflow",
          "params": {"blueprintId": "child", "inputs": {"x": "p1"},
                     "outputs": {"child_out": "c_end", "child_raw": "gc_result"}}},
         "p_end"],
        [("p1", "p_sub"), ("p_sub", "p_end")], bp_id="parent",
    )
    return registry, blueprints(grandchild, child, parent)


async def test_subflow_maps_inputs_and_outputs_two_levels_deep() -> None:
    ran = Ran()
    registry, bps = _subflow_fixture(ran)
    runtime = FlowRuntime(registry=registry, blueprints=bps)
    result = await run(runtime, "parent")

    assert result.status == "completed", result.errors
    # p1=5 -> child x=5 -> c1=6 -> grandchild n=6 -> g1=12 -> child gc_result=12 -> c_end "child:12"
    assert result.context["child_out"] == "child:12"
    assert result.context["child_raw"] == 12
    assert result.context["_outputs.p_end"] == {"child_out": "child:12", "child_raw": 12}
    # With an outputs mapping the subflow's own output is the child's final context.
    sub_out = result.context["_outputs.p_sub"]
    assert sub_out["_outputs.c_end"] == "child:12"
    assert sub_out["gc_result"] == 12
    # Child keys stay in the child unless mapped out.
    assert "doubled_here" not in result.context
    assert "gc_result" not in result.context
    assert ran.nodes() == ["p1", "c1", "g1", "c_end", "p_end"]


async def test_subflow_without_mappings_passes_input_and_returns_terminal_output() -> None:
    ran = Ran()

    async def shout(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=str(ctx.input).upper())

    child = bp([{"id": "s", "uses": "shout"}], bp_id="child")
    parent = bp(["p1", {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}}, "after"],
                [("p1", "sub"), ("sub", "after")], bp_id="parent")
    runtime = FlowRuntime(registry={"shout": shout, "p1": const(ran, "hello"), "after": const(ran, "x")},
                          blueprints=blueprints(child, parent))
    result = await run(runtime, "parent")

    assert result.status == "completed", result.errors
    assert ran.inputs["s"] == ["hello"]
    assert result.context["_outputs.sub"] == "HELLO"
    assert ran.inputs["after"] == ["HELLO"]


async def test_subflow_with_several_terminals_returns_each_output() -> None:
    ran = Ran()
    child = bp(["a", "b", "c"], [("a", "b"), ("a", "c")], bp_id="child")
    parent = bp([{"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}}], bp_id="parent")
    runtime = FlowRuntime(registry={"a": const(ran, 1), "b": const(ran, "B"), "c": const(ran, "C")},
                          blueprints=blueprints(child, parent))
    result = await run(runtime, "parent")
    assert result.status == "completed"
    assert result.context["_outputs.sub"] == {"b": "B", "c": "C"}


async def test_failing_subflow_fails_the_parent_with_the_childs_error() -> None:
    ran = Ran()

    async def broken(ctx: NodeContext) -> NodeResult:
        raise ValueError("child exploded")

    child = bp([{"id": "boom", "uses": "broken"}], bp_id="child")
    parent = bp([{"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}}, "after"],
                [("sub", "after")], bp_id="parent")
    runtime = FlowRuntime(registry={"broken": broken, "after": const(ran)}, blueprints=blueprints(child, parent))
    result = await run(runtime, "parent")

    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "sub"
    assert "child exploded" in result.errors[0]["message"]
    assert "'child'" in result.errors[0]["message"]
    assert ran.count("after") == 0


async def test_subflow_of_unknown_blueprint_fails_clearly() -> None:
    from flowcraft_core import BlueprintError

    parent = bp([{"id": "sub", "uses": "subflow", "params": {"blueprintId": "ghost"}}], bp_id="parent")
    # Deployed together with the rest, the missing child is found at start-up ...
    with pytest.raises(BlueprintError, match="refused") as refused:
        await run(FlowRuntime(blueprints=blueprints(parent)), "parent")
    assert "'ghost', which is not loaded" in refused.value.problems[0]
    # ... registered on its own (the child might come later), the run fails naming it.
    result = await run(FlowRuntime(), parent)
    assert result.status == "failed"
    assert "ghost" in result.errors[0]["message"]


# --- 11. wait and webhook --------------------------------------------------------------------------


def _approval_blueprint() -> dict[str, Any]:
    return bp(
        ["submit", {"id": "approval", "uses": "wait"}, "approved", "rejected", "notify"],
        [("submit", "approval"),
         {"source": "approval", "target": "approved", "action": "approve"},
         {"source": "approval", "target": "rejected", "action": "reject"},
         ("approved", "notify"), ("rejected", "notify")],
    )


def _approval_registry(ran: Ran) -> dict[str, Any]:
    return {"submit": const(ran, "doc"), "approved": const(ran, "yes"), "rejected": const(ran, "no"),
            "notify": const(ran, "sent")}


async def test_wait_node_awaits_and_resume_routes_by_action() -> None:
    ran = Ran()
    bus = CollectingEventBus()
    runtime = FlowRuntime(registry=_approval_registry(ran), event_bus=bus)
    first = await run(runtime, _approval_blueprint())

    assert first.status == "awaiting"
    assert first.awaiting == ["approval"]
    assert ran.nodes() == ["submit"]
    assert [e["payload"]["nodeId"] for e in bus.of_type("workflow:awaiting")] == ["approval"]

    final = await asyncio.wait_for(runtime.resume(first.run_id, action="approve", output={"by": "ann"}), DEADLINE)

    assert final.status == "completed", final.errors
    assert final.run_id == first.run_id
    assert ran.nodes() == ["submit", "approved", "notify"]
    assert final.context["_outputs.approval"] == {"by": "ann"}
    assert ran.inputs["approved"] == [{"by": "ann"}]
    assert final.awaiting == []


async def test_resume_with_other_action_takes_other_branch() -> None:
    ran = Ran()
    runtime = FlowRuntime(registry=_approval_registry(ran))
    first = await run(runtime, _approval_blueprint())
    final = await asyncio.wait_for(runtime.resume(first.run_id, "reject"), DEADLINE)
    assert final.status == "completed"
    assert ran.nodes() == ["submit", "rejected", "notify"]


async def test_resume_errors() -> None:
    ran = Ran()
    runtime = FlowRuntime(registry=_approval_registry(ran))
    with pytest.raises(UnknownRunError):
        await runtime.resume("no-such-run", "approve")
    first = await run(runtime, _approval_blueprint())
    with pytest.raises(RunStateError, match="not awaiting"):
        await runtime.resume(first.run_id, "approve", node_id="submit")
    done = await asyncio.wait_for(runtime.resume(first.run_id, "approve"), DEADLINE)
    assert done.status == "completed"
    with pytest.raises(RunStateError):
        await runtime.resume(first.run_id, "approve")
    assert ran.count("approved") == 1


async def test_parallel_waits_need_the_node_id_and_complete_after_both() -> None:
    ran = Ran()
    runtime = FlowRuntime(registry={"start": const(ran, 0), "after_a": const(ran), "after_b": const(ran)})
    blueprint = bp(["start", {"id": "wa", "uses": "wait"}, {"id": "wb", "uses": "wait"}, "after_a", "after_b"],
                   [("start", "wa"), ("start", "wb"), ("wa", "after_a"), ("wb", "after_b")])
    first = await run(runtime, blueprint)
    assert first.status == "awaiting"
    assert first.awaiting == ["wa", "wb"]
    with pytest.raises(RunStateError, match="name the node"):
        await runtime.resume(first.run_id, None)

    second = await asyncio.wait_for(runtime.resume(first.run_id, None, output="A", node_id="wa"), DEADLINE)
    assert second.status == "awaiting"
    assert second.awaiting == ["wb"]
    assert ran.nodes() == ["start", "after_a"]

    third = await asyncio.wait_for(runtime.resume(first.run_id, None, output="B", node_id="wb"), DEADLINE)
    assert third.status == "completed"
    assert sorted(ran.nodes()) == ["after_a", "after_b", "start"]
    assert ran.inputs["after_a"] == ["A"] and ran.inputs["after_b"] == ["B"]


async def test_webhook_resumes_with_payload_as_output() -> None:
    ran = Ran()

    async def handle(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=ctx.input["amount"] * 2)

    runtime = FlowRuntime(registry={"order": const(ran, "o-1"), "handle": handle})
    blueprint = bp(["order", {"id": "paid", "uses": "webhook"}, "handle"], [("order", "paid"), ("paid", "handle")])
    first = await run(runtime, blueprint)
    assert first.status == "awaiting"
    assert first.awaiting == ["paid"]

    payload = {"amount": 21, "currency": "EUR"}
    final = await asyncio.wait_for(runtime.resume(first.run_id, action=None, output=payload, node_id="paid"),
                                   DEADLINE)
    assert final.status == "completed"
    assert final.context["_outputs.paid"] == payload
    assert final.context["_outputs.handle"] == 42


async def test_wait_as_terminal_node_completes_on_resume() -> None:
    runtime = FlowRuntime(registry={"a": const(Ran(), 1)})
    first = await run(runtime, bp(["a", {"id": "w", "uses": "wait"}], [("a", "w")]))
    assert first.status == "awaiting"
    final = await asyncio.wait_for(runtime.resume(first.run_id, output="ok"), DEADLINE)
    assert final.status == "completed"
    assert final.context["_outputs.w"] == "ok"


# --- sleep -----------------------------------------------------------------------------------------


async def test_sleep_passes_input_through_and_continues() -> None:
    ran = Ran()
    bus = CollectingEventBus()
    runtime = FlowRuntime(registry={"a": const(ran, {"v": 1}), "b": const(ran, "B")}, event_bus=bus)
    blueprint = bp(["a", {"id": "nap", "uses": "sleep", "params": {"duration": 10}}, "b"],
                   [("a", "nap"), ("nap", "b")])
    result = await run(runtime, blueprint)

    assert result.status == "completed"
    assert ran.nodes() == ["a", "b"]
    assert ran.inputs["b"] == [{"v": 1}]
    assert result.context["_outputs.nap"] == {"v": 1}
    # The sleep is a delayed job, not a node holding a worker.
    delayed = [e["payload"] for e in bus.of_type("job:enqueued") if e["payload"]["delay"] > 0]
    assert [p["nodeId"] for p in delayed] == ["nap"]


async def test_sleep_without_duration_is_refused_at_load() -> None:
    from flowcraft_core import BlueprintError

    with pytest.raises(BlueprintError) as refused:
        await run(FlowRuntime(), bp([{"id": "nap", "uses": "sleep"}]))
    assert refused.value.problems == [
        'nodes[0].params.duration: sleep node \'nap\' needs params.duration (a number of milliseconds >= 0, '
        'or a string such as "500ms", "5s", "1m", "2h", "1d")']


# --- 12. batch -------------------------------------------------------------------------------------


def _batch_blueprint(worker: str = "square") -> dict[str, Any]:
    return bp(
        ["load",
         {"id": "scatter", "uses": "batch-scatter", "inputs": "items",
          "params": {"workerUsesKey": worker, "gatherNodeId": "gather"}},
         {"id": "gather", "uses": "batch-gather", "params": {"gatherNodeId": "gather", "outputKey": "squares"}},
         "report"],
        [("load", "scatter"), ("scatter", "gather"), ("gather", "report")],
    )


async def test_batch_runs_items_in_parallel_and_gathers_in_input_order() -> None:
    ran = Ran()
    items = list(range(10))
    finished = {i: asyncio.Event() for i in items}

    async def square(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        item = ctx.input
        # Finish in reverse order: item i waits for item i+1, so all ten must run at once.
        if item + 1 in finished:
            await asyncio.wait_for(finished[item + 1].wait(), DEADLINE)
        finished[item].set()
        return NodeResult(output=item * item)

    async def report(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=sum(ctx.input))

    runtime = FlowRuntime(registry={"load": const(ran, None), "square": square, "report": report})
    result = await run(runtime, _batch_blueprint(), {"items": items})

    assert result.status == "completed", result.errors
    expected = [i * i for i in items]
    assert result.context["squares"] == expected
    assert result.context["_outputs.gather"] == expected
    worker_inputs = [x for node, xs in ran.inputs.items() if node.startswith("scatter_") for x in xs]
    assert sorted(worker_inputs) == items  # each item handled by exactly one worker
    assert ran.count("report") == 1
    assert ran.inputs["report"] == [expected]


async def test_batch_of_nothing_gathers_an_empty_list() -> None:
    ran = Ran()
    runtime = FlowRuntime(registry={"load": const(ran), "square": const(ran), "report": const(ran, "r")})
    result = await run(runtime, _batch_blueprint(), {"items": []})
    assert result.status == "completed", result.errors
    assert result.context["squares"] == []
    assert ran.count("report") == 1


async def test_failing_batch_item_fails_the_run_with_its_index() -> None:
    ran = Ran()

    async def picky(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        if ctx.input == "bad":
            raise ValueError(f"cannot handle {ctx.input!r}")
        return NodeResult(output=ctx.input)

    runtime = FlowRuntime(registry={"load": const(ran), "picky": picky, "report": const(ran)})
    result = await run(runtime, _batch_blueprint("picky"), {"items": ["ok", "ok", "ok", "bad", "ok"]})

    assert result.status == "failed"
    message = result.errors[0]["message"]
    assert "cannot handle 'bad'" in message
    assert "item 3" in message
    assert ran.count("report") == 0
    assert "squares" not in result.context


async def test_batch_with_non_list_input_fails_clearly() -> None:
    runtime = FlowRuntime(registry={"load": const(Ran()), "square": const(Ran()), "report": const(Ran())})
    result = await run(runtime, _batch_blueprint(), {"items": "not a list"})
    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "scatter"
    assert "list" in result.errors[0]["message"]


# --- 13. loops -------------------------------------------------------------------------------------


def _counter(ran: Ran) -> dict[str, Any]:
    async def initialize(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        await ctx.context.set("count", 0)
        return NodeResult(output="Initialized")

    async def increment(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        count = (await ctx.context.get("count") or 0) + 1
        await ctx.context.set("count", count)
        return NodeResult(output=count)

    return {"initialize": initialize, "increment": increment, "finalize": const(ran, "Finalized")}


def _flowcraft_loop(condition: str, **controller_params: Any) -> dict[str, Any]:
    """The blueprint Flowcraft's `createFlow().loop('counter', ...)` builder produces."""
    return bp(
        ["initialize",
         {"id": "increment", "uses": "increment", "config": {"joinStrategy": "any"}},
         {"id": "counter-loop", "uses": "loop-controller", "params": {"condition": condition, **controller_params},
          "config": {"joinStrategy": "any"}},
         "finalize"],
        [{"source": "counter-loop", "target": "finalize", "action": "break"},
         ("initialize", "increment"),
         ("increment", "counter-loop"),
         {"source": "counter-loop", "target": "increment", "action": "continue", "transform": "context.increment"}],
    )


@pytest.mark.parametrize("n", [1, 5])
async def test_counter_loop_runs_exactly_n_times_then_exits(n: int) -> None:
    ran = Ran()
    result = await run(FlowRuntime(registry=_counter(ran)), _flowcraft_loop(f"count < {n}"))

    assert result.status == "completed", result.errors
    assert ran.count("increment") == n
    assert ran.count("initialize") == 1
    assert ran.count("finalize") == 1
    assert result.context["count"] == n
    assert result.context["_outputs.increment"] == n


async def test_loop_with_two_node_body_and_declared_entry_point() -> None:
    ran = Ran()
    registry = _counter(ran)

    async def check(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=ctx.input)

    registry["check"] = check
    blueprint = bp(
        ["initialize", "increment", "check",
         {"id": "ctl", "uses": "loop-controller", "params": {"condition": "context.count < 3"}},
         "finalize"],
        [("initialize", "increment"), ("increment", "check"), ("check", "ctl"),
         {"source": "ctl", "target": "increment", "action": "continue"},
         {"source": "ctl", "target": "finalize", "action": "break"}],
        metadata={"cycleEntryPoints": ["increment"]},
    )
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed", result.errors
    assert ran.count("increment") == 3
    assert ran.count("check") == 3
    assert ran.inputs["check"] == [1, 2, 3]
    assert ran.count("finalize") == 1


def _parity_registry(ran: Ran) -> dict[str, Any]:
    registry = _counter(ran)

    async def increment(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        count = (await ctx.context.get("count") or 0) + 1
        await ctx.context.set("count", count)
        return NodeResult(output=count, action="even" if count % 2 == 0 else "odd")

    async def echo(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        return NodeResult(output=ctx.input)

    registry.update(increment=increment, even=echo, odd=echo, merge=echo, side=echo, outer_body=echo)
    return registry


@pytest.mark.parametrize("merge_strategy", ["any", "all"])
async def test_loop_body_with_a_router_inside(merge_strategy: str) -> None:
    ran = Ran()
    blueprint = bp(
        ["initialize", "increment", "even", "odd",
         {"id": "merge", "uses": "merge", "config": {"joinStrategy": merge_strategy}},
         {"id": "ctl", "uses": "loop-controller", "params": {"condition": "count < 5"}}, "finalize"],
        [("initialize", "increment"),
         {"source": "increment", "target": "even", "action": "even"},
         {"source": "increment", "target": "odd", "action": "odd"},
         ("even", "merge"), ("odd", "merge"), ("merge", "ctl"),
         {"source": "ctl", "target": "increment", "action": "continue"},
         {"source": "ctl", "target": "finalize", "action": "break"}],
    )
    result = await run(FlowRuntime(registry=_parity_registry(ran)), blueprint)

    assert result.status == "completed", result.errors
    assert [ran.count(n) for n in ("increment", "odd", "even", "merge", "finalize")] == [5, 3, 2, 5, 1]
    # The join's input is the branch taken in this iteration only (one edge delivered, so its output
    # itself, as in Flowcraft), not outputs left over from earlier iterations.
    assert ran.inputs["merge"] == [1, 2, 3, 4, 5]


async def test_nested_loops() -> None:
    ran = Ran()
    blueprint = bp(
        ["initialize", "outer_body", {"id": "inc", "uses": "increment"},
         {"id": "inner", "uses": "loop-controller", "params": {"condition": "count % 3 != 0"}},
         {"id": "outer", "uses": "loop-controller", "params": {"condition": "count < 9"}}, "finalize"],
        [("initialize", "outer_body"), ("outer_body", "inc"), ("inc", "inner"),
         {"source": "inner", "target": "inc", "action": "continue"},
         {"source": "inner", "target": "outer", "action": "break"},
         {"source": "outer", "target": "outer_body", "action": "continue"},
         {"source": "outer", "target": "finalize", "action": "break"}],
    )
    result = await run(FlowRuntime(registry=_parity_registry(ran)), blueprint)

    assert result.status == "completed", result.errors
    assert ran.count("outer_body") == 3
    assert ran.count("inc") == 9
    assert ran.count("finalize") == 1
    assert result.context["count"] == 9


async def test_join_after_a_loop_and_a_parallel_branch_runs_once() -> None:
    ran = Ran()
    blueprint = bp(
        ["initialize", "increment", "side",
         {"id": "ctl", "uses": "loop-controller", "params": {"condition": "count < 3"}}, "finalize"],
        [("initialize", "increment"), ("initialize", "side"), ("increment", "ctl"),
         {"source": "ctl", "target": "increment", "action": "continue"},
         {"source": "ctl", "target": "finalize", "action": "break"}, ("side", "finalize")],
    )
    result = await run(FlowRuntime(registry=_parity_registry(ran)), blueprint)

    assert result.status == "completed", result.errors
    assert ran.count("increment") == 3
    assert ran.count("side") == 1
    assert ran.count("finalize") == 1


async def test_join_fed_by_an_inner_loop_exit_waits_for_the_inner_loop() -> None:
    ran = Ran()
    blueprint = bp(
        ["initialize", "outer_body", {"id": "inc", "uses": "increment"},
         {"id": "inner", "uses": "loop-controller", "params": {"condition": "count % 3 != 0"}},
         {"id": "join", "uses": "side"},
         {"id": "outer", "uses": "loop-controller", "params": {"condition": "count < 9"}}, "finalize"],
        [("initialize", "outer_body"), ("outer_body", "inc"), ("outer_body", "join"), ("inc", "inner"),
         {"source": "inner", "target": "inc", "action": "continue"},
         {"source": "inner", "target": "join", "action": "break"},
         ("join", "outer"),
         {"source": "outer", "target": "outer_body", "action": "continue"},
         {"source": "outer", "target": "finalize", "action": "break"}],
    )
    result = await run(FlowRuntime(registry=_parity_registry(ran)), blueprint)

    assert result.status == "completed", result.errors
    assert [ran.count(n) for n in ("outer_body", "inc", "join", "finalize")] == [3, 9, 3, 1]


async def test_loop_hitting_max_iterations_fails_clearly() -> None:
    ran = Ran()
    result = await run(FlowRuntime(registry=_counter(ran)), _flowcraft_loop("true", maxIterations=3))

    assert result.status == "failed"
    assert ran.count("increment") == 3
    assert ran.count("finalize") == 0
    assert result.errors[0]["nodeId"] == "counter-loop"
    assert "maxIterations=3" in result.errors[0]["message"]


async def test_loop_max_iterations_with_break_exits_instead() -> None:
    ran = Ran()
    blueprint = _flowcraft_loop("true", maxIterations=3, onMaxIterations="break")
    result = await run(FlowRuntime(registry=_counter(ran)), blueprint)

    assert result.status == "completed", result.errors
    assert ran.count("increment") == 3
    assert ran.count("finalize") == 1


async def test_loop_controller_with_unsafe_condition_is_refused_at_load() -> None:
    from flowcraft_core import BlueprintError

    with pytest.raises(BlueprintError, match="names containing '__' are not allowed"):
        await run(FlowRuntime(registry=_counter(Ran())), _flowcraft_loop("__import__('os')"))


async def test_loop_controller_whose_condition_fails_at_run_time_fails_the_run() -> None:
    result = await run(FlowRuntime(registry=_counter(Ran())), _flowcraft_loop("len(count) > 1"))
    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "counter-loop"


# --- cancellation ----------------------------------------------------------------------------------


async def _start_and_cancel(runtime: FlowRuntime, blueprint: dict[str, Any], started: asyncio.Event,
                            run_id: str) -> WorkflowResult:
    task = asyncio.create_task(runtime.run(blueprint, {}, run_id=run_id))
    try:
        await asyncio.wait_for(started.wait(), DEADLINE)
        await runtime.cancel(run_id, "user pressed stop")
        return await asyncio.wait_for(task, DEADLINE)
    finally:
        if not task.done():
            task.cancel()


async def test_cancel_wakes_a_node_waiting_on_the_signal() -> None:
    ran = Ran()
    started = asyncio.Event()
    woke: list[str | None] = []

    async def long(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        started.set()
        await ctx.signal.wait()
        woke.append(ctx.signal.reason)
        ctx.signal.raise_if_cancelled()
        return NodeResult(output="never")

    bus = CollectingEventBus()
    runtime = FlowRuntime(registry={"long": long, "after": const(ran)}, event_bus=bus)
    result = await _start_and_cancel(runtime, bp(["long", "after"], [("long", "after")]), started, "cancel-1")

    assert result.status == "cancelled"
    assert result.reason == "user pressed stop"
    assert woke == ["user pressed stop"]
    assert ran.nodes() == ["long"]
    assert [e["payload"]["runId"] for e in bus.of_type("workflow:cancelled")] == ["cancel-1"]
    assert bus.of_type("workflow:finish") == []


async def test_cancel_seen_by_a_polling_node_that_returns_normally() -> None:
    ran = Ran()
    started = asyncio.Event()

    async def poller(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        started.set()
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while not ctx.signal.cancelled:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.001)
        return NodeResult(output="stopped early")

    runtime = FlowRuntime(registry={"poller": poller, "after": const(ran), "other": const(ran)})
    result = await _start_and_cancel(runtime, bp(["poller", "after"], [("poller", "after")]), started, "cancel-2")

    assert result.status == "cancelled"
    assert ran.nodes() == ["poller"]
    with pytest.raises(RunStateError):
        await runtime.cancel("cancel-2")


async def test_cancel_stops_parallel_branches_and_children() -> None:
    ran = Ran()
    both = asyncio.Event()
    waiting: set[str] = set()

    async def long(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        waiting.add(ctx.run_id)
        if len(waiting) == 2:
            both.set()
        await ctx.signal.wait()
        return NodeResult(output="late")

    child = bp([{"id": "inner", "uses": "long"}, "inner_after"], [("inner", "inner_after")], bp_id="child")
    parent = bp([{"id": "direct", "uses": "long"}, {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}},
                 "join"], [("direct", "join"), ("sub", "join")], bp_id="parent")
    runtime = FlowRuntime(registry={"long": long, "inner_after": const(ran), "join": const(ran)},
                          blueprints=blueprints(child, parent))
    task = asyncio.create_task(runtime.run("parent", run_id="cancel-3"))
    try:
        await asyncio.wait_for(both.wait(), DEADLINE)  # the direct node and the child's node both run
        await runtime.cancel("cancel-3")
        result = await asyncio.wait_for(task, DEADLINE)
    finally:
        if not task.done():
            task.cancel()

    assert result.status == "cancelled"
    assert sorted(ran.nodes()) == ["direct", "inner"]


async def test_cancel_an_awaiting_run() -> None:
    ran = Ran()
    runtime = FlowRuntime(registry=_approval_registry(ran))
    first = await run(runtime, _approval_blueprint())
    assert first.status == "awaiting"
    await runtime.cancel(first.run_id)
    after = await runtime.result(first.run_id)
    assert after.status == "cancelled"
    with pytest.raises(RunStateError):
        await runtime.resume(first.run_id, "approve")
    assert ran.nodes() == ["submit"]


async def test_cancel_unknown_run() -> None:
    with pytest.raises(UnknownRunError):
        await FlowRuntime().cancel("nope")


class _SignalingBus(CollectingEventBus):
    """Collects events and sets an asyncio.Event when one matches, so tests can wait for it."""

    def __init__(self, match: Any) -> None:
        super().__init__()
        self.match = match
        self.seen = asyncio.Event()

    async def emit(self, event: dict[str, Any]) -> None:
        await super().emit(event)
        if self.match(event):
            self.seen.set()


async def test_cancel_during_a_long_retry_delay_ends_the_run_promptly() -> None:
    ran = Ran()

    async def fails(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        raise RuntimeError("down")

    bus = _SignalingBus(lambda e: e["type"] == "node:retry")
    runtime = FlowRuntime(registry={"fails": fails, "after": const(ran)}, event_bus=bus)
    blueprint = bp([{"id": "f", "uses": "fails", "config": {"maxRetries": 5, "retryDelay": 600_000}}, "after"],
                   [("f", "after")])
    result = await _start_and_cancel(runtime, blueprint, bus.seen, "cancel-retry")

    assert result.status == "cancelled"
    assert ran.nodes() == ["f"]  # no second attempt after the cancel


async def test_cancel_during_a_long_sleep_ends_the_run_promptly() -> None:
    # Nothing is in flight while the branch sleeps: the cancel itself must wake the runtime.
    ran = Ran()
    runtime = FlowRuntime(registry={"a": const(ran, 1), "after": const(ran)})
    blueprint = bp(["a", {"id": "nap", "uses": "sleep", "params": {"duration": 600_000}}, "after"],
                   [("a", "nap"), ("nap", "after")])
    task = asyncio.create_task(runtime.run(blueprint, run_id="cancel-sleep"))
    try:
        async def sleeping() -> bool:
            state = await runtime.engine.run_store.load("cancel-sleep")
            record = state.record("nap") if state else None
            return record is not None and record.wake_at is not None

        await wait_until(sleeping, DEADLINE, 0.01, message="the sleep node was scheduled")
        await runtime.cancel("cancel-sleep")
        result = await asyncio.wait_for(task, DEADLINE)
    finally:
        if not task.done():
            task.cancel()

    assert result.status == "cancelled"
    assert ran.nodes() == ["a"]


async def test_failure_while_another_branch_sleeps_ends_the_run_promptly() -> None:
    ran = Ran()
    slept = asyncio.Event()

    class Bus(CollectingEventBus):
        async def emit(self, event: dict[str, Any]) -> None:
            await super().emit(event)
            if event["type"] == "job:enqueued" and event["payload"]["delay"] > 0:
                slept.set()

    async def fails_later(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        await asyncio.wait_for(slept.wait(), DEADLINE)  # fail only once the other branch sleeps
        raise RuntimeError("broken")

    runtime = FlowRuntime(registry={"a": const(ran, 1), "fails_later": fails_later, "after": const(ran)},
                          event_bus=Bus())
    blueprint = bp(["a", {"id": "nap", "uses": "sleep", "params": {"duration": 600_000}}, "after", "fails_later"],
                   [("a", "nap"), ("nap", "after"), ("a", "fails_later")])
    result = await run(runtime, blueprint)

    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "fails_later"
    assert "after" not in ran.nodes()


async def test_subflow_timeout_stops_the_child_run() -> None:
    ran = Ran()
    child_started = asyncio.Event()
    child_stopped: list[str] = []

    async def hang(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        child_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            child_stopped.append(ctx.node_id)
            raise
        return NodeResult()

    child = bp([{"id": "h", "uses": "hang"}, "child_after"], [("h", "child_after")], bp_id="child")
    parent = bp([{"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"},
                  "config": {"timeout": 50, "fallback": "rescue"}}, "after"], [("sub", "after")], bp_id="parent")
    registry = {"hang": hang, "child_after": const(ran), "rescue": const(ran, "rescued"), "after": const(ran)}
    result = await run(FlowRuntime(registry=registry, blueprints=blueprints(child, parent)), "parent")

    assert result.status == "completed", result.errors
    assert result.context["_outputs.sub"] == "rescued"
    assert child_stopped == ["h"]  # the child's node did not keep running after the parent moved on
    assert "child_after" not in ran.nodes()
    assert ran.inputs["after"] == ["rescued"]


async def test_cancelling_the_task_that_runs_a_run_cancels_the_run() -> None:
    ran = Ran()
    started = asyncio.Event()
    stopped: list[str] = []

    async def long(ctx: NodeContext) -> NodeResult:
        ran.hit(ctx)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(ctx.node_id)
            raise
        return NodeResult()

    runtime = FlowRuntime(registry={"long": long, "after": const(ran)})
    task = asyncio.create_task(runtime.run(bp(["long", "after"], [("long", "after")]), run_id="abandoned"))
    await asyncio.wait_for(started.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    after = await runtime.result("abandoned")
    assert after.status == "cancelled"
    assert stopped == ["long"]
    assert ran.nodes() == ["long"]
