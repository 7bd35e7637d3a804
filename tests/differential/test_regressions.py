"""Every disagreement the differential harness found, as a fixed case (tests/differential/regressions).

Each case runs on the reference, the in-process runtime and the distributed runtime (two worker
processes, no faults); a case failing because of a known engine bug is a strict xfail naming its finding
(see known.py and /work/wt/notes/differential-findings.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from flowcraft_dev.emulators import Emulators
from tests.differential.distributed import DistributedRig, Faults
from tests.differential.harness import check_distributed, check_inprocess, load_case
from tests.differential.known import FINDINGS

CASES = sorted((Path(__file__).parent / "regressions").glob("F*.json"), key=lambda p: int(p.stem[1:]))


def _params(runtime: str) -> list[object]:
    params: list[object] = []
    for path in CASES:
        reason = FINDINGS.get(path.stem, {}).get(runtime)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", _params("inprocess"))
async def test_regression_in_process(path: Path) -> None:
    verdict = await check_inprocess(load_case(path))
    assert not verdict.problems, verdict.report()


@pytest.mark.parametrize("path", _params("distributed"))
async def test_regression_distributed(path: Path, emulators: Emulators) -> None:
    rig = DistributedRig(emulators.env(), Path(tempfile.mkdtemp(prefix="diff-")))
    try:
        await rig.start()
        verdict = await check_distributed(load_case(path), rig, Faults(), inprocess=False)
    finally:
        await rig.close()
    assert not verdict.problems, verdict.report()
