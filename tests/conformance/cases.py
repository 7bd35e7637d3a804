"""Conformance cases: loading the case files, the seeded random DAGs, the Python stubs, the comparison.

A case (one entry of a list in ``cases/*.json``, or a generated one) is::

    {"name": ..., "blueprint": {...}, "blueprints"?: {id: child blueprint}, "context"?: {...},
     "evaluator"?: "property" | "unsafe",          # Flowcraft's evaluator; ours is always SafeEvaluator
     "behaviours": {usesKey: {"output"?, "outputs"?: [per call], "action"?, "actions"?: [per call],
                              "set"?: {key: value}, "incr"?: key, "fail"?: n, "failAlways"?, "sleepMs"?}},
     "resume"?: [{"action"?, "output"?, "nodeId"?}],
     "differs"?: {readmeRowId: [field, ...]},      # the fields expected to differ, exactly
     "xfail"?: reason}

Fields compared: ``status``; ``runs.<uses>`` (how often each stub ran); ``outputs.<nodeId>`` (the
blueprint's nodes); ``context.<key>`` (keys not starting with ``_``); ``input.<uses>`` (the inputs each
stub saw, as a multiset). The stubs behave the same in both engines (driver.mjs mirrors ``make_stub``).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from flowcraft_core import NodeContext, NodeResult

HERE = Path(__file__).resolve().parent
CASE_DIR = HERE / "cases"
RANDOM_COUNT = 100
RANDOM_SEED = 20261201
# Keys the batch nodes keep for themselves (Flowcraft names its workers with random UUIDs).
_BOOKKEEPING_SUFFIXES = ("_allWorkerIds", "_hasMore", "_currentIndex")


def load_cases() -> list[dict[str, Any]]:
    """Every hand-written case, in file order."""
    cases: list[dict[str, Any]] = []
    for path in sorted(CASE_DIR.glob("*.json")):
        for case in json.loads(path.read_text()):
            case["file"] = path.name
            cases.append(case)
    names = [c["name"] for c in cases]
    duplicates = sorted(n for n, k in Counter(names).items() if k > 1)
    assert not duplicates, f"duplicate case names: {duplicates}"
    return cases


def make_stub(uses: str, behaviour: dict[str, Any], trace: list[dict[str, Any]], counters: Counter[str]) -> Any:
    """The Python twin of driver.mjs's makeStub."""

    async def stub(ctx: NodeContext) -> NodeResult:
        call = counters[uses]
        counters[uses] += 1
        trace.append({"uses": uses, "input": json.loads(json.dumps(ctx.input))})
        if behaviour.get("sleepMs"):
            await asyncio.sleep(behaviour["sleepMs"] / 1000)
        if behaviour.get("failAlways") or call < behaviour.get("fail", 0):
            raise RuntimeError(f"{uses} failed (call {call + 1})")
        for key, value in (behaviour.get("set") or {}).items():
            await ctx.context.set(key, value)
        outputs = behaviour.get("outputs")
        output = outputs[min(call, len(outputs) - 1)] if outputs else behaviour.get("output")
        if behaviour.get("incr"):
            output = (await ctx.context.get(behaviour["incr"]) or 0) + 1
            await ctx.context.set(behaviour["incr"], output)
        if output is None:
            output = uses
        actions = behaviour.get("actions")
        action = actions[min(call, len(actions) - 1)] if actions else behaviour.get("action")
        return NodeResult(output=output, action=action)

    return stub


def observe(blueprint: dict[str, Any], status: str, context: dict[str, Any],
            trace: list[dict[str, Any]]) -> dict[str, Any]:
    """The comparable facts of one run, as ``{field: value}``."""
    node_ids = {n["id"] for n in blueprint["nodes"]}
    facts: dict[str, Any] = {"status": status}
    runs = Counter(t["uses"] for t in trace)
    for uses, count in runs.items():
        facts[f"runs.{uses}"] = count
    inputs: dict[str, list[str]] = {}
    for t in trace:
        inputs.setdefault(t["uses"], []).append(json.dumps(t["input"], sort_keys=True))
    for uses, seen in inputs.items():
        facts[f"input.{uses}"] = sorted(seen)
    for key, value in context.items():
        if value is None:
            continue  # JavaScript's undefined does not survive JSON; treat null and absent alike
        if key.startswith("_outputs."):
            nid = key[len("_outputs."):]
            if nid in node_ids:
                facts[f"outputs.{nid}"] = value
            continue
        if key.startswith("_") or key.endswith(_BOOKKEEPING_SUFFIXES):
            continue
        if key in context and context.get(f"_outputs.{key}") == value and key in _completed(context):
            continue  # Flowcraft's copy of an output under the bare node id (ours resolves it on lookup)
        facts[f"context.{key}"] = value
    return facts


def _completed(context: dict[str, Any]) -> set[str]:
    return {k[len("_outputs."):] for k in context if k.startswith("_outputs.")}


def differing_fields(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: ``{field: (ours, flowcraft)}``."""
    return {f: (ours.get(f), theirs.get(f)) for f in sorted(set(ours) | set(theirs)) if ours.get(f) != theirs.get(f)}


# --- seeded random DAGs ---------------------------------------------------------------------------

def random_cases(count: int = RANDOM_COUNT, seed: int = RANDOM_SEED) -> list[dict[str, Any]]:
    """``count`` random DAGs of 5-15 nodes: routers with actions, all- and any-joins, context writes."""
    rng = random.Random(seed)
    return [_random_dag(rng, i) for i in range(count)]


def _random_dag(rng: random.Random, index: int) -> dict[str, Any]:
    size = rng.randint(5, 15)
    ids = [f"n{i}" for i in range(size)]
    starts = 1 if size < 8 or rng.random() < 0.6 else 2
    edges: list[dict[str, Any]] = []
    preds: dict[str, list[str]] = {nid: [] for nid in ids}
    for i in range(starts, size):
        chosen = rng.sample(ids[:i], k=min(i, rng.choice([1, 1, 1, 2, 2, 3])))
        for src in chosen:
            preds[ids[i]].append(src)
    succs: dict[str, list[str]] = {nid: [] for nid in ids}
    for target, sources in preds.items():
        for src in sources:
            succs[src].append(target)
    behaviours: dict[str, Any] = {}
    nodes: list[dict[str, Any]] = []
    for nid in ids:
        node: dict[str, Any] = {"id": nid, "uses": nid}
        if len(preds[nid]) > 1:
            node["config"] = {"joinStrategy": rng.choice(["all", "any"])}
        nodes.append(node)
        behaviour: dict[str, Any] = {"output": {"from": nid, "v": rng.randint(0, 99)}}
        if rng.random() < 0.3:
            behaviour["set"] = {f"k_{nid}": rng.randint(0, 9)}
        targets = succs[nid]
        if len(targets) >= 2 and rng.random() < 0.5:
            # A router: each out-edge gets one of two actions, and the chosen action has at least one
            # edge (an unmatched action without a default edge is a case of its own, not random noise).
            labels = [rng.choice(["x", "y"]) for _ in targets]
            labels[0] = "x"
            behaviour["action"] = rng.choice(sorted(set(labels)))
            for target, label in zip(targets, labels, strict=True):
                edges.append({"source": nid, "target": target, "action": label})
        else:
            edges.extend({"source": nid, "target": target} for target in targets)
        behaviours[nid] = behaviour
    return {"name": f"random_{index:03d}", "random": True,
            "blueprint": {"id": f"random-{index:03d}", "nodes": nodes, "edges": edges},
            "behaviours": behaviours}
