"""Distributed semantics on the real emulators: SPEC acceptance cases 17, 18 and 20, plus sleep, wait/resume,
cancel and failure handling through the Azure adapter's polling worker.

Every test node counts its own executions in a ``Recorder``; the tests wait on conditions with
deadlines (never blind sleeps) and then assert on the status item, the stored context and the counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import Counter
from typing import Any

from harness import Distributed, blueprint
from helpers import wait_until

from flowcraft_core import CollectingEventBus
from flowcraft_core.azure.services import AzureServices
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult
from flowcraft_core.protocols import Job

RUN_TIMEOUT = 30.0


class Recorder:
    """What the test nodes did, per (run id, node id)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.started: dict[tuple[str, str], float] = {}
        self.seen: dict[tuple[str, str], Any] = {}

    def hit(self, ctx: NodeContext) -> None:
        key = (ctx.run_id, ctx.node_id)
        self.calls[key] += 1
        self.started.setdefault(key, time.monotonic())

    def count(self, run_id: str, node_id: str) -> int:
        return self.calls[(run_id, node_id)]


def make_registry(rec: Recorder) -> dict[str, Any]:
    """Test nodes; each records its execution."""

    async def step(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        return NodeResult(output={"node": ctx.node_id, "input": ctx.input})

    async def set_own_key(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        i = int(ctx.params["i"])
        await ctx.context.set(f"branch_{i:02d}", {"i": i, "by": ctx.node_id})
        return NodeResult(output=i)

    async def collect(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        everything = await ctx.context.to_dict()
        keys = sorted(k for k in everything if k.startswith("branch_"))
        rec.seen[(ctx.run_id, ctx.node_id)] = keys
        return NodeResult(output={"keys": len(keys)})

    async def route_left(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        return NodeResult(output="went left", action="left")

    async def boom(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        raise ValueError("kaboom: the test node always fails")

    async def slow_ok(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        await asyncio.sleep(0.3)
        return NodeResult(output="slow but fine")

    async def until_cancelled(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        await asyncio.wait_for(ctx.signal.wait(), 20)
        return NodeResult(output=f"stopped: {ctx.signal.reason}")

    async def big(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        return NodeResult(output=payload(ctx.node_id, int(ctx.params["size"])))

    async def check_big(ctx: NodeContext) -> NodeResult:
        rec.hit(ctx)
        everything = await ctx.context.to_dict()
        sizes = {k: len(v) for k, v in everything.items() if k.startswith("_outputs.big")}
        rec.seen[(ctx.run_id, ctx.node_id)] = sizes
        return NodeResult(output={"total": sum(sizes.values())})

    return {"step": step, "set-own-key": set_own_key, "collect": collect, "route-left": route_left,
            "boom": boom, "slow-ok": slow_ok, "until-cancelled": until_cancelled, "big": big,
            "check-big": check_big}


def payload(node_id: str, size: int) -> str:
    """A deterministic string of exactly `size` characters that differs per node (corruption shows)."""
    unit = hashlib.sha256(node_id.encode()).hexdigest()
    return (unit * (size // len(unit) + 1))[:size]


def linear(bp_id: str, ids: list[str], uses: str = "step") -> WorkflowBlueprint:
    return blueprint({"id": bp_id, "nodes": [{"id": n, "uses": uses} for n in ids],
                      "edges": [{"source": a, "target": b} for a, b in itertools.pairwise(ids)]})


FAN = 32

FAN_OUT = blueprint({
    "id": "fan32",
    "nodes": [{"id": "fan", "uses": "step"},
              *[{"id": f"b{i:02d}", "uses": "set-own-key", "params": {"i": i}} for i in range(FAN)],
              {"id": "join", "uses": "collect", "config": {"joinStrategy": "all"}}],
    "edges": [*[{"source": "fan", "target": f"b{i:02d}"} for i in range(FAN)],
              *[{"source": f"b{i:02d}", "target": "join"} for i in range(FAN)]],
})

# Fan-out into an all-join that routes, and an any-join where the router's branches meet again.
JOINS = blueprint({
    "id": "joins",
    "nodes": [{"id": "start", "uses": "step"},
              *[{"id": f"p{i}", "uses": "set-own-key", "params": {"i": i}} for i in range(3)],
              {"id": "all_join", "uses": "route-left"},
              {"id": "left", "uses": "collect"},
              {"id": "right", "uses": "step"},
              {"id": "any_join", "uses": "step", "config": {"joinStrategy": "any"}}],
    "edges": [*[{"source": "start", "target": f"p{i}"} for i in range(3)],
              *[{"source": f"p{i}", "target": "all_join"} for i in range(3)],
              {"source": "all_join", "target": "left", "action": "left"},
              {"source": "all_join", "target": "right", "action": "right"},
              {"source": "left", "target": "any_join"},
              {"source": "right", "target": "any_join"}],
})
JOIN_NODES = ("all_join", "any_join")

BIG_SIZES = {"big_a": 3_000_000, "big_b": 1_400_000, "big_c": 1_400_000, "big_d": 1_400_000,
             "big_e": 1_400_000, "big_f": 1_400_000}  # 10 MB in all; big_a alone is > 2 MB

BIG = blueprint({
    "id": "big",
    "nodes": [{"id": "start", "uses": "step"},
              *[{"id": n, "uses": "big", "params": {"size": s}} for n, s in BIG_SIZES.items()],
              {"id": "check", "uses": "check-big"}],
    "edges": [*[{"source": "start", "target": n} for n in BIG_SIZES],
              *[{"source": n, "target": "check"} for n in BIG_SIZES]],
})

SLEEPY = blueprint({
    "id": "sleepy",
    "nodes": [{"id": "before", "uses": "step"}, {"id": "nap", "uses": "sleep", "params": {"duration": 1500}},
              {"id": "after", "uses": "step"}],
    "edges": [{"source": "before", "target": "nap"}, {"source": "nap", "target": "after"}],
})

APPROVAL = blueprint({
    "id": "approval",
    "nodes": [{"id": "ask", "uses": "step"}, {"id": "gate", "uses": "wait"},
              {"id": "approved", "uses": "step"}, {"id": "rejected", "uses": "step"}],
    "edges": [{"source": "ask", "target": "gate"},
              {"source": "gate", "target": "approved", "action": "approve"},
              {"source": "gate", "target": "rejected", "action": "reject"}],
})

CANCELLABLE = blueprint({
    "id": "cancellable",
    "nodes": [{"id": "first", "uses": "step"}, {"id": "long", "uses": "until-cancelled"},
              {"id": "after", "uses": "step"}],
    "edges": [{"source": "first", "target": "long"}, {"source": "long", "target": "after"}],
})

FAILING = blueprint({
    "id": "failing",
    "nodes": [{"id": "a", "uses": "step"}, {"id": "bad", "uses": "boom"}, {"id": "c", "uses": "step"}],
    "edges": [{"source": "a", "target": "bad"}, {"source": "bad", "target": "c"}],
})

FAILED_BRANCH = blueprint({
    "id": "failed-branch",
    "nodes": [{"id": "start", "uses": "step"}, {"id": "good", "uses": "slow-ok"}, {"id": "bad", "uses": "boom"},
              {"id": "join", "uses": "collect", "config": {"joinStrategy": "all"}},
              {"id": "end", "uses": "step"}],
    "edges": [{"source": "start", "target": "good"}, {"source": "start", "target": "bad"},
              {"source": "good", "target": "join"}, {"source": "bad", "target": "join"},
              {"source": "join", "target": "end"}],
})

QUICK = linear("quick", ["x", "y", "z"])

BLUEPRINTS = {bp.id: bp for bp in (FAN_OUT, JOINS, BIG, SLEEPY, APPROVAL, CANCELLABLE, FAILING, FAILED_BRANCH,
                                   QUICK)}


async def build(distributed: Distributed, rec: Recorder, **extra: Any) -> AzureServices:
    return await distributed.build(make_registry(rec), BLUEPRINTS, **extra)


async def finished(services: AzureServices, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    return await services.adapter.wait_for_run(run_id, timeout=timeout, interval=0.05)


async def drained(*all_services: AzureServices) -> bool:
    """True when the queue holds no message and no worker has a job in flight."""
    if any(s.adapter._in_flight for s in all_services):
        return False
    props = await all_services[0].queue_client.get_queue_properties()
    return props.approximate_message_count == 0


def count_final_writes(services: AzureServices) -> list[tuple[str, str]]:
    """Wrap the status store's finalize to record every call that actually wrote the final status."""
    writes: list[tuple[str, str]] = []
    store = services.adapter.status_store
    original = store.finalize

    async def finalize(run_id: str, status: Any, **kwargs: Any) -> bool:
        wrote = await original(run_id, status, **kwargs)
        if wrote:
            writes.append((run_id, str(status)))
        return wrote

    store.finalize = finalize  # type: ignore[method-assign]
    return writes


def deliver_every_job_twice(services: AzureServices) -> list[Job]:
    """Make the adapter's queue send each message twice (at-least-once delivery at its worst)."""
    sent: list[Job] = []
    queue = services.adapter.job_queue
    original = queue.enqueue

    async def enqueue(job: Job, *, delay_seconds: float = 0) -> None:
        sent.append(job)
        await original(job, delay_seconds=delay_seconds)
        await original(job, delay_seconds=delay_seconds)

    queue.enqueue = enqueue  # type: ignore[method-assign]
    return sent


# --- SPEC 17: 32 concurrent branches, each writing its own key ---------------------------------------


async def test_32_way_fan_out_keeps_every_branch_key_and_runs_the_join_once(distributed: Distributed) -> None:
    rec = Recorder()
    # Two workers on one queue: branches really run concurrently in different adapters.
    first = await build(distributed, rec)
    await build(distributed, rec)

    run_id = await first.adapter.start_run("fan32", {"seed": 1})
    status = await finished(first, run_id)

    assert status["status"] == "completed", status
    context = status["result"]["context"]
    expected_keys = [f"branch_{i:02d}" for i in range(FAN)]
    assert sorted(k for k in context if k.startswith("branch_")) == expected_keys
    for i in range(FAN):
        assert context[f"branch_{i:02d}"] == {"i": i, "by": f"b{i:02d}"}
        assert context[f"_outputs.b{i:02d}"] == i
    assert rec.count(run_id, "join") == 1
    # The join ran after every branch: it saw all 32 keys.
    assert rec.seen[(run_id, "join")] == expected_keys
    assert context["_outputs.join"] == {"keys": FAN}
    assert all(rec.count(run_id, f"b{i:02d}") == 1 for i in range(FAN))


# --- SPEC 18: every job delivered twice ----------------------------------------------------------------


async def test_every_job_delivered_twice_gives_the_clean_result_once(distributed: Distributed) -> None:
    rec = Recorder()
    clean_services = await build(distributed, rec)
    clean_id = await clean_services.adapter.start_run("joins", {"seed": 2})
    clean = await finished(clean_services, clean_id)
    assert clean["status"] == "completed", clean
    await distributed.close()

    bus = CollectingEventBus()
    first = await build(distributed, rec, event_bus=bus)
    second = await build(distributed, rec, event_bus=bus)
    writes = count_final_writes(first)
    writes_second = count_final_writes(second)
    sent = deliver_every_job_twice(first)
    deliver_every_job_twice(second)

    run_id = await first.adapter.start_run("joins", {"seed": 2})
    status = await finished(first, run_id)
    assert status["status"] == "completed", status
    # Let every duplicate be consumed before counting.
    await wait_until(lambda: drained(first, second), timeout=15, message="queue drained")

    assert sent, "the wrapper saw no job"
    processed = Counter(e["payload"]["nodeId"] for e in bus.events
                        if e["type"] == "job:processed" and e["payload"]["runId"] == run_id)
    # The duplicates really were delivered, joins included.
    assert processed["start"] >= 2 and min(processed[j] for j in JOIN_NODES) >= 2, processed
    assert status["result"]["context"] == clean["result"]["context"]
    for join in JOIN_NODES:
        assert rec.count(run_id, join) == 1, (join, rec.calls)
    assert rec.seen[(run_id, "left")] == ["branch_00", "branch_01", "branch_02"]
    assert rec.count(run_id, "right") == 0
    final = [w for w in writes + writes_second if w[0] == run_id]
    assert final == [(run_id, "completed")]
    finishes = [e for e in bus.events if e["type"] == "workflow:finish" and e["payload"]["runId"] == run_id]
    assert len(finishes) == 1


# --- SPEC 20: 10 MB of outputs -----------------------------------------------------------------------------


async def test_outputs_totalling_10_mb_complete_intact(distributed: Distributed) -> None:
    rec = Recorder()
    services = await build(distributed, rec)
    run_id = await services.adapter.start_run("big", {})
    status = await finished(services, run_id, timeout=60)
    assert status["status"] == "completed", status

    assert rec.seen[(run_id, "check")] == {f"_outputs.{n}": s for n, s in BIG_SIZES.items()}
    assert sum(BIG_SIZES.values()) == 10_000_000
    # The status item stays below the item limit; the whole context is assembled on read.
    assert status["result"].get("contextTruncated") is True
    result = await services.adapter.run_result(run_id)
    assert result is not None
    context = result["result"]["context"]
    for node_id, size in BIG_SIZES.items():
        assert context[f"_outputs.{node_id}"] == payload(node_id, size)
    assert context["_outputs.check"] == {"total": 10_000_000}


# --- sleep: a delayed message, not a held worker ----------------------------------------------------------


async def test_sleep_does_not_hold_the_worker(distributed: Distributed) -> None:
    rec = Recorder()
    bus = CollectingEventBus()
    # One job at a time: if the sleep held the worker, nothing else could run meanwhile.
    services = await build(distributed, rec, event_bus=bus, FLOWCRAFT_WORKER_CONCURRENCY="1")

    sleepy_id = await services.adapter.start_run("sleepy", {})

    def nap_scheduled() -> bool:
        return any(e["type"] == "job:processed" and e["payload"]["runId"] == sleepy_id
                   and e["payload"]["nodeId"] == "nap" and e["payload"]["status"] == "sleeping" for e in bus.events)

    await wait_until(nap_scheduled, timeout=10, message="sleep node scheduled its wake-up")

    quick_id = await services.adapter.start_run("quick", {})
    quick = await finished(services, quick_id, timeout=10)
    assert quick["status"] == "completed", quick
    # The other run finished while the first one still sleeps.
    assert rec.count(sleepy_id, "after") == 0
    sleeping = await services.adapter.get_status(sleepy_id)
    assert sleeping is not None and sleeping["status"] == "running"

    status = await finished(services, sleepy_id, timeout=15)
    assert status["status"] == "completed", status
    assert rec.count(sleepy_id, "after") == 1
    woke = rec.started[(sleepy_id, "after")]
    assert woke - rec.started[(sleepy_id, "before")] >= 1.5
    # The sleep passes its input on.
    assert status["result"]["context"]["_outputs.nap"] == status["result"]["context"]["_outputs.before"]


# --- wait / resume -----------------------------------------------------------------------------------------


async def test_wait_then_resume_through_the_adapter(distributed: Distributed) -> None:
    rec = Recorder()
    services = await build(distributed, rec)
    run_id = await services.adapter.start_run("approval", {"request": "deploy"})

    awaiting = await finished(services, run_id)
    assert awaiting["status"] == "awaiting", awaiting
    assert awaiting["awaiting"] == ["gate"]

    resumed = await services.adapter.resume_with_action(run_id, "approve", {"by": "reviewer"})
    assert resumed == "gate"
    status = await finished(services, run_id)

    assert status["status"] == "completed", status
    context = status["result"]["context"]
    assert context["_outputs.gate"] == {"by": "reviewer"}
    assert context["_outputs.approved"] == {"node": "approved", "input": {"by": "reviewer"}}
    assert "_outputs.rejected" not in context
    assert rec.count(run_id, "rejected") == 0
    assert rec.count(run_id, "approved") == 1


# --- cancel ------------------------------------------------------------------------------------------------


async def test_cancel_through_the_adapter_stops_the_run(distributed: Distributed) -> None:
    rec = Recorder()
    services = await build(distributed, rec)
    run_id = await services.adapter.start_run("cancellable", {})
    await wait_until(lambda: rec.count(run_id, "long") == 1, timeout=10, message="long node started")

    await services.adapter.cancel(run_id, "operator said stop")

    status = await finished(services, run_id)
    assert status["status"] == "cancelled", status
    assert status["reason"] == "operator said stop"
    # The running node saw the signal and returned; nothing after it runs.
    await wait_until(lambda: drained(services), timeout=10, message="queue drained")
    assert rec.count(run_id, "after") == 0
    final = await services.adapter.get_status(run_id)
    assert final is not None and final["status"] == "cancelled"


# --- failures ----------------------------------------------------------------------------------------------


async def test_failing_node_fails_the_run_and_nothing_after_it_runs(distributed: Distributed) -> None:
    rec = Recorder()
    services = await build(distributed, rec)
    run_id = await services.adapter.start_run("failing", {})

    status = await finished(services, run_id)
    assert status["status"] == "failed", status
    assert "'bad'" in status["reason"] and "kaboom" in status["reason"]
    errors = status["result"]["errors"]
    assert errors and "kaboom" in errors[0]["message"]
    await wait_until(lambda: drained(services), timeout=10, message="queue drained")
    assert rec.count(run_id, "c") == 0
    assert rec.count(run_id, "bad") >= 1


async def test_all_join_below_a_failed_branch_does_not_hang(distributed: Distributed) -> None:
    rec = Recorder()
    services = await build(distributed, rec)
    run_id = await services.adapter.start_run("failed-branch", {})

    status = await finished(services, run_id, timeout=15)
    assert status["status"] == "failed", status
    assert "'bad'" in status["reason"]
    await wait_until(lambda: drained(services), timeout=10, message="queue drained")
    assert rec.count(run_id, "join") == 0
    assert rec.count(run_id, "end") == 0
    final = await services.adapter.get_status(run_id)
    assert final is not None and final["status"] == "failed"
