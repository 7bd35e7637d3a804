"""Disagreements already reported in /work/wt/notes/differential-findings.md, by finding.

``FINDINGS``: why each regression case (``regressions/F<n>.json``) fails on which runtime today. The
engine helper removes an entry once the engine is fixed (the strict xfail then fails, as a reminder).
``SEED_FINDINGS``: seeds of the fixed in-process set that hit one of them.
"""

from __future__ import annotations

# finding -> {runtime: reason} for the runtimes on which the regression case fails today
FINDINGS: dict[str, dict[str, str]] = {
    "F1": {"inprocess": "F1: a loop as the last construct never completes (stalled)",
           "distributed": "F1: a loop as the last construct never completes (stalled)"},
    "F2": {"inprocess": "F2: any-join with a slow sibling completes early and loses the sibling",
           "distributed": "F2: any-join with a slow sibling completes early and loses the sibling"},
    "F3": {"inprocess": "F3: nested loops write the final status after the inner loop's first exit",
           "distributed": "F3: nested loops write the final status after the inner loop's first exit"},
    "F4": {"inprocess": "F4: a wait beside a fired any-join: after resume the run never completes",
           "distributed": "F4: a wait beside a fired any-join: after resume the run never completes"},
    "F5": {"inprocess": "F5: a sibling's retry and fallback run after the run completed",
           "distributed": "F5: a sibling's retry and fallback run after the run completed"},
    "F6": {"inprocess": "F6: a loop whose body branch is not taken stalls the run",
           "distributed": "F6: a loop whose body branch is not taken stalls the run"},
    "F7": {"inprocess": "F7: nested loops + sleep: early final status, the rest of the run lost",
           "distributed": "F7: nested loops + sleep: early final status, result misses later outputs"},
    "F11": {"inprocess": "F11: any-join whose slow sibling fails: the run reports completed",
            "distributed": "F11: any-join whose slow sibling fails: completed, the sibling runs after the end"},
}

# seed -> the finding it hits: strict xfails of the in-process set, left out of the distributed subsets
SEED_FINDINGS: dict[int, str] = {
    21: "F6", 35: "F2", 43: "F4", 48: "F2", 53: "F2", 55: "F2", 57: "F2", 66: "F6", 82: "F2", 88: "F2",
    106: "F2", 117: "F2",
    # seeds of the distributed subsets (left out there)
    1002: "F3", 2001: "F2", 2008: "F7",
}
