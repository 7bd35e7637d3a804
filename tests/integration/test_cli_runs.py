"""`python -m flowcraft_core runs ...` and the progress of `start --wait`, against the emulators."""

from __future__ import annotations

import json

import pytest
from harness import Distributed
from helpers import AzureTestEnv
from pydantic import SecretStr

import workflows
from flowcraft_core.cli import _cmd_runs, _wait_with_progress, build_parser


async def test_runs_list_show_history_and_purge(distributed: Distributed, azure_env: AzureTestEnv,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    services = await distributed.build(workflows.registry, workflows.blueprints)
    for name, value in distributed.settings().model_dump(by_alias=True).items():
        if isinstance(value, SecretStr):  # secrets dump redacted; the CLI needs the real values
            value = value.get_secret_value()
        if value not in (None, ""):
            monkeypatch.setenv(name, str(value).lower() if isinstance(value, bool) else str(value))
    run_id = await services.adapter.start_run("400", {"userId": "u", "userPost": "Hi a@b.com"})
    status = await _wait_with_progress(services, run_id, 30)
    assert status["status"] == "completed"
    progress = capsys.readouterr().err.strip().splitlines()

    async def run(*argv: str) -> tuple[int, dict[str, object]]:
        code = await _cmd_runs(build_parser().parse_args(["runs", *argv]))
        return code, json.loads(capsys.readouterr().out)

    code, shown = await run("show", run_id)
    assert code == 0 and shown["status"] == "completed"
    # Child runs (the moderation's subflow) are runs of their own and are listed too, naming their parent.
    children = {c["runId"] for c in shown.get("children") or []}  # type: ignore[union-attr,index]
    code, listed = await run("list", "--status", "completed", "--top", "5")
    assert code == 0 and {r["runId"] for r in listed["runs"]} == {run_id, *children}  # type: ignore[index,union-attr]
    code, history = await run("history", run_id)
    executed = len(history["nodes"])  # type: ignore[arg-type]
    assert code == 0 and executed >= 3
    # Plain lines off a TTY, one per change, the last one the final counts.
    assert progress[-1].startswith(f"completed: {executed} done, 0 running, 0 waiting")
    assert len(progress) == len(set(progress))
    code, purged = await run("purge", run_id)
    assert code == 0 and purged["purged"] is True
    code, missing = await run("show", run_id)
    assert code == 1 and missing["error"] == "run_not_found"
