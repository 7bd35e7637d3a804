"""The same cases through Flowcraft 2.10.1 and through FlowRuntime: they agree, or differ exactly as the
README's "Differences from Flowcraft" table says."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
from cases import HERE, differing_fields, load_cases, make_stub, observe, random_cases

from flowcraft_core import FlowRuntime, WorkflowBlueprint

README = HERE.parents[1] / "README.md"
HAND_CASES = load_cases()
RANDOM_CASES = random_cases()


def readme_rows() -> set[str]:
    """Row ids of the README's differences table (first column, in backticks)."""
    text = README.read_text()
    section = text.split("## Differences from Flowcraft", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE))


async def run_ours(case: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Run a case through FlowRuntime; return its facts and the run's stored state."""
    trace: list[dict[str, Any]] = []
    counters: Counter[str] = Counter()
    registry = {uses: make_stub(uses, b, trace, counters) for uses, b in case.get("behaviours", {}).items()}
    blueprints = {bid: WorkflowBlueprint.model_validate(b) for bid, b in (case.get("blueprints") or {}).items()}
    runtime = FlowRuntime(registry=registry, blueprints=blueprints)
    result = await runtime.run(case["blueprint"], dict(case.get("context") or {}))
    for step in case.get("resume") or []:
        if result.status != "awaiting":
            break
        result = await runtime.resume(result.run_id, step.get("action"), step.get("output"), step.get("nodeId"))
    state = await runtime.engine.run_store.load(result.run_id)
    return observe(case["blueprint"], result.status, result.context, trace), state


def theirs(case: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    seen = results[case["name"]]
    assert seen["status"] != "threw", f"Flowcraft threw on {case['name']}: {seen.get('error')}"
    return observe(case["blueprint"], seen["status"], seen["context"], seen["trace"])


def _params(cases: list[dict[str, Any]]) -> list[Any]:
    marks = []
    for case in cases:
        mark = [pytest.mark.xfail(strict=True, reason=case["xfail"])] if case.get("xfail") else []
        marks.append(pytest.param(case, id=case["name"], marks=mark))
    return marks


@pytest.mark.parametrize("case", _params(HAND_CASES))
async def test_case_agrees_or_differs_as_documented(case: dict[str, Any], flowcraft_results: dict[str, Any]) -> None:
    ours, _ = await run_ours(case)
    diff = differing_fields(ours, theirs(case, flowcraft_results))
    expected = {f for fields in (case.get("differs") or {}).values() for f in fields}
    assert set(diff) == expected, (
        f"{case['name']}: fields differing from Flowcraft {sorted(diff)} (ours, flowcraft): {diff}; "
        f"expected exactly {sorted(expected)}")


def test_every_documented_difference_is_backed_by_a_case() -> None:
    rows = readme_rows()
    used = {row for case in HAND_CASES for row in (case.get("differs") or {})}
    assert used <= rows, f"cases name rows missing from the README table: {sorted(used - rows)}"
    assert rows <= used, f"README rows no case shows: {sorted(rows - used)}"
    text = README.read_text()
    assert f"{len(HAND_CASES)} hand-written cases" in text and f"{len(RANDOM_CASES)} seeded random DAGs" in text


# --- random DAGs -----------------------------------------------------------------------------------

def _descendants(blueprint: dict[str, Any], roots: set[str]) -> set[str]:
    succ: dict[str, list[str]] = {}
    for e in blueprint["edges"]:
        succ.setdefault(e["source"], []).append(e["target"])
    seen, stack = set(roots), list(roots)
    while stack:
        for t in succ.get(stack.pop(), []):
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return seen


def explain(case: dict[str, Any], state: Any, ours: dict[str, Any], flowcraft: dict[str, Any],
            field: str) -> str | None:
    """The README row whose difference a differing field of a random DAG shows, or None.

    Attribution comes from our run's stored routes and from what ran in Flowcraft, and the difference must
    have that row's shape: an all-join into which some edge did not deliver runs here but never in
    Flowcraft, nor anything below it (Flowcraft has no value at all); an any-join reached by several
    predecessors runs once here but again per wave of arrivals in Flowcraft, and so may what follows it
    (Flowcraft ran it more often, and saw every input ours saw); a join into which several edges delivered
    gets ``{pred: output}`` here where Flowcraft passes one of those outputs.
    """
    bp = case["blueprint"]
    nodes = {n["id"]: n for n in bp["nodes"]}
    preds: dict[str, set[str]] = {}
    for e in bp["edges"]:
        preds.setdefault(e["target"], set()).add(e["source"])
    delivered: dict[str, set[str]] = {}
    for rec in state.records.values():
        for route in rec.routes:
            if route.taken:
                delivered.setdefault(route.target, set()).add(rec.node_id)
    ran = {rec.node_id for rec in state.records.values()}

    def strategy(nid: str) -> str:
        return str((nodes[nid].get("config") or {}).get("joinStrategy", "all"))

    starved = {n for n in ran if strategy(n) == "all" and len(preds.get(n, ())) > 1
               and delivered.get(n, set()) != preds[n]}
    ran_there = {n for n in nodes if flowcraft.get(f"runs.{n}")}
    rerun = {n for n in nodes if strategy(n) == "any" and len(preds.get(n, set()) & ran_there) > 1}
    kind, _, subject = field.partition(".")
    node = subject.removeprefix("k_") if kind == "context" else subject
    if kind == "status" or node not in nodes:
        return None
    here, there = ours.get(field), flowcraft.get(field)
    if node in _descendants(bp, starved) and there is None:
        return "all-join-live-branches"
    if node in _descendants(bp, rerun):
        if kind == "runs" and here is not None and there is not None and here < there:
            return "any-join-once"
        if kind == "input" and here is not None and there is not None and len(here) < len(there):
            theirs_inputs = [json.loads(x) for x in there]
            if all(json.loads(x) in theirs_inputs or _one_of_mapping(x, there) for x in here):
                return "any-join-once"
    if (kind == "input" and len(delivered.get(node, ())) > 1 and here is not None and there is not None
            and len(here) == len(there) and all(_one_of_mapping_any(t, here) for t in there)):
        return "join-input-mapping"
    return None


def _one_of_mapping(mine: str, theirs: list[str]) -> bool:
    """Our {pred: output} input holds one of the outputs Flowcraft passed."""
    value = json.loads(mine)
    return isinstance(value, dict) and any(json.loads(t) in value.values() for t in theirs)


def _one_of_mapping_any(their: str, ours: list[str]) -> bool:
    """One of our {pred: output} inputs holds the output Flowcraft passed."""
    wanted = json.loads(their)
    return any(isinstance(v := json.loads(o), dict) and len(v) > 1 and wanted in v.values() for o in ours)


@pytest.mark.parametrize("case", _params(RANDOM_CASES))
async def test_random_dag_agrees_apart_from_documented_rows(case: dict[str, Any],
                                                            flowcraft_results: dict[str, Any]) -> None:
    ours, state = await run_ours(case)
    flowcraft = theirs(case, flowcraft_results)
    diff = differing_fields(ours, flowcraft)
    unexplained = {f: v for f, v in diff.items() if explain(case, state, ours, flowcraft, f) is None}
    assert not unexplained, f"{case['name']}: differences no README row explains (ours, flowcraft): {unexplained}"
    rows = {explain(case, state, ours, flowcraft, f) for f in diff}
    assert rows <= readme_rows()
