"""Live progress of a run for the CLI: nodes done, running and waiting, and the time elapsed.

On a terminal the line is redrawn in place with ``rich``; otherwise (a pipe, CI logs) a plain line is
written each time the counts change, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from .protocols import RunState


@dataclass(frozen=True)
class Progress:
    """Counts of a run's node executions at one moment."""

    done: int = 0
    running: int = 0
    waiting: int = 0
    status: str = "running"

    def line(self, elapsed: float) -> str:
        """One human line, e.g. ``running: 3 done, 1 running, 2 waiting (1.2 s)``."""
        return f"{self.status}: {self.done} done, {self.running} running, {self.waiting} waiting ({elapsed:.1f} s)"


def progress_of(state: RunState | None, status: str) -> Progress:
    """Counts from a stored run: committed records are done, awaiting ones wait, routed-to nodes run."""
    if state is None:
        return Progress(status=status)
    records = [r for r in state.records.values() if r.status != "external"]
    done = sum(1 for r in records if r.status in ("completed", "failed"))
    awaiting = sum(1 for r in records if r.status == "awaiting")
    keys = {r.key for r in records}
    # A taken route to a node with no record yet is a job queued or executing.
    pending = {f"{rec.iteration + (1 if route.kind == 'back' else 0)}:{route.target}"
               for rec in records for route in rec.routes if route.taken} - keys
    return Progress(done=done, running=len(pending), waiting=awaiting, status=status)


class ProgressBus:
    """An event bus (in-process runs) that counts node starts and ends as they happen."""

    def __init__(self, display: ProgressDisplay, inner: Any = None) -> None:
        self.display = display
        self.inner = inner
        self.enqueued = self.started = self.ended = self.awaiting = 0

    async def emit(self, event: dict[str, Any]) -> None:
        """Count the event and redraw; pass it on to the inner bus."""
        kind = event.get("type")
        if kind == "job:enqueued":
            self.enqueued += 1
        elif kind == "node:start":
            self.started += 1
        elif kind in ("node:finish", "node:error"):
            self.ended += 1
        elif kind == "workflow:awaiting":
            self.awaiting += 1
        running = max(0, self.started - self.ended)
        self.display.update(Progress(done=self.ended, running=running,
                                     waiting=max(0, self.enqueued - self.started) + self.awaiting))
        if self.inner is not None:
            await self.inner.emit(event)


class ProgressDisplay:
    """Shows Progress on a stream: rich's live line on a TTY, plain lines on change otherwise."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.started = time.monotonic()
        self._last: Progress | None = None
        self._rich: Any = None

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._rich = Live("", console=Console(file=self.stream), refresh_per_second=8, transient=False)
            self._rich.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.__exit__(exc_type, exc, tb)

    def update(self, progress: Progress) -> None:
        """Show the new counts (plain output only when they changed)."""
        elapsed = time.monotonic() - self.started
        if self._rich is not None:
            self._rich.update(progress.line(elapsed))
        elif progress != self._last:
            print(progress.line(elapsed), file=self.stream, flush=True)
        self._last = progress
