"""Shrinking a disagreeing case to a small reproduction (greedy, over the case's block tree)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.differential.generator import Case, compile_case, shrink_steps


def category(problems: list[str]) -> str:
    """The kind of the first problem (status, failing node, context, executions, an invariant)."""
    if not problems:
        return ""
    first = problems[0]
    for kind in ("status", "failing node", "context", "executions", "node:", "final status"):
        if first.startswith(kind):
            return kind
    return first.split(" ", 1)[0]


async def shrink(case: Case, check: Callable[[Case], Awaitable[list[str]]], *, budget: int = 200) -> Case:
    """The smallest variant found whose check still reports a problem of the same category."""
    want = category(await check(case))
    best = case
    tries = 0
    improved = True
    while improved and tries < budget:
        improved = False
        for tree in shrink_steps(best.tree):
            tries += 1
            candidate = compile_case(case.seed, tree)
            if candidate.node_count >= best.node_count and tree.size() >= best.tree.size():
                continue
            if category(await check(candidate)) == want:
                best, improved = candidate, True
                break
            if tries >= budget:
                break
    return best
