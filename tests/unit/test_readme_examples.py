"""Every Python and JSON example in README.md runs: a README example that breaks fails the suite.

Python blocks are executed (each in a fresh namespace, from the repository root). JSON blocks are loaded:
a blueprint (it has ``nodes``) is linted and run in process with the registries the Python blocks define;
the built-in nodes block, several node definitions with ``//`` notes between them, is split into its
objects, each validated as a node and its built-in checked.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from flowcraft_core import FlowRuntime, WorkflowBlueprint, lint_blueprint
from flowcraft_core.builtins.names import BUILTIN_NODE_TYPES
from flowcraft_core.models import NodeDefinition

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.M | re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
JSON = [code for lang, code in BLOCKS if lang == "json"]


def _json_values(text: str) -> list[Any]:
    """The JSON values in a block, allowing `//` note lines and commas between values."""
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    decoder, values, index = json.JSONDecoder(), [], 0
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text):
            return values
        value, index = decoder.raw_decode(text, index)
        values.append(value)


def _run_block(code: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.chdir(ROOT)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own examples
    return namespace


def test_the_readme_has_examples() -> None:
    assert len(PYTHON) >= 3 and len(JSON) >= 2


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_example_runs(index: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _run_block(PYTHON[index], monkeypatch)
    # The in-process example prints the run's status and result.
    if "runtime.run(" in PYTHON[index]:
        assert capsys.readouterr().out.startswith("completed")


def _registries(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    registry: dict[str, Any] = {}
    for code in PYTHON:
        if "registry = " in code:
            registry.update(_run_block(code, monkeypatch)["registry"])
    return registry


@pytest.mark.parametrize("index", range(len(JSON)))
def test_json_example_loads_and_runs(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    values = _json_values(JSON[index])
    assert values
    for value in values:
        if "nodes" in value:
            blueprint = WorkflowBlueprint.model_validate(value)
            registry = _registries(monkeypatch)
            assert lint_blueprint(blueprint, registry) == []
            runtime = FlowRuntime(registry=registry, blueprints={blueprint.id: blueprint})
            for text in ("short", "a long text " * 20):  # both of the example's routes
                result = asyncio.run(runtime.run(blueprint.id, {"text": text}))
                assert result.status == "completed", (text, result.errors)
                assert "_outputs.done" in result.context  # the join at the end ran
        else:
            node = NodeDefinition.model_validate(value)
            assert node.uses in BUILTIN_NODE_TYPES, node.uses
