"""Exceptions raised by the engine and its stores."""

from __future__ import annotations

from typing import Any


class FlowcraftError(Exception):
    """Base class of every error this package raises on purpose."""


class BlueprintError(FlowcraftError):
    """A blueprint is malformed or inconsistent; ``problems`` lists every finding with its path."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        detail = "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(f"{message}{detail}")
        self.message = message


class ExpressionError(FlowcraftError):
    """An edge condition or transform is unsafe, too large or failed to evaluate."""


class NodeExecutionError(FlowcraftError):
    """A node failed after all its attempts (and its fallback, if any)."""

    def __init__(self, node_id: str, message: str, attempt: int = 1, *, cause: str | None = None) -> None:
        super().__init__(f"node {node_id!r} failed on attempt {attempt}: {message}")
        self.node_id = node_id
        self.attempt = attempt
        self.reason = message
        self.cause = cause

    def to_dict(self) -> dict[str, Any]:
        """The error as stored in run results and status items."""
        return {"nodeId": self.node_id, "message": self.reason, "attempt": self.attempt}


class NodeTimeoutError(FlowcraftError):
    """One attempt of a node ran past its ``timeout``."""


class WorkflowCancelled(FlowcraftError):
    """Raised inside a node whose run was cancelled, when it checks ``ctx.signal``."""


class UnknownRunError(FlowcraftError):
    """No run with this id exists."""


class RunStateError(FlowcraftError):
    """The run is not in a state that allows the operation (resume a finished run, reuse an id)."""


class InvalidJobError(FlowcraftError):
    """A queue message is not a Flowcraft job, or names something that does not exist."""


class NotAJobError(InvalidJobError):
    """A queue message that does not even decode to a job (not base64, not JSON, wrong shape...)."""
