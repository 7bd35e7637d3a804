"""The completion rule and stopped runs, distributed (SPEC case 23; issue 16's engine half).

Two polling workers on the real emulators. Node code appends to one timeline, and so does every write
of a final status, so the tests can assert that nothing of a run started after its final status and
that the status carries every branch's output (order and counts, never durations).
"""

from __future__ import annotations

import asyncio
from typing import Any

from harness import Distributed, blueprint
from helpers import wait_until

from flowcraft_core.azure.services import AzureServices
from flowcraft_core.nodes import NodeContext, NodeResult

RUN_TIMEOUT = 30.0


class Timeline:
    """What node code did and when final statuses were written, per run, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def count(self, run_id: str, node_id: str) -> int:
        return self.events.count((run_id, "start", node_id))

    def after_final(self, run_id: str) -> list[tuple[str, str, str]]:
        mine = [e for e in self.events if e[0] == run_id]
        finals = [i for i, e in enumerate(mine) if e[1] == "final"]
        assert len(finals) == 1, mine
        return mine[finals[0] + 1:]

    def watch(self, services: AzureServices) -> AzureServices:
        store = services.adapter.status_store
        original = store.finalize

        async def finalize(run_id: str, status: Any, **kwargs: Any) -> bool:
            wrote = await original(run_id, status, **kwargs)
            if wrote:
                self.events.append((run_id, "final", str(status)))
            return wrote

        store.finalize = finalize  # type: ignore[method-assign]
        return services


def registry(tl: Timeline) -> dict[str, Any]:
    def make(pause: float = 0.0, fail: bool = False) -> Any:
        async def impl(ctx: NodeContext) -> NodeResult:
            tl.events.append((ctx.run_id, "start", ctx.node_id))
            if pause:
                await asyncio.sleep(pause)
            tl.events.append((ctx.run_id, "end", ctx.node_id))
            if fail:
                raise RuntimeError(f"{ctx.node_id} always fails")
            return NodeResult(output=f"{ctx.node_id} done")

        return impl

    def counting(counter: str, reset: str | None = None) -> Any:
        async def impl(ctx: NodeContext) -> NodeResult:
            tl.events.append((ctx.run_id, "start", ctx.node_id))
            count = (await ctx.context.get(counter) or 0) + 1
            await ctx.context.set(counter, count)
            if reset:
                await ctx.context.set(reset, 0)
            tl.events.append((ctx.run_id, "end", ctx.node_id))
            return NodeResult(output=count)

        return impl

    async def fails_after_the_run(ctx: NodeContext) -> NodeResult:
        tl.events.append((ctx.run_id, "start", ctx.node_id))
        engine = ctx.dependencies["runtime"]

        async def run_failed() -> bool:
            status = await engine.status_store.get(ctx.run_id)
            return status is not None and status["status"] == "failed"

        await wait_until(run_failed, timeout=20, message="run failed")  # its sibling failed the run
        raise RuntimeError("fails after its run already failed")

    async def rescue(ctx: NodeContext) -> NodeResult:
        tl.events.append((ctx.run_id, "start", "rescue"))
        return NodeResult(output="rescued")

    return {"quick": make(), "slow": make(pause=1.5), "boom": make(fail=True), "slow-boom": make(1.5, fail=True),
            "outer-body": counting("outer_n", reset="inner_n"), "inner-body": counting("inner_n"),
            "fails-after-the-run": fails_after_the_run, "rescue": rescue}


ANY_JOIN_SLOW = blueprint({
    "id": "any-slow",
    "nodes": [{"id": "s", "uses": "quick"}, {"id": "fast", "uses": "quick"}, {"id": "slow", "uses": "slow"},
              {"id": "j", "uses": "quick", "config": {"joinStrategy": "any"}}],
    "edges": [{"source": "s", "target": "fast"}, {"source": "s", "target": "slow"},
              {"source": "fast", "target": "j"}, {"source": "slow", "target": "j"}],
})



def nested(bp_id: str, after_uses: str) -> Any:
    """An outer loop (3 rounds) around an inner loop (2 rounds each), then one more node."""
    return blueprint({
        "id": bp_id,
        "nodes": [{"id": "begin", "uses": "quick"}, {"id": "outer_body", "uses": "outer-body"},
                  {"id": "inner_body", "uses": "inner-body"},
                  {"id": "inner", "uses": "loop-controller", "params": {"condition": "inner_n < 2"}},
                  {"id": "outer", "uses": "loop-controller", "params": {"condition": "outer_n < 3"}},
                  {"id": "after", "uses": after_uses}],
        "edges": [{"source": "begin", "target": "outer_body"}, {"source": "outer_body", "target": "inner_body"},
                  {"source": "inner_body", "target": "inner"},
                  {"source": "inner", "target": "inner_body", "action": "continue"},
                  {"source": "inner", "target": "outer", "action": "break"},
                  {"source": "outer", "target": "outer_body", "action": "continue"},
                  {"source": "outer", "target": "after", "action": "break"}],
    })


FALLBACK_AFTER_FAIL = blueprint({
    "id": "fallback-after-fail",
    "nodes": [{"id": "s", "uses": "quick"}, {"id": "boom", "uses": "boom"},
              {"id": "later", "uses": "fails-after-the-run", "config": {"fallback": "rescue"}}],
    "edges": [{"source": "s", "target": "boom"}, {"source": "s", "target": "later"}],
})

ANY_JOIN_SLOW_FAILING = blueprint({
    "id": "any-slow-failing",
    "nodes": [{"id": "s", "uses": "quick"}, {"id": "fast", "uses": "quick"}, {"id": "slow", "uses": "slow-boom"},
              {"id": "j", "uses": "quick", "config": {"joinStrategy": "any"}}, {"id": "after", "uses": "quick"}],
    "edges": [{"source": "s", "target": "fast"}, {"source": "s", "target": "slow"},
              {"source": "fast", "target": "j"}, {"source": "slow", "target": "j"}, {"source": "j", "target": "after"}],
})

BLUEPRINTS = {bp.id: bp for bp in (ANY_JOIN_SLOW, ANY_JOIN_SLOW_FAILING, nested("nested", "quick"),
                                   nested("nested-fail", "boom"), FALLBACK_AFTER_FAIL)}


async def two_workers(distributed: Distributed, tl: Timeline) -> tuple[AzureServices, AzureServices]:
    first = tl.watch(await distributed.build(registry(tl), BLUEPRINTS))
    second = tl.watch(await distributed.build(registry(tl), BLUEPRINTS))
    return first, second


async def test_any_join_with_a_slow_sibling_completes_after_it_with_its_output(distributed: Distributed) -> None:
    tl = Timeline()
    first, _ = await two_workers(distributed, tl)

    run_id = await first.adapter.start_run("any-slow", {})
    status = await first.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)

    assert status["status"] == "completed", status
    assert status["result"]["context"]["_outputs.slow"] == "slow done"
    assert [tl.count(run_id, n) for n in ("s", "fast", "slow", "j")] == [1, 1, 1, 1]
    assert tl.after_final(run_id) == []
    # The output is there for good, not only in the status: the stored context has it too.
    assert (await first.adapter.engine.run_context(run_id))["_outputs.slow"] == "slow done"
    await wait_until(lambda: not first.adapter._in_flight, timeout=5, message="worker idle")


async def test_any_join_with_a_slow_sibling_that_fails_fails_the_run(distributed: Distributed) -> None:
    # F11 of the differential findings: it reported "completed", and the failing node ran after that.
    tl = Timeline()
    first, _ = await two_workers(distributed, tl)

    run_id = await first.adapter.start_run("any-slow-failing", {})
    status = await first.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)

    assert status["status"] == "failed", status
    assert "'slow'" in status["reason"]
    assert [tl.count(run_id, n) for n in ("s", "fast", "slow", "j")] == [1, 1, 1, 1]
    assert tl.after_final(run_id) == []


async def test_nested_loops_run_their_bodies_3_and_6_times(distributed: Distributed) -> None:
    tl = Timeline()
    first, _ = await two_workers(distributed, tl)

    run_id = await first.adapter.start_run("nested", {})
    status = await first.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)

    assert status["status"] == "completed", status
    assert [tl.count(run_id, n) for n in ("outer_body", "inner_body", "after")] == [3, 6, 1]
    context = status["result"]["context"]
    assert context["outer_n"] == 3 and context["inner_n"] == 2
    assert tl.after_final(run_id) == []


async def test_a_nested_loop_followed_by_a_failing_node_fails(distributed: Distributed) -> None:
    tl = Timeline()
    first, _ = await two_workers(distributed, tl)

    run_id = await first.adapter.start_run("nested-fail", {})
    status = await first.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)

    assert status["status"] == "failed", status
    assert "after" in status["reason"]
    assert [tl.count(run_id, n) for n in ("outer_body", "inner_body", "after")] == [3, 6, 1]
    assert tl.after_final(run_id) == []


async def test_a_failed_run_starts_no_fallback_of_a_sibling(distributed: Distributed) -> None:
    tl = Timeline()
    first, second = await two_workers(distributed, tl)

    run_id = await first.adapter.start_run("fallback-after-fail", {})
    status = await first.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.05)
    assert status["status"] == "failed", status
    assert "boom" in status["reason"]
    await wait_until(lambda: (run_id, "start", "later") in tl.events, timeout=10, message="sibling started")
    await wait_until(lambda: not first.adapter._in_flight and not second.adapter._in_flight, timeout=25,
                     message="workers idle")

    assert tl.count(run_id, "rescue") == 0  # the sibling failed after its run had: no fallback started
    assert "_outputs.later" not in await first.adapter.engine.run_context(run_id)
