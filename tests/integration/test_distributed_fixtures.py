"""SPEC acceptance case 16, distributed half: Flowcraft's declarative use cases through the queue worker.

Every use case of ``workflows.use_cases`` (and every blueprint alone) runs through the production
wiring (Storage Queue jobs, Cosmos DB state, Redis joins) on the real emulators, and ends with the same
context as the in-process ``FlowRuntime`` gives for the same input.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from harness import Distributed

import workflows
from flowcraft_core import CollectingEventBus, FlowRuntime
from workflows import llm

RUN_TIMEOUT = 30.0


@pytest.fixture(autouse=True)
def _offline_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deterministic stand-in answers every prompt, whatever the environment says."""
    monkeypatch.delenv(llm.COMPLETION_ENV_VAR, raising=False)
    llm.set_completion_function(None)


async def in_process(blueprint_id: str, context: dict[str, Any]) -> dict[str, Any]:
    runtime = FlowRuntime(registry=workflows.registry, blueprints=workflows.blueprints)
    result = await asyncio.wait_for(runtime.run(blueprint_id, context), RUN_TIMEOUT)
    assert result.status == "completed", (result.status, result.errors, result.reason)
    return result.context


def use_case_of(blueprint_id: str) -> str:
    return next(name for name in workflows.use_cases if name.split(".", 1)[0] == blueprint_id[0])


def node_starts(bus: CollectingEventBus, run_id: str) -> Counter[str]:
    return Counter(e["payload"]["nodeId"] for e in bus.events
                   if e["type"] == "node:start" and e["payload"].get("runId") == run_id)


@pytest.mark.parametrize("name", sorted(workflows.use_cases))
async def test_use_case_completes_through_the_queue_like_in_process(distributed: Distributed, name: str) -> None:
    bus = CollectingEventBus()
    services = await distributed.build(workflows.registry, workflows.blueprints, event_bus=bus)
    entry = workflows.use_cases[name]["entryWorkflowId"]
    context = workflows.initial_context(name)

    run_id = await services.adapter.start_run(entry, context)
    status = await services.adapter.wait_for_run(run_id, timeout=RUN_TIMEOUT, interval=0.1)

    assert status["status"] == "completed", status
    assert status["result"]["errors"] == []
    distributed_context = status["result"]["context"]
    expected = await in_process(entry, workflows.initial_context(name))
    assert isinstance(distributed_context.get("final_output"), str) and distributed_context["final_output"].strip()
    assert distributed_context["final_output"] == expected["final_output"]
    # Not only the final text: every key (outputs of every node, keys nodes set) is the same.
    assert distributed_context == expected
    # Each node of the entry blueprint ran at most once on the worker.
    started = node_starts(bus, run_id)
    assert started and max(started.values()) == 1, started


# The routes the fixtures take for other inputs (router branches, the negative/positive review, rejection).
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("2.job-application", {"coverLetter": "hey dude, gonna be great at this lol"}),
    ("3.customer-review", {"initial_review": "I love the new dashboard, it is a great improvement. Thank you!"}),
    ("4.content-moderation", {"userPost": "You are all subhuman vermin."}),
    ("4.content-moderation", {"userPost": "Buy now! Click here: http://deals.example"}),
    ("4.content-moderation", {"userPost": "Thanks, the new release works well for me."}),
]


async def test_every_blueprint_and_route_variant_matches_in_process(distributed: Distributed) -> None:
    """All blueprints alone plus the other routes, as concurrent runs on one worker."""
    services = await distributed.build(workflows.registry, workflows.blueprints)
    cases: list[tuple[str, dict[str, Any]]] = [
        (bp_id, workflows.initial_context(use_case_of(bp_id))) for bp_id in sorted(workflows.blueprints)]
    for name, overrides in VARIANTS:
        cases.append((workflows.use_cases[name]["entryWorkflowId"], {**workflows.initial_context(name), **overrides}))

    run_ids = [await services.adapter.start_run(bp_id, dict(ctx)) for bp_id, ctx in cases]
    statuses = await asyncio.gather(*(services.adapter.wait_for_run(r, timeout=RUN_TIMEOUT, interval=0.1)
                                      for r in run_ids))
    expected = await asyncio.gather(*(in_process(bp_id, dict(ctx)) for bp_id, ctx in cases))

    for (bp_id, _ctx), status, want in zip(cases, statuses, expected, strict=True):
        assert status["status"] == "completed", (bp_id, status)
        assert status["result"]["context"] == want, bp_id
