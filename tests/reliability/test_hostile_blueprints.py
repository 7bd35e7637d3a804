"""Hostile blueprints and run ids through the distributed worker.

Edge conditions, transforms and loop conditions that try to import modules, walk dunders, call what
is not allowed or blow up CPU or memory: lint refuses each blueprint when the worker starts, and one
that gets past lint fails its run quickly with an expression error naming the edge, the target never
runs, and the same worker goes on to complete a good run. Run ids that Cosmos DB cannot hold (``/``,
``\\``, ``#``, ``?``), or that are too long or empty, are refused by start_run before anything is written.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from rel_support import RelHarness, executions, wait_final
from rel_workflows import blueprints as base_blueprints
from rel_workflows import registry

from flowcraft_core.engine import validate_run_id
from flowcraft_core.errors import BlueprintError
from flowcraft_core.models import WorkflowBlueprint

# (expression, where it goes, what the error says)
HOSTILE: list[tuple[str, str, str]] = [
    ("__import__('os').system('touch /tmp/flowcraft-pwned')", "condition", "is not allowed"),
    ("9**9**9", "condition", "limited to 1000"),
    ("'a' * 10**9", "condition", "max_string_length"),
    ("result.__class__.__mro__[1].__subclasses__()", "condition", "'__' are not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", "transform", "'__' are not allowed"),
    ("input.__globals__", "transform", "'__' are not allowed"),
    ("getattr(result, '__class__')", "condition", "calling 'getattr' is not allowed"),
    ("'{0.__class__}'.format(result)", "transform", "calling .format() is not allowed"),
    ("[x for x in range(10**9)]", "condition", "comprehensions are not allowed"),
    ("(lambda: 1)()", "transform", "only named functions"),
    ("open('/etc/passwd').read()", "condition", "is not allowed"),
    ("result.output.token + " * 20_000 + "'x'", "condition", "the limit is 1000"),
]


def hostile_blueprint(i: int, expression: str, where: str) -> WorkflowBlueprint:
    return WorkflowBlueprint.model_validate({
        "id": f"hostile-{i}",
        "nodes": [{"id": "a", "uses": "mark"}, {"id": "b", "uses": "mark"}],
        "edges": [{"source": "a", "target": "b", where: expression}],
    })


HOSTILE_LOOP = WorkflowBlueprint.model_validate({
    "id": "hostile-loop",
    "nodes": [{"id": "a", "uses": "mark"},
              {"id": "increment", "uses": "increment", "config": {"joinStrategy": "any"}},
              {"id": "loop", "uses": "loop-controller",
               "params": {"condition": "count < 9**9**9 and __import__('os')"}, "config": {"joinStrategy": "any"}},
              {"id": "after", "uses": "mark"}],
    "edges": [{"source": "a", "target": "increment"}, {"source": "increment", "target": "loop"},
              {"source": "loop", "target": "increment", "action": "continue"},
              {"source": "loop", "target": "after", "action": "break"}],
})


async def test_hostile_expressions_fail_their_run_cleanly_and_the_worker_survives(rel: RelHarness) -> None:
    blueprints: dict[str, Any] = dict(base_blueprints)
    for i, (expression, where, _) in enumerate(HOSTILE):
        blueprints[f"hostile-{i}"] = hostile_blueprint(i, expression, where)
    blueprints["hostile-loop"] = HOSTILE_LOOP
    worker = await rel.build(registry, blueprints)
    engine = worker.adapter.engine

    # First line of defence: lint refuses, when the worker starts, every one whose expression is unsafe
    # on its face; the two that are only too costly once evaluated pass lint and fail at run time.
    refused = {i for i in range(len(HOSTILE)) if f"hostile-{i}" in engine.broken}
    assert refused == set(range(len(HOSTILE))) - {1, 2}
    for i in sorted(refused):
        expression, where, says = HOSTILE[i]
        problems = engine.broken[f"hostile-{i}"]
        assert len(problems) == 1 and problems[0].startswith(f"edges[0].{where}:") and says in problems[0], problems
        with pytest.raises(BlueprintError, match="refused"):
            await worker.adapter.start_run(f"hostile-{i}", rel.context(f"refused{i}"))
    assert "names containing '__'" in " ".join(engine.broken["hostile-loop"])
    # Second line: a blueprint that got past lint (registered behind the engine's back here) still fails
    # its run at the expression, never running it.
    for bp_id in [f"hostile-{i}" for i in sorted(refused)] + ["hostile-loop"]:
        engine.blueprints[bp_id] = blueprints[bp_id]
        engine.broken.pop(bp_id)

    runs = {i: await worker.adapter.start_run(f"hostile-{i}", rel.context(f"h{i}")) for i in range(len(HOSTILE))}
    loop_run = await worker.adapter.start_run("hostile-loop", rel.context("loop"))
    for i, run_id in runs.items():
        expression, where, says = HOSTILE[i]
        status = await wait_final(worker, run_id)
        assert status["status"] == "failed", (expression, status)
        assert f"{where} of edge a->b failed" in status["reason"] and says in status["reason"], (expression, status)
        assert status["result"]["errors"][0]["nodeId"] == "a"
        assert executions(run_id)["b"] == 0, expression
        # Rejected on the first delivery: the bad expression failed the run, it was not retried.
        assert executions(run_id)["a"] == 1, expression
    looped = await wait_final(worker, loop_run)
    assert looped["status"] == "failed" and "loop" in looped["reason"], looped
    assert executions(loop_run)["after"] == 0
    assert not os.path.exists("/tmp/flowcraft-pwned")  # noqa: ASYNC240 - one stat, in a test

    good = await worker.adapter.start_run("fan", rel.context("good"))
    assert (await wait_final(worker, good))["status"] == "completed"


BAD_RUN_IDS = ["a/b", "a\\b", "run#1", "what?", "r" * 129, "", " leading-space", "-starts-with-dash",
               "tab\there", "new\nline", "ünïcode", "a b", "../../etc/passwd", "%2F"]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_validate_run_id_rejects_ids_cosmos_cannot_hold(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id must be 1-128 characters"):
        validate_run_id(run_id)


def test_validate_run_id_accepts_the_documented_alphabet() -> None:
    for run_id in ("a", "A9", "order-2024.01_x:y@z=w+v", "r" * 128):
        assert validate_run_id(run_id) == run_id


async def test_start_run_refuses_bad_run_ids_before_writing_anything(rel: RelHarness) -> None:
    worker = await rel.build(registry, base_blueprints, start=False)
    for run_id in BAD_RUN_IDS:
        with pytest.raises(ValueError, match="run id must be"):
            await worker.adapter.start_run("fan", rel.context("bad"), run_id=run_id)
    statuses = worker.adapter.status_store.container
    count = [n async for n in statuses.query_items("SELECT VALUE COUNT(1) FROM c")]
    assert count == [0]
    props = await worker.queue_client.get_queue_properties()
    assert props.approximate_message_count == 0
