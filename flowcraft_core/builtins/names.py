"""Names of the node types every runtime provides without registration."""

from __future__ import annotations

SUBFLOW = "subflow"
SLEEP = "sleep"
WAIT = "wait"
WEBHOOK = "webhook"
BATCH_SCATTER = "batch-scatter"
BATCH_GATHER = "batch-gather"
LOOP_CONTROLLER = "loop-controller"

BUILTIN_NODE_TYPES: frozenset[str] = frozenset(
    {SUBFLOW, SLEEP, WAIT, WEBHOOK, BATCH_SCATTER, BATCH_GATHER, LOOP_CONTROLLER}
)
