"""The workflows module of the worker-crash tests (``FLOWCRAFT_WORKFLOWS=crash_workflows``).

A separate worker process loads it by name. ``slow-once`` marks its first start with a file in
``CRASH_MARKER_DIR`` and then runs far longer than the test waits, so the test can kill the worker while
that node is running; a later execution (after the crash) finds the marker and finishes at once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult

MARKER_DIR_ENV = "CRASH_MARKER_DIR"


def marker(run_id: str, node_id: str, what: str) -> Path:
    """The marker file of one node of one run ("started", "resumed")."""
    return Path(os.environ[MARKER_DIR_ENV]) / f"{run_id}.{node_id}.{what}"


async def quick(ctx: NodeContext) -> NodeResult:
    return NodeResult(output={"node": ctx.node_id, "pid": os.getpid()})


async def slow_once(ctx: NodeContext) -> NodeResult:
    started = marker(ctx.run_id, ctx.node_id, "started")
    if started.exists():
        marker(ctx.run_id, ctx.node_id, "resumed").write_text(str(os.getpid()))
        return NodeResult(output={"node": ctx.node_id, "pid": os.getpid(), "after": "restart"})
    started.write_text(str(os.getpid()))
    await asyncio.sleep(120)  # the test kills the worker long before this ends
    return NodeResult(output={"node": ctx.node_id, "pid": os.getpid(), "after": "no crash"})


registry: dict[str, Any] = {"quick": quick, "slow-once": slow_once}

blueprints: dict[str, WorkflowBlueprint] = {
    "crash": WorkflowBlueprint.model_validate({
        "id": "crash",
        "nodes": [{"id": "first", "uses": "quick"}, {"id": "slow", "uses": "slow-once"},
                  {"id": "last", "uses": "quick"}],
        "edges": [{"source": "first", "target": "slow"}, {"source": "slow", "target": "last"}],
    }),
    # the same steps as a child run of a subflow node (the kill lands while the child runs)
    "crash-parent": WorkflowBlueprint.model_validate({
        "id": "crash-parent",
        "nodes": [{"id": "before", "uses": "quick"},
                  {"id": "sub", "uses": "subflow",
                   "params": {"blueprintId": "crash", "outputs": {"childLast": "last"}}},
                  {"id": "after", "uses": "quick"}],
        "edges": [{"source": "before", "target": "sub"}, {"source": "sub", "target": "after"}],
    }),
}
