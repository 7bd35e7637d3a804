"""Deterministic stand-in node implementations shared by the reference, in-process and distributed runs.

Each behaviour is a pure function of (uses, node id, params, input, attempt, context reads), so the
reference interpreter (which calls ``behave`` directly) and both engine runtimes (which call the async
wrappers in ``REGISTRY``) must compute the same outputs. Sleeping is the one thing the reference does
not do: it is timing, and the reference defines timing-independent outcomes (a ``sleepMs`` of at least
the node's ``timeout`` is a timed-out attempt there).

Kinds (``uses``):
- ``d-step``: the general node. params: ``v`` (int), ``action`` (returned as the routing action),
  ``score`` (for edge conditions), ``set`` (writes ``k_<nodeId>``), ``read`` (context keys it reports),
  ``failTimes`` (fails that many attempts first), ``alwaysFail``, ``sleepMs``.
- ``d-join``: a join; its output ignores its input (an ``any`` join's input depends on arrival order).
- ``d-count``: loop entry: increments ``params.key`` and resets ``params.reset`` keys to 0.
- ``d-fallback``: the fallback implementation (a ``uses`` key in ``config.fallback``).
- ``d-item``: a batch worker: squares its item.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flowcraft_core.nodes import NodeContext, NodeResult

KINDS = ("d-step", "d-join", "d-count", "d-fallback", "d-item")


class StandInFailure(Exception):
    """The failure a stand-in raises on purpose (an attempt of a flaky or always-failing node)."""


@dataclass
class Behaviour:
    """What one attempt of a stand-in produced."""

    output: Any
    action: str | None = None
    sets: dict[str, Any] = field(default_factory=dict)


# Keys the engine keeps for itself (loop counters, batch items, transform inputs, batch bookkeeping):
# SPEC does not define them, so they are neither compared nor fingerprinted (a subflow's output is the
# child's whole context, bookkeeping included).
_INTERNAL_PREFIXES = ("_loop.", "_batch.", "_inputs.", "_ref.")
_INTERNAL_SUFFIXES = ("_allWorkerIds", "_hasMore")


def normalize(value: Any) -> Any:
    """A context (or a value holding one) without bookkeeping keys."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()
                if not (k.startswith(_INTERNAL_PREFIXES) or k.endswith(_INTERNAL_SUFFIXES))}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        # JSON has one number type: 1.0 read back from Cosmos DB (whose stand-in, like JavaScript, writes
        # it as 1) is the same value, and the harness compares contexts with == (1 == 1.0) already (F14).
        return int(value)
    return value


def digest(value: Any) -> str:
    """A short, process-independent fingerprint of a JSON value (bookkeeping keys left out)."""
    body = json.dumps(normalize(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()[:8]


def behave(uses: str, node_id: str, params: dict[str, Any], node_input: Any, attempt: int,
           get: Callable[[str], Any]) -> Behaviour:
    """One attempt of a stand-in; raises StandInFailure when the attempt fails."""
    if uses == "d-step":
        if params.get("alwaysFail") or attempt <= int(params.get("failTimes", 0)):
            raise StandInFailure(f"{node_id} fails attempt {attempt} on purpose")
        out: dict[str, Any] = {"n": node_id, "in": digest(node_input), "v": params.get("v", 0)}
        if "failTimes" in params:
            out["attempt"] = attempt
        if "score" in params:
            out["score"] = params["score"]
        if params.get("read"):
            out["read"] = {key: get(key) for key in params["read"]}
        sets = {f"k_{node_id}": {"by": node_id, "in": out["in"]}} if params.get("set") else {}
        return Behaviour(out, params.get("action"), sets)
    if uses == "d-join":
        return Behaviour({"n": node_id, "v": params.get("v", 0)})
    if uses == "d-count":
        key = str(params["key"])
        count = int(get(key) or 0) + 1
        sets = {key: count, **{str(r): 0 for r in params.get("reset", [])}}
        return Behaviour({"n": node_id, "count": count, "in": digest(node_input)}, None, sets)
    if uses == "d-fallback":
        return Behaviour({"n": node_id, "fallback": True, "in": digest(node_input)})
    if uses == "d-item":
        item = node_input if isinstance(node_input, int) else 0
        return Behaviour({"item": item, "sq": item * item})
    raise KeyError(uses)


def _implementation(uses: str) -> Callable[[NodeContext], Any]:
    async def run(ctx: NodeContext) -> NodeResult:
        params = ctx.params
        sleep_ms = params.get("sleepMs") if uses == "d-step" else None
        if sleep_ms:
            await asyncio.sleep(float(sleep_ms) / 1000)
        attempt = int(getattr(ctx, "attempt", 1) or 1)
        result = behave(uses, ctx.node_id, params, ctx.input, attempt, ctx.context.get_sync)  # type: ignore[attr-defined]
        for key, value in result.sets.items():
            await ctx.context.set(key, value)
        return NodeResult(output=result.output, action=result.action)

    run.__name__ = uses.replace("-", "_")
    return run


# The registry every runtime under test gets (the built-ins come with the engine).
REGISTRY: dict[str, Any] = {uses: _implementation(uses) for uses in KINDS}
