"""The node API as a user writes against it: function and class nodes, results, inputs, context,
dependencies, middleware and events. Every test runs a blueprint in process through FlowRuntime."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from flowcraft_core import (
    BaseNode,
    CollectingEventBus,
    FlowRuntime,
    Middleware,
    NodeContext,
    NodeResult,
    WorkflowResult,
)
from tests.helpers import bp

DEADLINE = 5.0




async def run(runtime: FlowRuntime, blueprint: dict[str, Any], context: dict[str, Any] | None = None
              ) -> WorkflowResult:
    return await asyncio.wait_for(runtime.run(blueprint, context or {}), DEADLINE)


def collect_input(store: dict[str, Any]) -> Any:
    async def node(ctx: NodeContext) -> None:
        store[ctx.node_id] = ctx.input

    return node


# --- function nodes --------------------------------------------------------------------------------


async def test_sync_and_async_function_nodes() -> None:
    seen: dict[str, Any] = {}

    def sync_node(ctx: NodeContext) -> dict[str, Any]:
        ctx.context.set_sync("from_sync", ctx.params["greeting"])
        return {"output": f"{ctx.params['greeting']} {ctx.input}", "action": "next"}

    async def async_node(ctx: NodeContext) -> NodeResult:
        seen["from_sync"] = await ctx.context.get("from_sync")
        await ctx.context.set("from_async", True)
        return NodeResult(output=ctx.input.upper())

    registry = {"start": lambda ctx: {"output": "world"}, "sync_node": sync_node, "async_node": async_node}
    blueprint = bp(["start", {"id": "s", "uses": "sync_node", "params": {"greeting": "hello"}},
                    {"id": "a", "uses": "async_node"}],
                   [("start", "s"), {"source": "s", "target": "a", "action": "next"}])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed", result.errors
    assert result.context["_outputs.s"] == "hello world"
    assert result.context["_outputs.a"] == "HELLO WORLD"
    assert seen == {"from_sync": "hello"}
    assert result.context["from_sync"] == "hello" and result.context["from_async"] is True


async def test_none_result_stores_none_output_and_continues() -> None:
    seen: dict[str, Any] = {}

    async def nothing(ctx: NodeContext) -> None:
        return None

    def sync_nothing(ctx: NodeContext) -> None:
        return None

    registry = {"a": nothing, "b": sync_nothing, "c": collect_input(seen)}
    result = await run(FlowRuntime(registry=registry), bp("abc", [("a", "b"), ("b", "c")]))

    assert result.status == "completed"
    assert "_outputs.a" in result.context and result.context["_outputs.a"] is None
    assert result.context["_outputs.b"] is None
    assert seen == {"c": None}


@pytest.mark.parametrize(
    ("result_dict", "expected_output", "ran"),
    [
        ({"output": {"k": [1, 2]}}, {"k": [1, 2]}, "plain"),
        ({"output": 3, "action": "special"}, 3, "special"),
        ({"action": "special"}, None, "special"),
        ({}, None, "plain"),
    ],
)
async def test_dict_results(result_dict: dict[str, Any], expected_output: Any, ran: str) -> None:
    seen: dict[str, Any] = {}
    registry = {"a": lambda ctx: dict(result_dict), "plain": collect_input(seen), "special": collect_input(seen)}
    blueprint = bp(["a", "plain", "special"], [("a", "plain"), {"source": "a", "target": "special",
                                                                "action": "special"}])
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert result.context["_outputs.a"] == expected_output
    assert seen == {ran: expected_output}


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("just a string", "must return NodeResult, dict or None, not str"),
        (42, "not int"),
        ({"output": 1, "unexpected": 2}, "unexpected keys ['unexpected']"),
    ],
)
async def test_bad_return_type_fails_clearly(bad: Any, fragment: str) -> None:
    seen: dict[str, Any] = {}

    async def wrong(ctx: NodeContext) -> Any:
        return bad

    result = await run(FlowRuntime(registry={"wrong": wrong, "after": collect_input(seen)}),
                       bp(["wrong", "after"], [("wrong", "after")]))
    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "wrong"
    assert fragment in result.errors[0]["message"]
    assert seen == {}


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {"nested": {"bad": b"bytes"}}, math.nan, [float("inf")]],
    ids=["object", "set", "bytes", "nan", "inf"],
)
async def test_non_json_output_fails_clearly(value: Any) -> None:
    seen: dict[str, Any] = {}

    async def weird(ctx: NodeContext) -> NodeResult:
        return NodeResult(output=value)

    result = await run(FlowRuntime(registry={"weird": weird, "after": collect_input(seen)}),
                       bp(["weird", "after"], [("weird", "after")]))
    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "weird"
    assert "JSON" in result.errors[0]["message"]
    assert seen == {}


async def test_non_json_context_write_fails_clearly() -> None:
    async def writer(ctx: NodeContext) -> None:
        await ctx.context.set("when", object())

    result = await run(FlowRuntime(registry={"writer": writer}), bp(["writer"]))
    assert result.status == "failed"
    assert "'when'" in result.errors[0]["message"]
    assert "JSON" in result.errors[0]["message"]


async def test_dependencies_are_injected() -> None:
    class Db:
        def lookup(self, key: str) -> str:
            return f"value of {key}"

    db = Db()

    async def uses_db(ctx: NodeContext) -> NodeResult:
        assert ctx.dependencies["db"] is db
        return NodeResult(output=ctx.dependencies["db"].lookup("k"))

    result = await run(FlowRuntime(registry={"uses_db": uses_db}, dependencies={"db": db}), bp(["uses_db"]))
    assert result.status == "completed"
    assert result.context["_outputs.uses_db"] == "value of k"


async def test_node_context_identifies_the_node_and_run() -> None:
    seen: dict[str, Any] = {}

    async def who(ctx: NodeContext) -> None:
        seen.update(node_id=ctx.node_id, run_id=ctx.run_id, blueprint_id=ctx.blueprint_id, attempt=ctx.attempt,
                    cancelled=ctx.signal.cancelled)

    runtime = FlowRuntime(registry={"who": who})
    result = await asyncio.wait_for(runtime.run(bp([{"id": "me", "uses": "who"}], bp_id="bp-1"), run_id="run-1"),
                                    DEADLINE)
    assert result.status == "completed"
    assert seen == {"node_id": "me", "run_id": "run-1", "blueprint_id": "bp-1", "attempt": 1, "cancelled": False}


async def test_params_mutation_does_not_leak_between_runs() -> None:
    async def mutate(ctx: NodeContext) -> NodeResult:
        ctx.params["items"].append("x")
        return NodeResult(output=list(ctx.params["items"]))

    runtime = FlowRuntime(registry={"mutate": mutate})
    blueprint = bp([{"id": "m", "uses": "mutate", "params": {"items": []}}])
    first = await run(runtime, blueprint)
    second = await run(runtime, blueprint)
    assert first.context["_outputs.m"] == ["x"]
    assert second.context["_outputs.m"] == ["x"]


async def test_context_delete_and_read_your_writes() -> None:
    seen: dict[str, Any] = {}

    async def a(ctx: NodeContext) -> None:
        await ctx.context.set("tmp", 1)
        seen["has_tmp"] = await ctx.context.has("tmp")
        await ctx.context.delete("drop_me")
        seen["has_dropped"] = await ctx.context.has("drop_me")
        seen["keys"] = sorted(k for k in await ctx.context.to_dict() if not k.startswith("_"))

    result = await run(FlowRuntime(registry={"a": a}), bp(["a"]), {"drop_me": True, "keep": 1})
    assert result.status == "completed"
    assert seen == {"has_tmp": True, "has_dropped": False, "keys": ["keep", "tmp"]}
    assert "drop_me" not in result.context
    assert result.context["tmp"] == 1


# --- class nodes -----------------------------------------------------------------------------------


class Summarize(BaseNode):
    """prep gathers, exec works (retried), post decides the action."""

    calls: list[str] = []

    async def prep(self, ctx: NodeContext) -> Any:
        Summarize.calls.append("prep")
        self.prefix = self.params["prefix"]
        return {"text": ctx.input, "limit": self.params["limit"]}

    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        Summarize.calls.append("exec")
        if Summarize.calls.count("exec") < 2:
            raise RuntimeError("transient")
        return self.prefix + prep_result["text"][: prep_result["limit"]]

    async def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        Summarize.calls.append("post")
        await ctx.context.set("summary_len", len(exec_result))
        return NodeResult(output=exec_result, action="short" if len(exec_result) < 10 else "long")


async def test_class_node_prep_exec_post_with_params_and_retries() -> None:
    Summarize.calls = []
    seen: dict[str, Any] = {}
    registry = {"text": lambda ctx: {"output": "abcdefghijklmnop"}, "Summarize": Summarize,
                "short": collect_input(seen), "long": collect_input(seen)}
    blueprint = bp(
        ["text", {"id": "sum", "uses": "Summarize", "params": {"prefix": ">", "limit": 5},
                  "config": {"maxRetries": 2, "retryDelay": 1}}, "short", "long"],
        [("text", "sum"), {"source": "sum", "target": "short", "action": "short"},
         {"source": "sum", "target": "long", "action": "long"}],
    )
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed", result.errors
    assert Summarize.calls == ["prep", "exec", "exec", "post"]  # prep once, exec retried, post once
    assert result.context["_outputs.sum"] == ">abcde"
    assert result.context["summary_len"] == 6
    assert seen == {"short": ">abcde"}


class Guarded(BaseNode):
    """exec always fails; fallback answers from state prep put on the instance."""

    async def prep(self, ctx: NodeContext) -> Any:
        self.cache = f"cached {ctx.input}"
        return ctx.input

    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        raise ConnectionError("service down")

    async def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        return f"{self.cache} ({type(error).__name__})"


async def test_class_node_fallback_runs_on_the_same_instance() -> None:
    bus = CollectingEventBus()
    registry = {"src": lambda ctx: {"output": "v1"}, "Guarded": Guarded}
    blueprint = bp(["src", {"id": "g", "uses": "Guarded", "config": {"maxRetries": 2, "retryDelay": 1}}],
                   [("src", "g")])
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)

    assert result.status == "completed", result.errors
    assert result.context["_outputs.g"] == "cached v1 (ConnectionError)"
    assert len(bus.of_type("node:retry")) == 1
    assert len(bus.of_type("node:fallback")) == 1


class NoFallback(BaseNode):
    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        raise ConnectionError("service down")


async def test_class_node_without_fallback_fails() -> None:
    result = await run(FlowRuntime(registry={"NoFallback": NoFallback}), bp(["NoFallback"]))
    assert result.status == "failed"
    assert result.errors[0]["message"] == "ConnectionError: service down"


class Plain(BaseNode):
    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        return {"value": prep_result, "node": self.node_id}


async def test_class_node_default_prep_and_post() -> None:
    registry = {"src": lambda ctx: {"output": 7}, "Plain": Plain}
    result = await run(FlowRuntime(registry=registry), bp(["src", {"id": "p", "uses": "Plain"}], [("src", "p")]))
    assert result.status == "completed"
    # A plain dict from exec is the output (it does not look like a result).
    assert result.context["_outputs.p"] == {"value": 7, "node": "p"}


# --- inputs ----------------------------------------------------------------------------------------


async def test_inputs_as_string_and_mapping() -> None:
    seen: dict[str, Any] = {}
    registry = {"a": lambda ctx: {"output": "A out"}, "b": lambda ctx: {"output": "B out"},
                "probe": collect_input(seen)}
    blueprint = bp(
        ["a", "b",
         {"id": "by_node", "uses": "probe", "inputs": "a"},
         {"id": "by_key", "uses": "probe", "inputs": "topic"},
         {"id": "by_literal", "uses": "probe", "inputs": "_outputs.b"},
         {"id": "by_map", "uses": "probe", "inputs": {"first": "a", "second": "b", "t": "topic", "none": "missing"}}],
        [("a", "b"), ("b", "by_node"), ("b", "by_key"), ("b", "by_literal"), ("b", "by_map")],
    )
    result = await run(FlowRuntime(registry=registry), blueprint, {"topic": "T"})

    assert result.status == "completed"
    assert seen == {
        "by_node": "A out",
        "by_key": "T",
        "by_literal": "B out",
        "by_map": {"first": "A out", "second": "B out", "t": "T", "none": None},
    }


async def test_node_output_wins_over_context_key_of_the_same_name() -> None:
    seen: dict[str, Any] = {}
    registry = {"a": lambda ctx: {"output": "from node"}, "probe": collect_input(seen)}
    blueprint = bp(["a", {"id": "p", "uses": "probe", "inputs": "a"}], [("a", "p")])
    result = await run(FlowRuntime(registry=registry), blueprint, {"a": "from context"})
    assert result.status == "completed"
    assert seen == {"p": "from node"}


# --- context under concurrency ---------------------------------------------------------------------


async def test_parallel_branches_context_writes_are_all_kept() -> None:
    width = 20
    started: set[str] = set()
    all_started = asyncio.Event()

    async def branch(ctx: NodeContext) -> NodeResult:
        started.add(ctx.node_id)
        if len(started) == width:
            all_started.set()
        await asyncio.wait_for(all_started.wait(), DEADLINE)  # every branch read the same snapshot
        await ctx.context.set(f"key_{ctx.node_id}", ctx.node_id)
        return NodeResult(output=ctx.node_id)

    ids = [f"b{i}" for i in range(width)]
    blueprint = bp(["start", *({"id": i, "uses": "branch"} for i in ids), "join"],
                   [*(("start", i) for i in ids), *((i, "join") for i in ids)])
    seen: dict[str, Any] = {}
    registry = {"start": lambda ctx: None, "branch": branch, "join": collect_input(seen)}
    result = await run(FlowRuntime(registry=registry), blueprint)

    assert result.status == "completed"
    assert {k: v for k, v in result.context.items() if k.startswith("key_")} == {f"key_{i}": i for i in ids}
    assert seen["join"] == {i: i for i in ids}


# --- middleware ------------------------------------------------------------------------------------


class Recording(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def before_node(self, ctx: NodeContext) -> None:
        self.log.append(f"{self.name}.before {ctx.node_id}")

    async def after_node(self, ctx: NodeContext, result: NodeResult) -> None:
        self.log.append(f"{self.name}.after {ctx.node_id} -> {result.output}")

    async def around_node(self, ctx: NodeContext, call_next: Any) -> NodeResult:
        self.log.append(f"{self.name}.around-in {ctx.node_id}")
        result: NodeResult = await call_next()
        self.log.append(f"{self.name}.around-out {ctx.node_id}")
        return result


async def test_middleware_order() -> None:
    log: list[str] = []

    async def work(ctx: NodeContext) -> NodeResult:
        log.append(f"run {ctx.node_id}")
        return NodeResult(output="r")

    runtime = FlowRuntime(registry={"work": work},
                          middleware=[Recording("m1", log), Recording("m2", log)])
    result = await run(runtime, bp([{"id": "n", "uses": "work"}]))

    assert result.status == "completed"
    assert log == [
        "m1.around-in n", "m2.around-in n",
        "m1.before n", "m2.before n",
        "run n",
        "m1.after n -> r", "m2.after n -> r",
        "m2.around-out n", "m1.around-out n",
    ]


async def test_middleware_wraps_retries_once() -> None:
    log: list[str] = []
    attempts: list[int] = []

    async def flaky(ctx: NodeContext) -> NodeResult:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first")
        return NodeResult(output="ok")

    runtime = FlowRuntime(registry={"flaky": flaky}, middleware=[Recording("m", log)])
    blueprint = bp([{"id": "n", "uses": "flaky", "config": {"maxRetries": 2, "retryDelay": 1}}])
    result = await run(runtime, blueprint)

    assert result.status == "completed"
    assert attempts == [1, 2]
    assert log == ["m.around-in n", "m.before n", "m.after n -> ok", "m.around-out n"]


async def test_around_middleware_can_replace_the_result() -> None:
    class Override(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: Any) -> NodeResult:
            result: NodeResult = await call_next()
            return NodeResult(output=f"wrapped({result.output})", action=result.action)

    runtime = FlowRuntime(registry={"a": lambda ctx: {"output": "x"}}, middleware=[Override()])
    result = await run(runtime, bp(["a"]))
    assert result.context["_outputs.a"] == "wrapped(x)"


async def test_failing_middleware_fails_the_node_not_the_runtime() -> None:
    class Broken(Middleware):
        async def before_node(self, ctx: NodeContext) -> None:
            raise PermissionError("not allowed")

    ran: list[str] = []

    async def a(ctx: NodeContext) -> None:
        ran.append("a")

    result = await run(FlowRuntime(registry={"a": a}, middleware=[Broken()]), bp(["a"]))
    assert result.status == "failed"
    assert "not allowed" in result.errors[0]["message"]
    assert ran == []


# --- events ----------------------------------------------------------------------------------------


async def test_events_of_a_run() -> None:
    bus = CollectingEventBus()
    calls: dict[str, int] = {}

    async def flaky(ctx: NodeContext) -> NodeResult:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] == 1:
            raise RuntimeError("once")
        return NodeResult(output={"score": 0.9})

    async def always_fails(ctx: NodeContext) -> None:
        raise RuntimeError("always")

    registry = {"flaky": flaky, "always_fails": always_fails, "rescue": lambda ctx: {"output": "rescued"},
                "hi": lambda ctx: None, "lo": lambda ctx: None, "end": lambda ctx: None}
    blueprint = bp(
        [{"id": "f", "uses": "flaky", "config": {"maxRetries": 2, "retryDelay": 1}},
         {"id": "g", "uses": "always_fails", "config": {"fallback": "rescue"}},
         "hi", "lo", {"id": "end", "uses": "end", "config": {"joinStrategy": "any"}}],
        [("f", "g"),
         {"source": "g", "target": "hi", "condition": "context._outputs.f.score > 0.5"},
         {"source": "g", "target": "lo", "condition": "context._outputs.f.score <= 0.5"},
         ("hi", "end"), ("lo", "end")],
    )
    result = await run(FlowRuntime(registry=registry, event_bus=bus), blueprint)
    assert result.status == "completed", result.errors

    mine = [e for e in bus.events if e["payload"].get("runId") == result.run_id]
    types = [e["type"] for e in mine]
    assert types[0] == "workflow:start"
    assert types[-1] == "workflow:finish"
    assert mine[-1]["payload"]["status"] == "completed"
    node_events = [(e["type"], e["payload"]["nodeId"]) for e in mine
                   if e["type"].startswith("node:")]
    assert node_events == [
        ("node:start", "f"), ("node:retry", "f"), ("node:finish", "f"),
        ("node:start", "g"), ("node:fallback", "g"), ("node:finish", "g"),
        ("node:skipped", "lo"),  # decided while routing g, before hi starts
        ("node:start", "hi"), ("node:finish", "hi"),
        ("node:start", "end"), ("node:finish", "end"),
    ]
    fallback_finish = [e["payload"] for e in mine if e["type"] == "node:finish" and e["payload"]["nodeId"] == "g"]
    assert fallback_finish[0]["fallback"] is True
    evaluations = [(e["payload"]["target"], e["payload"]["result"]) for e in mine if e["type"] == "edge:evaluate"]
    assert evaluations == [("hi", True), ("lo", False)]
    changes = [e["payload"]["key"] for e in mine if e["type"] == "context:change"]
    assert changes == []  # no node wrote to the context
    assert {e["payload"]["blueprintId"] for e in mine if e["type"] == "node:start"} == {"t"}


async def test_error_event_on_failure() -> None:
    bus = CollectingEventBus()

    async def broken(ctx: NodeContext) -> None:
        raise KeyError("missing")

    result = await run(FlowRuntime(registry={"broken": broken}, event_bus=bus), bp(["broken"]))
    assert result.status == "failed"
    errors = [e["payload"] for e in bus.of_type("node:error")]
    assert len(errors) == 1
    assert errors[0]["nodeId"] == "broken" and errors[0]["attempt"] == 1 and "missing" in errors[0]["message"]
    finish = bus.of_type("workflow:finish")
    assert [e["payload"]["status"] for e in finish] == ["failed"]
    assert bus.of_type("node:finish") == []


async def test_context_change_events_name_the_writer() -> None:
    bus = CollectingEventBus()

    async def writer(ctx: NodeContext) -> None:
        await ctx.context.set("answer", 42)

    result = await run(FlowRuntime(registry={"writer": writer}, event_bus=bus), bp(["writer"]))
    changes = [e["payload"] for e in bus.of_type("context:change")]
    assert changes == [{"runId": result.run_id, "sourceNode": "writer", "key": "answer", "value": 42}]


# --- dynamic nodes ---------------------------------------------------------------------------------


async def test_dynamic_nodes_run_before_the_nodes_successors() -> None:
    order: list[str] = []

    async def plan(ctx: NodeContext) -> NodeResult:
        order.append(ctx.node_id)
        return NodeResult(output="planned", dynamic_nodes=[
            {"id": f"step_{i}", "uses": "step", "params": {"n": i}} for i in range(3)])

    async def step(ctx: NodeContext) -> NodeResult:
        order.append(ctx.node_id)
        return NodeResult(output=ctx.params["n"] * 10)

    async def after(ctx: NodeContext) -> NodeResult:
        order.append(ctx.node_id)
        return NodeResult(output=[await ctx.context.get(f"_outputs.step_{i}") for i in range(3)])

    result = await run(FlowRuntime(registry={"plan": plan, "step": step, "after": after}),
                       bp(["plan", "after"], [("plan", "after")]))

    assert result.status == "completed", result.errors
    assert order[0] == "plan" and order[-1] == "after"
    assert sorted(order[1:-1]) == ["step_0", "step_1", "step_2"]
    assert result.context["_outputs.after"] == [0, 10, 20]
    assert result.context["_outputs.plan"] == "planned"


async def test_dynamic_nodes_of_a_terminal_node_complete_the_run() -> None:
    async def plan(ctx: NodeContext) -> NodeResult:
        return NodeResult(dynamic_nodes=[{"id": "extra", "uses": "extra"}])

    result = await run(FlowRuntime(registry={"plan": plan, "extra": lambda ctx: {"output": "x"}}), bp(["plan"]))
    assert result.status == "completed", result.errors
    assert result.context["_outputs.extra"] == "x"


@pytest.mark.parametrize(
    ("dynamic", "fragment"),
    [
        ([{"id": "plan", "uses": "x"}], "already a node of the run"),
        ([{"id": "d", "uses": "x"}, {"id": "d", "uses": "x"}], "already a node of the run"),
        ([{"uses": "x"}], "without id and uses"),
        ([{"id": "d", "uses": "x", "config": {"maxRetries": 0}}], "invalid dynamic node 0"),
    ],
    ids=["static-id", "duplicate", "no-id", "bad-config"],
)
async def test_invalid_dynamic_nodes_fail_the_node(dynamic: list[dict[str, Any]], fragment: str) -> None:
    async def plan(ctx: NodeContext) -> NodeResult:
        return NodeResult(dynamic_nodes=dynamic)

    result = await run(FlowRuntime(registry={"plan": plan, "x": lambda ctx: None}), bp(["plan"]))
    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "plan"
    assert fragment in result.errors[0]["message"]
