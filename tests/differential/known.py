"""Disagreements already reported in /work/wt/notes/differential-findings.md, by finding.

``FINDINGS``: why each regression case (``regressions/F<n>.json``) fails on which runtime today. The
engine helper removes an entry once the engine is fixed (the strict xfail then fails, as a reminder).
``SEED_FINDINGS``: seeds of the fixed in-process set that hit one of them.
"""

from __future__ import annotations

# finding -> {runtime: reason} for the runtimes on which the regression case fails today
FINDINGS: dict[str, dict[str, str]] = {}

# seed -> the finding it hits: strict xfails of the in-process set, left out of the distributed subsets
SEED_FINDINGS: dict[int, str] = {}
