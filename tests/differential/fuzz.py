"""``make fuzz SEED=... N=...``: run N generated blueprints from SEED on the reference, in process and
distributed (two workers, with the faults each seed draws), shrink every disagreement, and report.

    .venv/bin/python -m tests.differential.fuzz --seed 0 -n 100            # with faults, distributed
    .venv/bin/python -m tests.differential.fuzz --seed 0 -n 500 --inprocess-only
    .venv/bin/python -m tests.differential.fuzz --replay tests/differential/regressions/F2.json

For each disagreement it prints a shrunk reproduction (blueprint JSON, fault schedule, the three
outcomes and the problems) and writes it under ``--out`` (default .fuzz/); at the end, what was tried:
blueprints, jobs, duplicated runs, worker kills, Redis faults, reconciler passes. Exit status 1 when
anything disagreed or broke an invariant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from flowcraft_dev.emulators import Emulators
from tests.differential.distributed import DistributedRig, Faults, draw_faults
from tests.differential.generator import Case, generate
from tests.differential.harness import Verdict, check_distributed, check_inprocess, load_case
from tests.differential.shrink import shrink

REPO_ROOT = Path(__file__).resolve().parents[2]


def _print_verdict(label: str, verdict: Verdict) -> None:
    report = verdict.report()
    print(f"\n=== {label}: {len(verdict.problems)} problem(s)")
    print("blueprints:", json.dumps(report["blueprints"]))
    print("context:", json.dumps(report["context"]), " resume:", json.dumps(report["resume"]))
    print("faults:", json.dumps(report["faults"]))
    for outcome in report["outcomes"]:
        print(f"- {outcome['runtime']}: {outcome['status']} failing={outcome['failedNode']} "
              f"counts={json.dumps(outcome['counts'])}")
    for problem in verdict.problems[:10]:
        print("  *", problem)


async def _fuzz(args: argparse.Namespace) -> int:
    out = Path(args.out)
    seeds = range(args.seed, args.seed + args.n)
    started = time.monotonic()
    bad: list[Verdict] = []
    node_total = 0
    rig: DistributedRig | None = None
    emulators: Emulators | None = None
    try:
        if not args.inprocess_only:
            emulators = Emulators(repo_root=REPO_ROOT)
            emulators.start()
            rig = DistributedRig(emulators.env(), Path(tempfile.mkdtemp(prefix="fuzz-")))
            await rig.start()
        for seed in seeds:
            case = generate(seed)
            node_total += case.node_count
            faults = Faults() if args.no_faults or rig is None else draw_faults(seed)
            if rig is None:
                verdict = await check_inprocess(case)
            else:
                verdict = await check_distributed(case, rig, faults)
            status = "ok" if not verdict.problems else "DISAGREES"
            print(f"seed {seed}: {case.node_count} nodes, {[o.status for o in verdict.outcomes]} "
                  f"faults={json.dumps(faults.to_json()) if faults.any else 'none'} {status}", flush=True)
            if verdict.problems:
                bad.append(await _shrunk(verdict, rig, args.shrink_budget))
                path = out / f"seed-{seed}.json"
                path.write_text(json.dumps(bad[-1].report(), indent=1) + "\n")
                _print_verdict(f"seed {seed} (shrunk, saved to {path})", bad[-1])
    finally:
        if rig is not None:
            await rig.close()
        if emulators is not None:
            emulators.stop()
    elapsed = time.monotonic() - started
    print("\n=== tried")
    print(f"blueprints: {len(seeds)} (seeds {args.seed}..{args.seed + args.n - 1}, {node_total} nodes), "
          f"{elapsed:.0f} s")
    if rig is not None:
        t = rig.tally
        print(f"distributed runs: {t.runs}, jobs enqueued by the workers: {t.jobs}, runs with every job duplicated: "
              f"{t.duplicated_runs}, worker kills: {t.kills}, Redis flushes/restarts: {t.redis_faults}, "
              f"reconciler passes: {t.reconciler_runs}")
    print(f"disagreements or invariant violations: {len(bad)}" + (f" (seeds {[v.case.seed for v in bad]})"
                                                                  if bad else ""))
    return 1 if bad else 0


async def _shrunk(verdict: Verdict, rig: DistributedRig | None, budget: int) -> Verdict:
    """Shrink with the check that failed: in process when the in-process runtime disagrees, else distributed
    (same faults)."""
    in_process_fails = any(p.startswith("inprocess") or "inprocess" in p.split(":", 1)[0] or " inprocess " in p
                           for p in verdict.problems)
    faults = verdict.faults

    async def check(case: Case) -> list[str]:
        if in_process_fails or rig is None:
            return (await check_inprocess(case)).problems
        return (await check_distributed(case, rig, faults, inprocess=False)).problems

    small = await shrink(verdict.case, check, budget=budget if in_process_fails or rig is None else budget // 8)
    again = await check_inprocess(small) if rig is None else await check_distributed(small, rig, faults)
    # A timing-dependent disagreement may not show again on the shrunk case: then report the original.
    return again if again.problems else verdict


async def _replay(args: argparse.Namespace) -> int:
    case = load_case(Path(args.replay))
    verdict = await check_inprocess(case)
    if not args.inprocess_only:
        emulators = Emulators(repo_root=REPO_ROOT)
        emulators.start()
        rig = DistributedRig(emulators.env(), Path(tempfile.mkdtemp(prefix="fuzz-")))
        try:
            await rig.start()
            verdict = await check_distributed(case, rig, Faults())
        finally:
            await rig.close()
            emulators.stop()
    _print_verdict(args.replay, verdict)
    return 1 if verdict.problems else 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--inprocess-only", action="store_true", help="reference vs in-process only (no emulators)")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--shrink-budget", type=int, default=200, help="variants tried per disagreement")
    parser.add_argument("--out", default=str(REPO_ROOT / ".fuzz"))
    parser.add_argument("--replay", help="run one saved case (a regression JSON or a fuzz reproduction)")
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return asyncio.run(_replay(args) if args.replay else _fuzz(args))


if __name__ == "__main__":
    sys.exit(main())
