"""Runs every conformance case through Flowcraft (Node, the npm package) once per test session."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cases import HERE, load_cases, random_cases

REPO_ROOT = HERE.parents[1]


def all_cases() -> list[dict[str, Any]]:
    """The hand-written cases, then the random DAGs."""
    return [*load_cases(), *random_cases()]


@pytest.fixture(scope="session")
def flowcraft_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Flowcraft's observation of every case, from one Node process (start-up is slow)."""
    node = shutil.which("node")
    assert node, "node is not on PATH: the conformance suite runs Flowcraft itself (Node.js 20+)"
    package = REPO_ROOT / "node_modules" / "flowcraft" / "package.json"
    assert package.exists(), "node_modules/flowcraft is missing: run `make deps` (npm ci installs flowcraft@2.10.1)"
    assert json.loads(package.read_text())["version"] == "2.10.1", "the suite is pinned to flowcraft 2.10.1"
    work: Path = tmp_path_factory.mktemp("conformance")
    cases_file, results_file = work / "cases.json", work / "results.json"
    cases_file.write_text(json.dumps(all_cases()))
    done = subprocess.run([node, str(HERE / "driver.mjs"), str(cases_file), str(results_file)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"the Flowcraft driver failed:\n{done.stdout}\n{done.stderr}"
    results: dict[str, Any] = json.loads(results_file.read_text())
    return results
