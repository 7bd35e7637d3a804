"""Events the engine emits, the bus they go to, and node middleware."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .nodes import NodeContext, NodeResult

logger = logging.getLogger("flowcraft.events")

EVENT_TYPES = frozenset({
    "workflow:start", "workflow:finish", "workflow:awaiting", "workflow:cancelled",
    "node:start", "node:finish", "node:error", "node:retry", "node:fallback", "node:skipped",
    "edge:evaluate", "context:change", "job:enqueued", "job:processed", "job:failed",
    "batch:start", "batch:finish",
})


class EventBus(Protocol):
    """Receives every engine event as ``{"type": ..., "payload": {...}}``."""

    async def emit(self, event: dict[str, Any]) -> None:
        """Handle one event; must not raise."""


class LoggingEventBus:
    """Logs events at DEBUG (errors at WARNING): the default bus."""

    async def emit(self, event: dict[str, Any]) -> None:
        """Log the event."""
        level = logging.WARNING if event["type"] in ("node:error", "job:failed") else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(level, "%s %s", event["type"], _brief(event.get("payload", {})))


class CollectingEventBus:
    """Keeps every event in a list: for tests and for callers that want a trace."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def emit(self, event: dict[str, Any]) -> None:
        """Append the event."""
        self.events.append(event)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        """Events of one type, in order."""
        return [e for e in self.events if e["type"] == event_type]


class FanoutEventBus:
    """Sends each event to several buses; a failing bus is logged and skipped."""

    def __init__(self, *buses: EventBus) -> None:
        self.buses = list(buses)

    async def emit(self, event: dict[str, Any]) -> None:
        """Send to every bus."""
        for bus in self.buses:
            try:
                await bus.emit(event)
            except Exception:  # an observer must never break a run
                logger.exception("event bus %r failed on %s", bus, event.get("type"))


def _brief(payload: dict[str, Any]) -> str:
    keys = ("runId", "nodeId", "attempt", "status", "error", "action", "target")
    return " ".join(f"{k}={payload[k]!r}" for k in keys if k in payload)


NextCall = Callable[[], Awaitable["NodeResult"]]


class Middleware:
    """Hooks around every node execution; override what you need (all are optional)."""

    async def before_node(self, ctx: NodeContext) -> None:
        """Called before the node runs."""

    async def after_node(self, ctx: NodeContext, result: NodeResult | None,
                         error: BaseException | None = None) -> None:
        """Called after the node ran: with its result, or (result None) with the error it failed with."""

    async def around_node(self, ctx: NodeContext, call_next: NextCall) -> NodeResult:
        """Wraps the node's execution (with its retries); must call call_next once."""
        return await call_next()
