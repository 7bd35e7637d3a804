"""Packaging: pyproject declares what requirements.txt installs, and `pip install .` gives a working command."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "-r"))]


def test_pyproject_dependencies_are_requirements_txt() -> None:
    assert PYPROJECT["project"]["dependencies"] == _requirements("requirements.txt")


def test_dev_only_tools_are_not_runtime_dependencies() -> None:
    runtime = " ".join(_requirements("requirements.txt"))
    for dev_only in ("croniter", "pytest", "checkov", "opentelemetry-sdk"):
        assert dev_only not in runtime.replace("opentelemetry-api", ""), dev_only
    assert any(r.startswith("croniter") for r in _requirements("requirements-dev.txt"))


def test_console_script_build_backend_and_packages() -> None:
    assert PYPROJECT["project"]["scripts"] == {"flowcraft": "flowcraft_core.cli:main"}
    assert PYPROJECT["build-system"]["build-backend"] == "setuptools.build_meta"
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "flowcraft_functions*" in include and not any(p.startswith("flowcraft_dev") for p in include)


def test_the_engine_never_imports_azure_functions() -> None:
    offenders = []
    for path in (ROOT / "flowcraft_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("azure.functions")]
    assert offenders == []


@pytest.mark.slow
def test_pip_install_in_a_fresh_venv_gives_a_working_flowcraft_command(tmp_path: Path) -> None:
    # A copy of what the wheel is built from, so that the build leaves nothing in the work tree.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("flowcraft_core", "flowcraft_functions", "workflows", "flowcraft_dev"):
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python, flowcraft = venv / "bin" / "python", venv / "bin" / "flowcraft"
    # Plain `pip install .` (dependencies included) from the package index pip is configured with.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(source)], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-4000:]
    shown = subprocess.run([str(flowcraft), "--help"], capture_output=True, text=True, timeout=120, env=env,
                           cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-4000:]
    assert shown.stdout.startswith("usage: flowcraft ") and "worker" in shown.stdout
    # The installed packages work outside the work tree; the dev-only package was left out of the wheel.
    probe = ("import flowcraft_core, flowcraft_functions, workflows, importlib.util; "
             "assert workflows.blueprints, 'no sample blueprints'; "
             "assert importlib.util.find_spec('flowcraft_dev') is None, 'flowcraft_dev was installed'; "
             "print(flowcraft_core.__file__)")
    probed = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, env=env,
                            cwd=tmp_path)
    assert probed.returncode == 0, probed.stderr[-4000:]
    assert str(venv) in probed.stdout
    validated = subprocess.run([str(flowcraft), "validate", str(ROOT / "workflows" / "blueprints")],
                               capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr
