"""Small blueprints, one per SPEC rule the reference interpreter implements, with stand-in nodes.

``test_reference_interpreter.py`` checks the reference's outcome of each against SPEC by hand; the
differential tests run them through the engine's runtimes too (``tests/differential/test_spec_rules.py``).
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.differential.generator import Block, Case

Nodes = list[dict[str, Any]]


def _n(node_id: str, uses: str = "d-step", **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **fields}


def _e(source: str, target: str, **props: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **props}


def case(name: str, nodes: Nodes, edges: Nodes, *, children: Nodes | None = None,
         context: dict[str, Any] | None = None, resume: dict[str, tuple[str | None, Any]] | None = None,
         **metadata: Any) -> Case:
    """A hand-written case (its blueprint id is the name)."""
    bp: dict[str, Any] = {"id": name, "nodes": nodes, "edges": edges}
    if metadata:
        bp["metadata"] = metadata
    return Case(0, Block("seq"), [bp, *(children or [])], dict(context or {"seed": 0}), dict(resume or {}))


def _loop(prefix: str, n: int, body: list[str], reset: tuple[str, ...] = ()) -> tuple[Nodes, Nodes]:
    """Entry counter, body chain, controller (continue back to the entry)."""
    entry, ctl = f"{prefix}e", f"{prefix}L"
    nodes = [_n(entry, "d-count", params={"key": f"c_{prefix}", "reset": list(reset)})]
    nodes += [_n(b, params={"v": 1}) for b in body]
    nodes.append(_n(ctl, "loop-controller", params={"condition": f"c_{prefix} < {n}"}))
    chain = [entry, *body, ctl]
    edges = [_e(a, b) for a, b in itertools.pairwise(chain)] + [_e(ctl, entry, action="continue")]
    return nodes, edges


def _nested() -> Case:
    outer_nodes, outer_edges = _loop("o", 3, [], reset=("c_i",))
    inner_nodes, inner_edges = _loop("i", 2, ["ib"])
    # outer entry -> inner loop -> outer controller
    outer_edges = [e for e in outer_edges if not (e["source"] == "oe" and e["target"] == "oL")]
    return case("nested-loop", [_n("a"), *outer_nodes, *inner_nodes, _n("z")],
                [_e("a", "oe"), *outer_edges, _e("oe", "ie"), *inner_edges, _e("iL", "oL", action="break"),
                 _e("oL", "z", action="break")], cycleEntryPoints=["oe", "ie"])


def _single_loop() -> Case:
    nodes, edges = _loop("l", 3, ["body"])
    return case("loop", [_n("a"), *nodes, _n("z")], [_e("a", "le"), *edges, _e("lL", "z", action="break")],
                cycleEntryPoints=["le"])


SPEC_CASES: dict[str, Case] = {
    "linear": case("linear", [_n("a"), _n("b"), _n("c")], [_e("a", "b"), _e("b", "c")]),
    "fan-out-all": case("fan-out-all", [_n("a"), _n("b"), _n("c"), _n("d"), _n("e")],
                        [_e("a", "b"), _e("a", "c"), _e("a", "d"), _e("b", "e"), _e("c", "e"), _e("d", "e")]),
    "router-action": case("router-action", [_n("a", params={"action": "x"}), _n("bx"), _n("by")],
                          [_e("a", "bx", action="x"), _e("a", "by", action="y")]),
    "unmatched-default": case("unmatched-default", [_n("a", params={"action": "q"}), _n("bx"), _n("bd")],
                              [_e("a", "bx", action="x"), _e("a", "bd")]),
    "unmatched-no-default": case("unmatched-no-default", [_n("a", params={"action": "q"}), _n("bx"), _n("z")],
                                 [_e("a", "bx", action="x"), _e("bx", "z")]),
    "condition-transform": case("condition-transform", [_n("a", params={"score": 0.7, "v": 5}), _n("hi"), _n("lo")],
                                [_e("a", "hi", condition="result.output.score > 0.5", transform="result.output.v"),
                                 _e("a", "lo", condition="result.output.score <= 0.5")]),
    "any-join-after-router": case("any-join-after-router",
                                  [_n("a", params={"action": "x"}), _n("bx"), _n("by"),
                                   _n("j", config={"joinStrategy": "any"})],
                                  [_e("a", "bx", action="x"), _e("a", "by", action="y"), _e("bx", "j"), _e("by", "j")]),
    "all-join-one-edge-taken": case("all-join-one-edge-taken",
                                    [_n("a", params={"action": "x"}), _n("bx"), _n("by"), _n("j")],
                                    [_e("a", "bx", action="x"), _e("a", "by", action="y"), _e("bx", "j"),
                                     _e("by", "j")]),
    "retries": case("retries", [_n("a", params={"failTimes": 2}, config={"maxRetries": 3}), _n("b")], [_e("a", "b")]),
    "failure": case("failure", [_n("a"), _n("f", params={"alwaysFail": True}, config={"maxRetries": 2}), _n("b"),
                                _n("c"), _n("j")],
                    [_e("a", "f"), _e("a", "c"), _e("f", "b"), _e("b", "j"), _e("c", "j")]),
    "timeout-fallback": case("timeout-fallback",
                             [_n("a", params={"sleepMs": 3000}, config={"timeout": 50, "fallback": "d-fallback"}),
                              _n("b")], [_e("a", "b")]),
    "fallback-node-id": case("fallback-node-id",
                             [_n("a", params={"alwaysFail": True}, config={"fallback": "spare"}),
                              _n("spare", "d-fallback", params={"v": 7}), _n("b")],
                             [_e("a", "b"), _e("b", "spare", condition="false")]),
    "loop": _single_loop(),
    "nested-loop": _nested(),
    "batch": case("batch", [_n("a"), _n("s", "batch-scatter", inputs="items",
                                        params={"workerUsesKey": "d-item", "gatherNodeId": "g"}),
                            _n("g", "batch-gather", params={"gatherNodeId": "g", "outputKey": "squares"}), _n("z")],
                  [_e("a", "s"), _e("s", "g"), _e("g", "z")], context={"seed": 0, "items": list(range(10))}),
    "subflow": case("subflow", [_n("a", params={"set": True}),
                                _n("u", "subflow", params={"blueprintId": "child", "inputs": {"x": "k_a"},
                                                           "outputs": {"got": "c2"}}), _n("z")],
                    [_e("a", "u"), _e("u", "z")],
                    children=[{"id": "child", "nodes": [_n("c1", params={"read": ["x"]}), _n("c2")],
                               "edges": [_e("c1", "c2")]}]),
    "wait-resume": case("wait-resume", [_n("a"), _n("w", "wait"), _n("yes"), _n("no")],
                        [_e("a", "w"), _e("w", "yes", action="approve"), _e("w", "no", action="reject")],
                        resume={"w": ("approve", {"ok": True})}),
    "any-join-slow-sibling": case("any-join-slow-sibling",
                                  [_n("s"), _n("fast"), _n("slow", params={"sleepMs": 600}),
                                   _n("j", "d-join", config={"joinStrategy": "any"}), _n("z")],
                                  [_e("s", "fast"), _e("s", "slow"), _e("fast", "j"), _e("slow", "j"), _e("j", "z")]),
    "bare-node-id": case("bare-node-id", [_n("r", params={"score": 0.9}), _n("hi"), _n("lo")],
                         [_e("r", "hi", condition="r.score > 0.5"), _e("r", "lo", condition="r.score <= 0.5")]),
}
