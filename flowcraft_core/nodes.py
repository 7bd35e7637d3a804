"""What a node implementation sees and returns: NodeContext, NodeResult, BaseNode, the registry."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import WorkflowCancelled

if TYPE_CHECKING:
    from .context import NodeContextView

_RESULT_KEYS = frozenset({"output", "action", "error", "dynamic_nodes", "dynamicNodes"})


class CancelSignal:
    """Tells a running node that its run was cancelled (the Python face of an AbortSignal)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        """True once the run has been cancelled."""
        return self._event.is_set()

    aborted = cancelled

    def cancel(self, reason: str = "cancelled") -> None:
        """Mark the run cancelled and wake whoever waits on the signal."""
        self.reason = reason
        self._event.set()

    async def wait(self) -> None:
        """Wait until the run is cancelled."""
        await self._event.wait()

    def raise_if_cancelled(self) -> None:
        """Raise WorkflowCancelled when the run was cancelled; long nodes call this between steps."""
        if self.cancelled:
            raise WorkflowCancelled(self.reason or "cancelled")


@dataclass
class NodeResult:
    """What a node returns: an output, an action that picks edges, an error, dynamic nodes."""

    output: Any = None
    action: str | None = None
    error: str | None = None
    dynamic_nodes: list[dict[str, Any]] | None = None
    # Engine-private directives set by built-in nodes (sleep until, await external input).
    directives: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Any) -> NodeResult:
        """Accept a NodeResult, a dict with the same keys (camel or snake case), or None."""
        if value is None:
            return cls()
        if isinstance(value, NodeResult):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - _RESULT_KEYS
            if unknown:
                raise TypeError(
                    "a node returned a dict with unexpected keys "
                    f"{sorted(unknown)}; return NodeResult or a dict with output/action/error/dynamic_nodes"
                )
            dyn = value.get("dynamic_nodes", value.get("dynamicNodes"))
            action = value.get("action")
            error = value.get("error")
            return cls(
                output=value.get("output"),
                action=None if action is None else str(action),
                error=None if error is None else str(error),
                dynamic_nodes=list(dyn) if dyn else None,
            )
        raise TypeError(f"a node must return NodeResult, dict or None, not {type(value).__name__}")


@dataclass
class NodeContext:
    """Everything a node can use: the run context, its input and params, injected dependencies."""

    context: NodeContextView
    input: Any
    params: dict[str, Any]
    dependencies: dict[str, Any]
    run_id: str
    node_id: str
    signal: CancelSignal
    attempt: int = 1
    blueprint_id: str = ""
    iteration: int = 0


class BaseNode:
    """A class node: ``prep`` gathers, ``exec`` does the work (retried), ``post`` decides the result."""

    def __init__(self, params: dict[str, Any] | None = None, node_id: str = "") -> None:
        self.params: dict[str, Any] = dict(params or {})
        self.node_id = node_id

    async def prep(self, ctx: NodeContext) -> Any:
        """Gather what exec needs; the default passes the node's input through."""
        return ctx.input

    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        """Do the work; may be retried, so it should not change the context itself."""
        raise NotImplementedError(f"{type(self).__name__}.exec is not implemented")

    async def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        """Turn exec's result into the node's result; the default keeps a result and wraps a value."""
        if isinstance(exec_result, NodeResult):
            return exec_result
        if isinstance(exec_result, Mapping) and exec_result and set(exec_result) <= _RESULT_KEYS:
            return NodeResult.coerce(exec_result)
        return NodeResult(output=exec_result)

    async def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        """Called when every exec attempt failed; the default re-raises."""
        raise error


NodeFunction: TypeAlias = Callable[[NodeContext], "NodeResult | Mapping[str, Any] | Awaitable[Any] | None"]
NodeImplementation: TypeAlias = "NodeFunction | type[BaseNode]"
NodeRegistry: TypeAlias = Mapping[str, Any]


def is_node_class(impl: Any) -> bool:
    """True for a BaseNode subclass (as opposed to a function)."""
    return inspect.isclass(impl) and issubclass(impl, BaseNode)


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async callable; sync ones run in a thread so they cannot block the loop."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result
