"""Fault injection for reliability tests: crash a worker process at a named step of handle_job.

The engine calls ``await self._checkpoint(step, run_id, node_id)`` at each step where a crash leaves
different state behind (see ``CHECKPOINTS``). Nothing is installed by default, and an engine without a
hook pays one attribute check per checkpoint.

A worker process crashes on purpose when started with::

    FLOWCRAFT_FAULT_CRASH_AT=<step>:<n>[:<nodeId>]

meaning "on the n-th time this process reaches <step> (optionally: for node <nodeId>), exit at once
with status 97 (``CRASH_EXIT_CODE``)". ``os._exit`` skips every ``finally`` block, atexit handler and
buffered write, exactly like SIGKILL or a host losing power, so nothing the engine did not already
persist survives. The Azure adapter installs the hook from the environment when it is built; tests can
also pass a hook of their own as ``EngineOptions(fault_hook=...)``.

A malformed value is an error at start-up rather than a silently healthy worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

logger = logging.getLogger("flowcraft.faults")

CRASH_ENV = "FLOWCRAFT_FAULT_CRASH_AT"
CRASH_EXIT_CODE = 97

# Every checkpoint of Engine.handle_job, in the order a job reaches them.
CHECKPOINTS: tuple[str, ...] = (
    "after-claim",     # a join's execution claim was taken, the node has not run yet
    "after-execute",   # the node ran, its record is not committed
    "after-commit",    # the record (output, context changes, routes) is committed
    "after-gate",      # one arrival at a join gate was recorded in Redis (each gate passed)
    "after-enqueue",   # one successor job was sent to the queue (each enqueue)
    "before-final",    # the run's last node ended, the final status is not written yet
    "after-final",     # the final status is written, the job's message is not deleted yet
)

# (step, run id, node id) -> None, or an awaitable for hooks that want to wait (e.g. to widen a race).
FaultHook = Callable[[str, str, str | None], Awaitable[None] | None]


@dataclass(frozen=True)
class CrashSpec:
    """Where to crash: the n-th time (1-based) ``step`` is reached, optionally only for ``node_id``."""

    step: str
    nth: int = 1
    node_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> CrashSpec:
        """Parse ``<step>:<n>[:<nodeId>]``; ValueError saying what is wrong."""
        step, _, rest = text.strip().partition(":")
        if step not in CHECKPOINTS:
            raise ValueError(f"{CRASH_ENV}: unknown step {step!r}; steps are {', '.join(CHECKPOINTS)}")
        count, _, node = rest.partition(":")
        try:
            nth = int(count) if count else 1
        except ValueError:
            raise ValueError(f"{CRASH_ENV}: {count!r} is not a count (expected <step>:<n>[:<nodeId>])") from None
        if nth < 1:
            raise ValueError(f"{CRASH_ENV}: the count must be at least 1 (got {nth})")
        return cls(step, nth, node or None)

    def __str__(self) -> str:
        return f"{self.step}:{self.nth}" + (f":{self.node_id}" if self.node_id else "")


@dataclass
class CrashAt:
    """A fault hook that kills the process the n-th time a checkpoint is reached."""

    spec: CrashSpec
    exit_code: int = CRASH_EXIT_CODE
    # Replaced in unit tests so that they can observe the crash without dying.
    exit: Callable[[int], None] = os._exit
    hits: int = 0

    def __call__(self, step: str, run_id: str, node_id: str | None) -> None:
        """Count the hit; exit the process when it is the chosen one."""
        if step != self.spec.step or (self.spec.node_id is not None and node_id != self.spec.node_id):
            return
        self.hits += 1
        if self.hits < self.spec.nth:
            return
        logger.critical("fault injection: crashing at %s (run %s, node %s)", self.spec, run_id, node_id)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # best effort right before dying
                handler.flush()
        sys.stderr.flush()
        self.exit(self.exit_code)


@dataclass
class StepRecorder:
    """A fault hook that only records the checkpoints reached: tests use it to enumerate crash points."""

    steps: list[tuple[str, str, str | None]] = field(default_factory=list)

    def __call__(self, step: str, run_id: str, node_id: str | None) -> None:
        """Record the hit."""
        self.steps.append((step, run_id, node_id))

    def counts(self, run_id: str | None = None) -> Counter[str]:
        """How often each step was reached (for one run, or for all)."""
        return Counter(step for step, rid, _ in self.steps if run_id is None or rid == run_id)


def fault_hook_from_env(env: Mapping[str, str] | None = None) -> CrashAt | None:
    """The crash hook ``FLOWCRAFT_FAULT_CRASH_AT`` asks for, or None when it is unset (the default)."""
    value = (os.environ if env is None else env).get(CRASH_ENV, "").strip()
    if not value:
        return None
    hook = CrashAt(CrashSpec.parse(value))
    logger.warning("fault injection enabled: this process will exit with status %d at %s", hook.exit_code,
                   hook.spec)
    return hook
