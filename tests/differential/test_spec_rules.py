"""SPEC's rules one by one (tests/reference/spec_cases.py): the in-process runtime must agree with the
reference on each. Where the engine differs today, the case is a strict xfail naming the finding."""

from __future__ import annotations

import pytest

from tests.differential.harness import check_inprocess
from tests.reference.spec_cases import SPEC_CASES

# SPEC case -> the finding that makes the engine differ today (/work/wt/notes/differential-findings.md)
KNOWN: dict[str, str] = {
}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[n])] if n in KNOWN else [])
    for n in SPEC_CASES])
async def test_in_process_follows_the_spec_rule(name: str) -> None:
    verdict = await check_inprocess(SPEC_CASES[name])
    assert not verdict.problems, verdict.report()
