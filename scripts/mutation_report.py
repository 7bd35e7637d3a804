"""Print the mutation score of the last ``make mutate`` run and its surviving mutants.

    .venv/bin/python scripts/mutation_report.py [--diffs]

Reads mutmut's per-file results (``mutants/**/*.py.meta``). The score counts only the mutants that were
checked in the run (a subset run leaves the others "not checked"): killed (or timed out) over checked,
where a mutant no selected test reaches counts against the score ("no tests"). ``--diffs`` prints each
survivor's diff (``mutmut show``) too. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"

# mutmut's exit codes (mutmut/stats.py), kept here so the report does not import mutmut's internals.
KILLED = {1, 3}
TIMEOUT = {36, 24, -24, 152, 255}
NO_TESTS = {5, 33}
SKIPPED = {34, 37}


def classify(code: int | None) -> str:
    """mutmut's name for a mutant's exit code."""
    if code is None:
        return "not checked"
    if code in KILLED:
        return "killed"
    if code == 0:
        return "survived"
    if code in TIMEOUT:
        return "timeout"
    if code in NO_TESTS:
        return "no tests"
    if code in SKIPPED:
        return "skipped"
    return "suspicious"


def load() -> dict[str, dict[str, str]]:
    """{source file: {mutant name: status}} from the last run."""
    results: dict[str, dict[str, str]] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        source = str(meta.relative_to(MUTANTS))[: -len(".meta")]
        results[source] = {name: classify(code) for name, code in data.get("exit_code_by_key", {}).items()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mutation score and survivors of the last make mutate")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff (mutmut show)")
    args = parser.parse_args(argv)
    results = load()
    if not results:
        print("no mutation results: run `make mutate` first", file=sys.stderr)
        return 1
    total: Counter[str] = Counter()
    survivors: list[str] = []
    print("| module | checked | killed | survived | no tests | timeout | score |")
    print("|---|---|---|---|---|---|---|")
    for source, statuses in results.items():
        counts = Counter(statuses.values())
        total.update(counts)
        checked = sum(n for status, n in counts.items() if status not in ("not checked", "skipped"))
        if not checked:
            continue
        caught = counts["killed"] + counts["timeout"]
        print(f"| {source} | {checked} | {counts['killed']} | {counts['survived']} | {counts['no tests']} | "
              f"{counts['timeout']} | {100 * caught / checked:.1f}% |")
        survivors += [name for name, status in statuses.items() if status in ("survived", "no tests", "suspicious")]
    checked = sum(n for status, n in total.items() if status not in ("not checked", "skipped"))
    caught = total["killed"] + total["timeout"]
    score = 100 * caught / checked if checked else 0.0
    print(f"\nmutation score: {score:.1f}% ({caught} of {checked} checked mutants killed; "
          f"{total['survived']} survived, {total['no tests']} reached by no selected test, "
          f"{total['not checked']} not in this run)")
    print(f"\nsurviving mutants ({len(survivors)}):")
    for name in survivors:
        print(f"  {name}")
        if args.diffs:
            shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT, capture_output=True,
                                   text=True, check=False)
            print("    " + shown.stdout.strip().replace("\n", "\n    "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
