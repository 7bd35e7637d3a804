"""Execution of one node: input resolution, attempts with timeout and delay, fallback, middleware."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .context import INPUTS_PREFIX, NodeContextView, input_key, output_key
from .errors import NodeExecutionError, NodeTimeoutError, WorkflowCancelled
from .events import EventBus, Middleware
from .graph import CompiledGraph
from .json_policy import violation
from .models import NodeDefinition
from .nodes import BaseNode, NodeContext, NodeResult, call_maybe_async, is_node_class


def _lookup(view: NodeContextView, key: str) -> Any:
    # Flowcraft's rule: keys starting with "_" are literal context keys; any other key names a node's
    # output when that node has one, and a plain context key otherwise.
    if key.startswith("_"):
        return view.get_sync(key)
    out = output_key(key)
    if view.has_sync(out):
        return view.get_sync(out)
    return view.get_sync(key)


def resolve_input(node: NodeDefinition, graph: CompiledGraph | None, view: NodeContextView,
                  via: str | None = None, *, arrived: Callable[[str], bool] | None = None) -> Any:
    """The value a node receives as ``ctx.input``.

    ``arrived(pred)`` tells whether a predecessor of a join ran for this execution; without it every
    predecessor with a stored output counts (in a loop, an output of an earlier iteration would).
    """
    if isinstance(node.inputs, str):
        return _lookup(view, node.inputs)
    if isinstance(node.inputs, Mapping):
        return {name: _lookup(view, key) for name, key in node.inputs.items()}
    transformed = input_key(node.id)
    if view.has_sync(transformed):
        return view.get_sync(transformed)
    if via is not None:
        return view.get_sync(output_key(via))
    preds = graph.forward_predecessors.get(node.id, []) if graph else []
    if len(preds) == 1:
        return view.get_sync(output_key(preds[0]))
    if len(preds) > 1:
        # A join sees the predecessors whose edge delivered into it; with exactly one (an any-join, or an
        # all-join whose other edges were not taken) it gets that output itself, as in Flowcraft.
        delivered = [p for p in preds if view.has_sync(output_key(p)) and (arrived is None or arrived(p))]
        if len(delivered) == 1:
            return view.get_sync(output_key(delivered[0]))
        return {p: view.get_sync(output_key(p)) for p in delivered}
    return None


@dataclass
class ExecutionOutcome:
    """What running a node produced: a result, or the error that ended its last attempt."""

    result: NodeResult | None
    error: NodeExecutionError | None
    attempts: int
    used_fallback: bool = False


class NodeExecutor:
    """Runs one node with its config: attempts, per-attempt timeout, delay between, fallback."""

    def __init__(self, *, registry: Mapping[str, Any], builtins: Mapping[str, Any], event_bus: EventBus,
                 middleware: Sequence[Middleware] = (),
                 stop_check: Callable[[str], Awaitable[str | None]] | None = None) -> None:
        self.registry = registry
        self.builtins = builtins
        self.events = event_bus
        self.middleware = list(middleware)
        # Asked (with the run id) before a fallback starts: the reason the run stopped, or None. The
        # signal alone only knows what this process saw; a fallback is rare enough to ask the store.
        self.stop_check = stop_check

    def implementation(self, uses: str) -> Any:
        """The implementation registered under a ``uses`` key (user registry first, then built-ins)."""
        if uses in self.registry:
            return self.registry[uses]
        if uses in self.builtins:
            return self.builtins[uses]
        raise KeyError(uses)

    async def execute(self, node: NodeDefinition, ctx: NodeContext, *,
                      fallback_node: NodeDefinition | None = None) -> ExecutionOutcome:
        """Run the node and return its outcome; never raises for node failures.

        ``fallback_node`` is the blueprint node that ``config.fallback`` names, if it names one: its
        implementation and params run in the failed node's place (otherwise the value is a ``uses`` key).
        """
        payload = {"runId": ctx.run_id, "nodeId": node.id, "uses": node.uses, "blueprintId": ctx.blueprint_id}
        await self.events.emit({"type": "node:start", "payload": payload})
        try:
            impl = self.implementation(node.uses)
        except KeyError:
            err = NodeExecutionError(node.id, f"no implementation registered for uses={node.uses!r}", 1)
            await self.events.emit({"type": "node:error", "payload": {**payload, **err.to_dict()}})
            return ExecutionOutcome(None, err, 1)

        attempts_box = [0]

        async def call() -> NodeResult:
            for mw in self.middleware:
                await mw.before_node(ctx)
            try:
                result = await self._attempts(node, impl, ctx, attempts_box)
            except _Failed as failed:
                # As in Flowcraft, after-hooks also see a node that failed, with its error.
                for mw in self.middleware:
                    if accepts_error(mw):
                        await mw.after_node(ctx, None, failed.error)
                raise
            for mw in self.middleware:
                await mw.after_node(ctx, result)
            return result

        chained = call
        for mw in reversed(self.middleware):
            chained = _wrap(mw, ctx, chained)
        try:
            result = await chained()
        except WorkflowCancelled as exc:
            err = NodeExecutionError(node.id, f"cancelled: {exc}", max(attempts_box[0], 1))
            return ExecutionOutcome(None, err, err.attempt)
        except _Failed as failed:
            if not ctx.signal.cancelled and self.stop_check is not None:
                stopped = await self.stop_check(ctx.run_id)
                if stopped is not None:
                    ctx.signal.cancel(stopped)
            if ctx.signal.cancelled:
                # The run ended (another node failed it, or it was cancelled) while this node failed:
                # a run that has ended starts no fallback.
                err = NodeExecutionError(node.id, f"cancelled: {ctx.signal.reason or 'run stopped'}",
                                         attempts_box[0])
                return ExecutionOutcome(None, err, err.attempt)
            fallback = await self._fallback(node, impl, ctx, failed, payload, fallback_node)
            if fallback is None:
                message = _describe(failed.error)
                if failed.fallback_error is not None:
                    message += f" (and its fallback failed: {failed.fallback_error})"
                err = NodeExecutionError(node.id, message, attempts_box[0])
                await self.events.emit({"type": "node:error", "payload": {**payload, **err.to_dict()}})
                return ExecutionOutcome(None, err, attempts_box[0])
            result, used_fallback = fallback, True
        except Exception as exc:  # middleware or result coercion failed: report, never crash the worker
            err = NodeExecutionError(node.id, _describe(exc), max(attempts_box[0], 1))
            await self.events.emit({"type": "node:error", "payload": {**payload, **err.to_dict()}})
            return ExecutionOutcome(None, err, err.attempt)
        else:
            used_fallback = False
        problem = _json_problem(result)
        if problem is not None:
            # Checked here, not when the record is stored, so that the error names the node and the
            # in-process runtime fails exactly where Cosmos DB would refuse the value.
            err = NodeExecutionError(node.id, problem, max(attempts_box[0], 1))
            await self.events.emit({"type": "node:error", "payload": {**payload, **err.to_dict()}})
            return ExecutionOutcome(None, err, err.attempt)
        finish = {**payload, "attempts": attempts_box[0], "action": result.action}
        if used_fallback:
            finish["fallback"] = True
        await self.events.emit({"type": "node:finish", "payload": finish})
        return ExecutionOutcome(result, None, attempts_box[0], used_fallback=used_fallback)

    async def _attempts(self, node: NodeDefinition, impl: Any, ctx: NodeContext, box: list[int]) -> NodeResult:
        config = node.config
        instance: BaseNode | None = impl(node.params, node.id) if is_node_class(impl) else None
        prep: Any = None
        if instance is not None:
            prep = await instance.prep(ctx)
        last: BaseException | None = None
        for attempt in range(1, config.max_retries + 1):
            box[0] = attempt
            ctx.attempt = attempt
            ctx.signal.raise_if_cancelled()
            try:
                result = await self._one_attempt(impl, instance, prep, ctx, config.timeout)
                if result.error:
                    raise RuntimeError(result.error)
                return result
            except WorkflowCancelled:
                raise
            except Exception as exc:
                last = exc
                assert isinstance(ctx.context, NodeContextView)
                ctx.context.discard_changes()
                if attempt < config.max_retries:
                    await self.events.emit({"type": "node:retry", "payload": {
                        "runId": ctx.run_id, "nodeId": node.id, "attempt": attempt, "error": _describe(exc)}})
                    if config.retry_delay:
                        # Wait out the delay, but wake up at once when the run is cancelled.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(ctx.signal.wait(), config.retry_delay / 1000)
        assert last is not None
        raise _Failed(last, instance)

    async def _one_attempt(self, impl: Any, instance: BaseNode | None, prep: Any, ctx: NodeContext,
                           timeout_ms: float | None) -> NodeResult:
        async def run() -> NodeResult:
            if instance is not None:
                raw = await instance.exec(prep, ctx)
                return NodeResult.coerce(await instance.post(raw, ctx))
            return NodeResult.coerce(await call_maybe_async(impl, ctx))

        if timeout_ms is None:
            return await run()
        try:
            return await asyncio.wait_for(run(), timeout_ms / 1000)
        except TimeoutError:
            raise NodeTimeoutError(f"timed out after {timeout_ms:g} ms") from None

    async def _fallback(self, node: NodeDefinition, impl: Any, ctx: NodeContext, failed: _Failed,
                        payload: dict[str, Any], fallback_node: NodeDefinition | None) -> NodeResult | None:
        error = failed.error
        fallback_uses = node.config.fallback
        fallback_params = node.params
        if fallback_node is not None:
            fallback_uses, fallback_params = fallback_node.uses, fallback_node.params
            ctx.params = copy.deepcopy(fallback_params)
        if fallback_uses is None and not (is_node_class(impl) and impl.fallback is not BaseNode.fallback):
            return None
        await self.events.emit({"type": "node:fallback", "payload": {
            **payload, "fallback": node.config.fallback or f"{impl.__name__}.fallback", "error": _describe(error)}})
        assert isinstance(ctx.context, NodeContextView)
        ctx.context.discard_changes()
        try:
            if fallback_uses is not None:
                fb = self.implementation(fallback_uses)
                if is_node_class(fb):
                    inst = fb(fallback_params, node.id)
                    raw = await inst.exec(await inst.prep(ctx), ctx)
                    result = NodeResult.coerce(await inst.post(raw, ctx))
                else:
                    result = NodeResult.coerce(await call_maybe_async(fb, ctx))
            else:
                # A class node's own fallback runs on the instance prep and exec used (as in
                # Flowcraft), so it can rely on what prep stored on self.
                inst = failed.instance if failed.instance is not None else impl(node.params, node.id)
                result = NodeResult.coerce(await inst.post(await inst.fallback(error, ctx), ctx))
            if result.error:
                raise RuntimeError(result.error)
            return result
        except Exception as exc:
            # Reported once, with the node's own error, by the caller's node:error event.
            ctx.context.discard_changes()
            failed.fallback_error = _describe(exc)
            return None


class _Failed(Exception):
    def __init__(self, error: BaseException, instance: BaseNode | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.instance = instance
        self.fallback_error: str | None = None


def _json_problem(result: NodeResult) -> str | None:
    """Why a result's output or dynamic nodes break the JSON policy, or None when they conform."""
    for what, value in (("output", result.output), ("dynamic_nodes", result.dynamic_nodes)):
        problem = violation(value)
        if problem is not None:
            return f"the node's {what} is not JSON-serializable: {problem}"
    return None


def accepts_error(mw: Middleware) -> bool:
    """True when the middleware's after_node takes the error as a third argument."""
    return _takes_error(type(mw).after_node)


@functools.lru_cache(maxsize=256)
def _takes_error(method: Any) -> bool:
    # Middleware written before after_node received errors takes (ctx, result) only; it keeps
    # being called for successes and is not called for failures rather than crashing on them.
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _wrap(mw: Middleware, ctx: NodeContext, nxt: Any) -> Any:
    async def wrapped() -> NodeResult:
        return await mw.around_node(ctx, nxt)

    return wrapped


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def now() -> float:
    """Wall-clock seconds (one place to patch in tests)."""
    return time.time()


__all__ = ["INPUTS_PREFIX", "ExecutionOutcome", "NodeExecutor", "resolve_input"]
