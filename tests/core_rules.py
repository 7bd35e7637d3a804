"""Pieces shared by the core-rule tests, in process (tests/unit/test_core_rules.py) and distributed
(tests/integration/test_core_rules_distributed.py): a barrier hook, a node that differs on every
execution, and a commit spy.

The point of these tests is that a planted bug in a core rule fails a test named for that rule (see
docs/testing.md), so their nodes are deliberately non-deterministic where the rule is about which of two
executions wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from flowcraft_core import NodeContext, NodeResult
from flowcraft_core.protocols import NodeRecord

DEADLINE = 10.0  # seconds; only ever reached when something is broken


class Barrier:
    """A fault hook holding every delivery of one node at one checkpoint until ``parties`` reached it.

    With ``step="after-execute"`` both deliveries of a duplicated job have executed before either commits,
    which is the race the first-writer-wins rule is about. If the parties never all arrive, the holders
    are let go at the deadline and ``met`` stays False (the test then fails on it, it does not hang).
    """

    def __init__(self, step: str, node_id: str, parties: int = 2) -> None:
        self.step = step
        self.node_id = node_id
        self.parties = parties
        self.arrived = 0
        self.met = False
        self._all_here = asyncio.Event()

    async def __call__(self, step: str, run_id: str, node_id: str | None) -> None:
        if step != self.step or node_id != self.node_id:
            return
        self.arrived += 1
        if self.arrived >= self.parties:
            self.met = True
            self._all_here.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_here.wait(), DEADLINE)


class Fickle:
    """A router node returning a different action on each execution: 'left' first, then 'right'."""

    ACTIONS = ("left", "right")

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: NodeContext) -> NodeResult:
        action = self.ACTIONS[self.calls % 2]
        self.calls += 1
        return NodeResult(output=f"chose {action}", action=action)


class Counting:
    """A node counting its executions per node id and returning the node id upper-cased."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.inputs: dict[str, list[Any]] = {}

    async def __call__(self, ctx: NodeContext) -> NodeResult:
        self.runs[ctx.node_id] += 1
        self.inputs.setdefault(ctx.node_id, []).append(ctx.input)
        return NodeResult(output=ctx.node_id.upper())


def spy_commits(store: Any, log: list[tuple[str, str | None, str | None, bool]] | None = None,
                ) -> list[tuple[str, str | None, str | None, bool]]:
    """Wrap a run store's ``commit`` (on the instance) to log (key, action committed, action stored, new)."""
    log = [] if log is None else log
    inner = store.commit

    async def commit(run_id: str, record: NodeRecord) -> tuple[NodeRecord, bool]:
        offered = record.action
        stored, new = await inner(run_id, record)
        log.append((record.key, offered, stored.action, new))
        return stored, new

    store.commit = commit
    return log


# x routes by its action to `left` or `right`; both lead to `end`, an any-join, so the run completes
# whichever branch the stored record chose.
FIRST_WRITER_BLUEPRINT: dict[str, Any] = {
    "id": "first-writer",
    "nodes": [
        {"id": "x", "uses": "fickle"},
        {"id": "left", "uses": "count"},
        {"id": "right", "uses": "count"},
        {"id": "end", "uses": "count", "config": {"joinStrategy": "any"}},
    ],
    "edges": [
        {"source": "x", "target": "left", "action": "left"},
        {"source": "x", "target": "right", "action": "right"},
        {"source": "left", "target": "end"},
        {"source": "right", "target": "end"},
    ],
}

# a fans out to b, c, d; e joins all three.
JOIN_BLUEPRINT: dict[str, Any] = {
    "id": "join-after-all",
    "nodes": [{"id": n, "uses": "hold" if n == "d" else "count"} for n in "abcde"],
    "edges": [{"source": "a", "target": t} for t in "bcd"] + [{"source": s, "target": "e"} for s in "bcd"],
}


def assert_first_writer_won(commits: list[tuple[str, str | None, str | None, bool]],
                            runs: Counter[str]) -> str:
    """Exactly one of the two commits of x is new, both see its action, and only that branch ran."""
    of_x = [c for c in commits if c[0] == "0:x"]
    assert len(of_x) == 2, of_x
    assert sorted(offered for _, offered, _, _ in of_x) == ["left", "right"], of_x  # the executions differed
    assert sorted(new for *_, new in of_x) == [False, True], of_x  # the loser sees new == False
    winner = next(offered for _, offered, _, new in of_x if new)
    assert {stored for _, _, stored, _ in of_x} == {winner}, of_x  # both get the stored record back
    loser = "right" if winner == "left" else "left"
    assert runs[winner] == 1, runs
    assert runs[loser] == 0, runs  # the losing execution's action routed nothing
    assert runs["end"] == 1, runs
    return winner
