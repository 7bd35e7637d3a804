"""The completion rule and stopped runs, in process (issue 16's engine half; SPEC case 23).

A run completes only when no branch can still execute; once it has a final status nothing of it runs
any more. Each test keeps a timeline of what node code did and when the final status was written, and
asserts on it (order, never wall-clock durations).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flowcraft_core import FlowRuntime, NodeContext, NodeResult, WorkflowResult
from flowcraft_core.errors import InvalidJobError
from flowcraft_core.protocols import Job
from tests.helpers import bp, wait_until

DEADLINE = 10.0


class Timeline:
    """Node starts and ends, and final-status writes, in the order they happened."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def count(self, node_id: str) -> int:
        return self.events.count(("start", node_id))

    def after_final(self) -> list[tuple[str, str]]:
        finals = [i for i, (kind, _) in enumerate(self.events) if kind == "final"]
        assert len(finals) == 1, self.events
        return self.events[finals[0] + 1:]

    def watch(self, runtime: FlowRuntime) -> FlowRuntime:
        store = runtime.engine.status_store
        original = store.finalize

        async def finalize(run_id: str, status: Any, **kwargs: Any) -> bool:
            wrote = await original(run_id, status, **kwargs)
            if wrote:
                self.events.append(("final", str(status)))
            return wrote

        store.finalize = finalize  # type: ignore[method-assign]
        return runtime


def node(timeline: Timeline, *, pause: float = 0.0, action: str | None = None, fail: bool = False) -> Any:
    async def impl(ctx: NodeContext) -> NodeResult:
        timeline.events.append(("start", ctx.node_id))
        if pause:
            await asyncio.sleep(pause)  # a slow sibling: real work that takes a while
        timeline.events.append(("end", ctx.node_id))
        if fail:
            raise RuntimeError(f"{ctx.node_id} always fails")
        return NodeResult(output=f"{ctx.node_id} done", action=action)

    return impl


async def run(runtime: FlowRuntime, blueprint: dict[str, Any]) -> WorkflowResult:
    return await asyncio.wait_for(runtime.run(blueprint, {}), DEADLINE)


def any_join_blueprint(slow: dict[str, Any]) -> dict[str, Any]:
    return bp(["s", "fast", slow, {"id": "j", "uses": "j", "config": {"joinStrategy": "any"}}],
              [("s", "fast"), ("s", "slow"), ("fast", "j"), ("slow", "j")])


async def test_any_join_with_a_slow_sibling_completes_after_the_sibling_with_its_output() -> None:
    tl = Timeline()
    registry = {"s": node(tl), "fast": node(tl), "slow": node(tl, pause=0.3), "j": node(tl)}
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, any_join_blueprint({"id": "slow", "uses": "slow"}))

    assert result.status == "completed", result.errors
    assert result.context["_outputs.slow"] == "slow done"
    assert [tl.count(n) for n in ("s", "fast", "slow", "j")] == [1, 1, 1, 1]
    assert tl.after_final() == []  # the final status came after the slow sibling ended
    # ... and the user-visible status carries the sibling's output.
    status = await runtime.engine.status_store.get(result.run_id)
    assert status is not None and status["result"]["context"]["_outputs.slow"] == "slow done"


async def test_any_join_with_a_sleeping_sibling_waits_for_its_wake_up() -> None:
    tl = Timeline()
    registry = {"s": node(tl), "fast": node(tl), "after_sleep": node(tl), "j": node(tl)}
    blueprint = bp(["s", "fast", {"id": "nap", "uses": "sleep", "params": {"duration": 200}}, "after_sleep",
                    {"id": "j", "uses": "j", "config": {"joinStrategy": "any"}}],
                   [("s", "fast"), ("s", "nap"), ("nap", "after_sleep"), ("fast", "j"), ("after_sleep", "j")])
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, blueprint)

    assert result.status == "completed", result.errors
    # Finalizing no longer cancels the sibling's pending wake-up: it woke and its successor ran.
    assert tl.count("after_sleep") == 1 and tl.count("j") == 1
    assert "_outputs.after_sleep" in result.context
    assert tl.after_final() == []


async def test_a_late_job_of_a_completed_run_is_dropped_not_executed() -> None:
    tl = Timeline()
    registry = {"r": node(tl, action="left"), "left": node(tl), "right": node(tl)}
    blueprint = bp(["r", "left", "right"], [{"source": "r", "target": "left", "action": "left"},
                                            {"source": "r", "target": "right", "action": "right"}])
    runtime = tl.watch(FlowRuntime(registry=registry))
    result = await run(runtime, blueprint)
    assert result.status == "completed", result.errors

    for node_id in ("r", "left", "right"):
        outcome = await runtime.engine.handle_job(Job(result.run_id, "t", node_id))
        assert outcome.status == "dropped" and not outcome.executed, outcome
    assert [tl.count(n) for n in ("r", "left", "right")] == [1, 1, 0]
    assert tl.after_final() == []


async def test_a_failed_run_starts_no_fallback_and_commits_nothing_of_a_sibling() -> None:
    tl = Timeline()
    started = asyncio.Event()

    async def fails_later(ctx: NodeContext) -> NodeResult:
        tl.events.append(("start", ctx.node_id))
        started.set()
        await ctx.signal.wait()  # still running when its sibling fails the run; then fails itself
        raise RuntimeError("fails after the run already failed")

    async def boom(ctx: NodeContext) -> NodeResult:
        await started.wait()
        tl.events.append(("start", ctx.node_id))
        raise RuntimeError("boom")

    async def rescue(ctx: NodeContext) -> NodeResult:
        tl.events.append(("start", "rescue"))
        return NodeResult(output="rescued")

    registry = {"s": node(tl), "boom": boom, "later": fails_later, "rescue": rescue}
    blueprint = bp(["s", "boom", {"id": "later", "uses": "later", "config": {"fallback": "rescue"}}],
                   [("s", "boom"), ("s", "later")])
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, blueprint)

    assert result.status == "failed"
    assert result.errors[0]["nodeId"] == "boom"
    assert tl.count("rescue") == 0  # the fallback never started: its run had already failed
    assert "_outputs.later" not in result.context
    assert tl.after_final() == []


def nested_loops(after: str = "done") -> dict[str, Any]:
    """An outer loop (3 rounds) around an inner loop (2 rounds per outer round), then ``after``."""
    return bp(
        ["begin", "outer_body", "inner_body",
         {"id": "inner", "uses": "loop-controller", "params": {"condition": "_outputs.inner_body < 2"}},
         {"id": "outer", "uses": "loop-controller", "params": {"condition": "_outputs.outer_body < 3"}},
         after],
        [("begin", "outer_body"), ("outer_body", "inner_body"), ("inner_body", "inner"),
         {"source": "inner", "target": "inner_body", "action": "continue"},
         {"source": "inner", "target": "outer", "action": "break"},
         {"source": "outer", "target": "outer_body", "action": "continue"},
         {"source": "outer", "target": after, "action": "break"}],
    )


def counting(tl: Timeline, counter: str, *, reset: str | None = None) -> Any:
    """A loop body counting its rounds in the context (``reset`` restarts an inner loop's count)."""
    async def impl(ctx: NodeContext) -> NodeResult:
        tl.events.append(("start", ctx.node_id))
        count = (await ctx.context.get(counter) or 0) + 1
        await ctx.context.set(counter, count)
        if reset:
            await ctx.context.set(reset, 0)
        tl.events.append(("end", ctx.node_id))
        return NodeResult(output=count if reset else (await ctx.context.get(counter)))

    return impl


async def test_nested_loops_run_their_bodies_3_and_6_times_and_end_after_both() -> None:
    tl = Timeline()
    registry = {"begin": node(tl), "outer_body": counting(tl, "outer_n", reset="inner_n"),
                "inner_body": counting(tl, "inner_n"), "done": node(tl)}
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, nested_loops())

    assert result.status == "completed", result.errors
    assert [tl.count(n) for n in ("outer_body", "inner_body", "done")] == [3, 6, 1]
    assert result.context["outer_n"] == 3 and result.context["inner_n"] == 2
    assert tl.after_final() == []


async def test_a_nested_loop_followed_by_a_failing_node_fails() -> None:
    tl = Timeline()
    registry = {"begin": node(tl), "outer_body": counting(tl, "outer_n", reset="inner_n"),
                "inner_body": counting(tl, "inner_n"), "broken": node(tl, fail=True)}
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, nested_loops(after="broken"))

    assert result.status == "failed", result
    assert result.errors[0]["nodeId"] == "broken"
    assert [tl.count(n) for n in ("outer_body", "inner_body", "broken")] == [3, 6, 1]
    assert tl.after_final() == []


async def test_a_loop_whose_controller_is_skipped_ends_and_a_join_after_it_runs() -> None:
    # F6 of the differential findings, with an all-join after the loop: the router inside the loop
    # takes no edge, so the controller is skipped; that ends the loop, so its exit is a dead path and
    # the join below (also fed from outside the loop) runs instead of waiting for ever.
    tl = Timeline()
    registry = {"s": node(tl), "body": node(tl), "r": node(tl, action="nomatch"), "x": node(tl),
                "after": node(tl)}
    blueprint = bp(
        ["s", "body", "r", "x", {"id": "ctl", "uses": "loop-controller", "params": {"condition": "true"}},
         "after"],
        [("s", "body"), ("body", "r"), {"source": "r", "target": "x", "action": "go"}, ("x", "ctl"),
         {"source": "ctl", "target": "body", "action": "continue"},
         {"source": "ctl", "target": "after", "action": "break"}, ("s", "after")],
    )
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, blueprint)

    assert result.status == "completed", result
    assert [tl.count(n) for n in ("s", "body", "r", "x", "after")] == [1, 1, 1, 0, 1]
    assert tl.after_final() == []


async def test_a_forged_job_for_a_scheduled_but_unreleased_join_is_refused() -> None:
    # Issue 14 point 6: 3 of 8 branches committed (so a stored record routes to the join: it is
    # scheduled), 5 still run. A well-formed job for the join must not run it on 3 of 8 inputs.
    tl = Timeline()
    release = asyncio.Event()
    done = 0
    seen: list[Any] = []

    async def branch(ctx: NodeContext) -> NodeResult:
        nonlocal done
        tl.events.append(("start", ctx.node_id))
        if int(ctx.node_id[1:]) >= 3:
            await release.wait()
        done += 1
        return NodeResult(output=ctx.node_id)

    async def join(ctx: NodeContext) -> NodeResult:
        tl.events.append(("start", ctx.node_id))
        seen.append(ctx.input)
        return NodeResult(output=sorted(ctx.input))

    branches = [f"b{i}" for i in range(8)]
    blueprint = bp(["s", *({"id": b, "uses": "branch"} for b in branches), "join"],
                   [*(("s", b) for b in branches), *((b, "join") for b in branches)])
    runtime = tl.watch(FlowRuntime(registry={"s": node(tl), "branch": branch, "join": join}))
    task = asyncio.create_task(runtime.run(blueprint, {}, run_id="forged-join"))
    try:
        async def three_committed() -> bool:
            state = await runtime.engine.run_store.load("forged-join")
            return state is not None and sum(1 for b in branches if state.record(b)) == 3

        await wait_until(three_committed, timeout=DEADLINE, interval=0.01, message="3 branches committed")
        with pytest.raises(InvalidJobError, match="join 'join' is not released"):
            await runtime.engine.handle_job(Job("forged-join", "t", "join"))
        assert tl.count("join") == 0
        release.set()
        result = await asyncio.wait_for(task, DEADLINE)
    finally:
        if not task.done():
            task.cancel()

    assert result.status == "completed", result.errors
    assert tl.count("join") == 1
    assert seen == [{b: b for b in branches}]  # it ran once, on all eight


async def test_any_join_with_a_sleeping_sibling_that_fails_for_good_fails_the_run() -> None:
    # F11 of the differential findings: the sibling's branch can still run (and fail) after the any-join
    # fired, so the run cannot complete before it; it fails on the sibling.
    tl = Timeline()
    registry = {"s": node(tl), "fast": node(tl), "bad": node(tl, fail=True), "j": node(tl), "after": node(tl)}
    blueprint = bp(["s", "fast", {"id": "nap", "uses": "sleep", "params": {"duration": 200}}, "bad",
                    {"id": "j", "uses": "j", "config": {"joinStrategy": "any"}}, "after"],
                   [("s", "fast"), ("s", "nap"), ("nap", "bad"), ("fast", "j"), ("bad", "j"), ("j", "after")])
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, blueprint)

    assert result.status == "failed", result
    assert result.errors[0]["nodeId"] == "bad"
    assert tl.count("j") == 1 and tl.count("bad") == 1
    assert tl.after_final() == []


async def test_nested_loops_with_a_sleep_in_the_outer_body_lose_nothing() -> None:
    # F7 of the differential findings: a sleep after the inner loop's exit, then the outer controller.
    tl = Timeline()
    blueprint = nested_loops()
    blueprint["nodes"].append({"id": "nap", "uses": "sleep", "params": {"duration": 10}})
    blueprint["edges"] = [e for e in blueprint["edges"] if not (e["source"] == "inner" and e["target"] == "outer")]
    blueprint["edges"] += [{"source": "inner", "target": "nap", "action": "break"},
                           {"source": "nap", "target": "outer"}]
    registry = {"begin": node(tl), "outer_body": counting(tl, "outer_n", reset="inner_n"),
                "inner_body": counting(tl, "inner_n"), "done": node(tl)}
    runtime = tl.watch(FlowRuntime(registry=registry))

    result = await run(runtime, blueprint)

    assert result.status == "completed", result.errors
    assert [tl.count(n) for n in ("outer_body", "inner_body", "done")] == [3, 6, 1]
    assert {"_outputs.nap", "_outputs.outer", "_outputs.done"} <= set(result.context)
    assert tl.after_final() == []
