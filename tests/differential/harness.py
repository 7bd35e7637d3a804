"""One case through the reference, the in-process runtime and (optionally) the distributed rig, compared."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.differential.distributed import DistributedRig, Faults
from tests.differential.generator import Block, Case
from tests.differential.outcomes import Observed, disagreements, invariant_violations
from tests.differential.runners import run_inprocess, run_reference


@dataclass
class Verdict:
    """The outcomes of one case and every problem found (empty when all agree and no invariant broke)."""

    case: Case
    faults: Faults
    outcomes: list[Observed]
    problems: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """A reproduction: the blueprints, the faults, each runtime's outcome and the problems."""
        return {**self.case.to_json(), "faults": self.faults.to_json(), "problems": self.problems,
                "outcomes": [o.summary() for o in self.outcomes]}


def join_keys(case: Case) -> frozenset[str]:
    """Count keys of the case's joins (nodes several jobs release): a batch gather, or a join node with
    edges from several nodes. A `d-join` left with one incoming edge (the shrinker makes such cases) is
    an ordinary node, which at-least-once delivery may run again under duplicates like any other."""
    keys: set[str] = set()
    for bp in case.blueprints:
        sources: dict[str, set[str]] = {}
        for edge in bp.get("edges", []):
            sources.setdefault(edge["target"], set()).add(edge["source"])
        for n in bp["nodes"]:
            if n["uses"] == "batch-gather" or (n["uses"] == "d-join" and len(sources.get(n["id"], ())) > 1):
                keys.add(f"{bp['id']}:{n['id']}")
    return frozenset(keys)


def compare(case: Case, ref: Observed, other: Observed, faults: Faults) -> list[str]:
    """Disagreements with the reference plus broken invariants of one runtime's outcome."""
    return (disagreements(ref, other, repeats_allowed=faults.repeats_allowed, joins=join_keys(case),
                          join_repeats_allowed=bool(faults.kills or faults.redis))
            + [f"{other.runtime}: {p}" for p in invariant_violations(other, child_repeats=faults.repeats_allowed)])


async def check_inprocess(case: Case) -> Verdict:
    """Reference vs in-process."""
    ref, inp = run_reference(case), await run_inprocess(case)
    return Verdict(case, Faults(), [ref, inp], compare(case, ref, inp, Faults()))


async def check_distributed(case: Case, rig: DistributedRig, faults: Faults, *, inprocess: bool = True) -> Verdict:
    """Reference vs distributed (and in-process): run, let late jobs drain, then read the workers' traces."""
    rig.load([case])
    ref = run_reference(case)
    outcomes = [ref]
    problems: list[str] = []
    if inprocess:
        inp = await run_inprocess(case)
        outcomes.append(inp)
        problems += compare(case, ref, inp, Faults())
    run_id, dist = await rig.run(case, faults)
    await rig.drain()
    rig.observe(run_id, dist, rig.traces(), faults)
    outcomes.append(dist)
    problems += compare(case, ref, dist, faults)
    return Verdict(case, faults, outcomes, problems)


def load_case(path: Path) -> Case:
    """A case saved as JSON (a regression case, or a fuzz reproduction)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    resume = {k: (v[0], v[1]) for k, v in (data.get("resume") or {}).items()}
    return Case(int(data.get("seed", 0)), Block("seq"), data["blueprints"], data.get("context") or {}, resume)
