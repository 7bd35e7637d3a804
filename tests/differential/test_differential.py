"""The fixed seed set of the differential tests (issue 16, SPEC case 22).

- In process: every seed of ``INPROCESS_SEEDS`` (120 generated blueprints of 5-40 nodes) must give the
  reference's status, failing node, context and execution counts, and keep the invariants. Seeds that hit
  a reported finding are strict xfails naming it (known.py).
- Distributed (two worker processes on the emulators): a bounded subset, first without faults, then
  with the faults each seed draws (duplicates, delays, worker kills, Redis flush/restart, reconciler).
  Seeds hitting a known finding are left out of it; the regression cases cover those.

``make fuzz SEED=... N=...`` runs more seeds than these and shrinks what disagrees.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from flowcraft_dev.emulators import Emulators
from tests.differential.distributed import DistributedRig, Faults, draw_faults
from tests.differential.generator import generate
from tests.differential.harness import check_distributed, check_inprocess
from tests.differential.known import FINDINGS, SEED_FINDINGS

INPROCESS_SEEDS = range(120)
DISTRIBUTED_CLEAN_SEEDS = [s for s in range(1000, 1016) if s not in SEED_FINDINGS]
DISTRIBUTED_FAULT_SEEDS = [s for s in range(2000, 2012) if s not in SEED_FINDINGS]


def _seed_params() -> list[object]:
    params: list[object] = []
    for seed in INPROCESS_SEEDS:
        finding = SEED_FINDINGS.get(seed)
        reason = FINDINGS.get(finding or "", {}).get("inprocess")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(seed, id=f"seed{seed}", marks=marks))
    return params


def test_generated_blueprints_cover_the_constructs_issue_16_lists() -> None:
    uses: set[str] = set()
    strategies: set[str] = set()
    sizes = []
    features: set[str] = set()
    for seed in INPROCESS_SEEDS:
        case = generate(seed)
        sizes.append(case.node_count)
        for bp in case.blueprints:
            for node in bp["nodes"]:
                uses.add(node["uses"])
                config = node.get("config", {})
                strategies.add(config.get("joinStrategy", "all"))
                params = node.get("params", {})
                features.update(k for k in ("failTimes", "alwaysFail", "set", "read", "sleepMs", "action", "score")
                                if k in params)
                features.update(k for k in ("fallback", "timeout") if k in config)
            features.update(k for e in bp["edges"] for k in ("action", "condition", "transform") if k in e)
        features.update({"wait-resume"} if case.resume else set())
        if sum(n["uses"] == "loop-controller" for n in case.blueprints[0]["nodes"]) >= 2:
            features.add("two-loops")
    assert min(sizes) >= 5 and max(sizes) <= 40
    assert {"d-step", "d-join", "d-count", "loop-controller", "batch-scatter", "batch-gather", "sleep", "wait",
            "subflow"} <= uses
    assert strategies == {"all", "any"}
    assert {"failTimes", "alwaysFail", "set", "read", "sleepMs", "action", "score", "fallback", "timeout",
            "condition", "transform", "wait-resume", "two-loops"} <= features


@pytest.mark.parametrize("seed", _seed_params())
async def test_in_process_agrees_with_the_reference(seed: int) -> None:
    verdict = await check_inprocess(generate(seed))
    assert not verdict.problems, verdict.report()


@pytest.mark.slow
async def test_distributed_agrees_with_the_reference(emulators: Emulators) -> None:
    rig = DistributedRig(emulators.env(), Path(tempfile.mkdtemp(prefix="diff-")))
    failures = []
    try:
        await rig.start()
        cases = [(generate(s), Faults()) for s in DISTRIBUTED_CLEAN_SEEDS]
        cases += [(generate(s), draw_faults(s)) for s in DISTRIBUTED_FAULT_SEEDS]
        rig.load([c for c, _f in cases])
        for case, faults in cases:
            verdict = await check_distributed(case, rig, faults, inprocess=False)
            if verdict.problems:
                failures.append({"seed": case.seed, "faults": faults.to_json(), "problems": verdict.problems[:5]})
    finally:
        await rig.close()
    tried = rig.tally
    assert tried.runs == len(cases)
    assert tried.kills > 0 and tried.duplicated_runs > 0, tried  # the fault seeds do inject faults
    assert not failures, failures
