"""Blueprints of the hostile-JSON tests (FLOWCRAFT_WORKFLOWS=rel_hostile_workflows for function_app).

``plain`` echoes its context; ``hook`` and ``approve`` wait for a webhook call or a resume; ``bad`` has a
node that produces whatever hostile value the run's context names (``kind``) as its output, as a
context write, or through an edge transform, so the JSON policy's checks before commit can be seen.
"""

from __future__ import annotations

import math
from typing import Any

from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult


def deep(levels: int) -> Any:
    """A list nested ``levels`` deep around a number."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


HOSTILE_VALUES: dict[str, Any] = {
    "deep": deep(300),
    "surrogate": "bad \ud800 text",
    "surrogate-key": {"\udfff": 1},
    "infinity": math.inf,
    "nan": math.nan,
    "set": {1, 2},
    "bytes": b"raw",
    "huge-int": 10**40,
}


async def echo(ctx: NodeContext) -> NodeResult:
    """Output the node's input (or params.value)."""
    return NodeResult(output=ctx.params.get("value", ctx.input))


async def hostile_output(ctx: NodeContext) -> NodeResult:
    """Return the hostile value named by the context's ``kind`` as the output."""
    return NodeResult(output={"value": HOSTILE_VALUES[str(await ctx.context.get("kind"))]})


async def hostile_write(ctx: NodeContext) -> NodeResult:
    """Write the hostile value named by ``kind`` to the context (the write itself is refused)."""
    await ctx.context.set("written", HOSTILE_VALUES[str(await ctx.context.get("kind"))])
    return NodeResult(output="wrote")


async def big_number(ctx: NodeContext) -> NodeResult:
    """A finite output whose edge transform overflows to infinity."""
    return NodeResult(output={"x": 1e308})


async def hostile_error(ctx: NodeContext) -> NodeResult:
    """Fail with an error message holding a lone surrogate (it ends up in the run's reason)."""
    raise RuntimeError("refused: \udc80 is not text")


def _bp(bp_id: str, nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> WorkflowBlueprint:
    return WorkflowBlueprint.model_validate({"id": bp_id, "nodes": nodes, "edges": edges})


_BLUEPRINTS = [
    _bp("plain", [{"id": "a", "uses": "echo", "params": {"value": "a"}}, {"id": "b", "uses": "echo"}],
        [{"source": "a", "target": "b"}]),
    _bp("hook", [{"id": "start", "uses": "echo", "params": {"value": 1}}, {"id": "payment", "uses": "webhook"},
                 {"id": "after", "uses": "echo"}],
        [{"source": "start", "target": "payment"}, {"source": "payment", "target": "after"}]),
    _bp("approve", [{"id": "draft", "uses": "echo", "params": {"value": 1}}, {"id": "approval", "uses": "wait"},
                    {"id": "after", "uses": "echo"}],
        [{"source": "draft", "target": "approval"}, {"source": "approval", "target": "after"}]),
    _bp("bad-output", [{"id": "bad", "uses": "hostile-output", "config": {"maxRetries": 1}},
                       {"id": "never", "uses": "echo"}], [{"source": "bad", "target": "never"}]),
    _bp("bad-write", [{"id": "bad", "uses": "hostile-write", "config": {"maxRetries": 1}},
                      {"id": "never", "uses": "echo"}], [{"source": "bad", "target": "never"}]),
    _bp("bad-error", [{"id": "bad", "uses": "hostile-error", "config": {"maxRetries": 1}}], []),
    _bp("bad-transform", [{"id": "big", "uses": "big-number"}, {"id": "never", "uses": "echo"}],
        [{"source": "big", "target": "never", "transform": "result.output.x * 10"}]),
]

registry: dict[str, Any] = {"echo": echo, "hostile-output": hostile_output, "hostile-write": hostile_write,
                            "big-number": big_number, "hostile-error": hostile_error}
blueprints: dict[str, WorkflowBlueprint] = {bp.id: bp for bp in _BLUEPRINTS}
