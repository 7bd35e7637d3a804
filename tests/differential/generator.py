"""A seeded generator of random blueprints (5-40 nodes) for the differential tests.

A blueprint is generated as a tree of blocks (``Block``), each compiled to nodes with one entry and one
exit, so that a disagreement can be shrunk by replacing subtrees with a plain step (see ``shrink_steps``).
Blocks: steps (context setters and readers, flaky, always failing with or without fallback, timeouts
with fallback, transforms), fan-outs into all/any joins (with slow siblings), routers by action or by
condition (matched, unmatched, with and without a default edge), single and nested loops, batch
scatter/gather, sleep, wait (resumed by the harness with a chosen action) and subflows.

Determinism rules the generator keeps, so that the outcome does not depend on timing:
- a node reads only keys that no concurrent branch may still write (``settled``);
- inside loops, fan-outs join with ``all`` (an ``any`` join's slow sibling could outlive its iteration);
- at most one node fails for good (so the failing node is determined) and at most one waits.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Block:
    """One generated construct; ``kind`` names it, ``props`` and ``children`` describe it."""

    kind: str  # step | seq | par | route | loop | batch | sleep | wait | sub
    props: dict[str, Any] = field(default_factory=dict)
    children: list[Block] = field(default_factory=list)

    def size(self) -> int:
        """Number of blocks in this tree."""
        return 1 + sum(c.size() for c in self.children)


@dataclass
class Case:
    """A generated run: its blueprints (main first), initial context, resume plan and block tree."""

    seed: int
    tree: Block
    blueprints: list[dict[str, Any]]
    context: dict[str, Any]
    resume: dict[str, tuple[str | None, Any]]

    @property
    def blueprint_id(self) -> str:
        """The main blueprint's id."""
        return str(self.blueprints[0]["id"])

    @property
    def node_count(self) -> int:
        """Nodes of the main blueprint."""
        return len(self.blueprints[0]["nodes"])

    def to_json(self) -> dict[str, Any]:
        """Everything needed to replay the case."""
        return {"seed": self.seed, "blueprints": self.blueprints, "context": self.context,
                "resume": {k: list(v) for k, v in self.resume.items()}}


# --------------------------------------------------------------------------------- random trees


class _Gen:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.failed_for_good = False
        self.waits = 0

    def block(self, budget: int, depth: int, in_loop: bool) -> Block:
        r = self.rng
        if budget <= 1 or depth > 3:
            return self.step(in_loop)
        kinds = ["seq", "seq", "par", "route", "route", "step", "loop", "sleep", "batch", "sub"]
        if not in_loop and self.waits == 0:
            kinds.append("wait")
        kind = r.choice(kinds)
        if kind == "seq":
            n = r.randint(2, 4)
            return Block("seq", children=[self.block(budget // n, depth + 1, in_loop) for _ in range(n)])
        if kind == "par":
            n = r.randint(2, 4)
            join = "all" if in_loop else r.choice(["all", "any"])
            branches = [self.block(budget // (n + 1), depth + 1, in_loop) for _ in range(n)]
            if join == "any" and r.random() < 0.6:
                # a slow sibling: the any join fires long before this branch ends
                branches.append(Block("seq", children=[Block("sleep", {"ms": r.choice([300, 500, 800])}),
                                                       self.step(in_loop)]))
            return Block("par", {"join": join}, branches)
        if kind == "route":
            n = r.randint(1, 3)
            by = r.choice(["action", "action", "condition"])
            join = r.choice(["all", "any"]) if (by == "action" or not in_loop) else "all"
            props: dict[str, Any] = {"by": by, "join": join, "default": r.random() < 0.5}
            if by == "action":
                props["pick"] = r.choice([*range(n), -1])  # -1: an action no edge names
            else:
                props["score"] = round(r.random(), 2)
                props["thresholds"] = [round(r.random(), 2) for _ in range(n)]
            kids = [self.block(budget // (n + 2), depth + 1, in_loop) for _ in range(n + props["default"])]
            return Block("route", props, kids)
        if kind == "loop" and depth <= 2:
            body = self.block(max(1, budget // 2), depth + 1, True)
            return Block("loop", {"n": r.randint(1, 3)}, [body])
        if kind == "sleep":
            return Block("sleep", {"ms": r.choice([10, 50, 150])})
        if kind == "batch" and not in_loop:
            return Block("batch", {"items": [r.randint(0, 9) for _ in range(r.randint(0, 4))]})
        if kind == "sub" and not in_loop:
            return Block("sub", children=[Block("seq", children=[self.step(True) for _ in range(r.randint(1, 3))])])
        if kind == "wait" and not in_loop and self.waits == 0:
            self.waits += 1
            n = r.randint(1, 2)
            pick = r.choice(["approve", "reject", "other"][: n + 1])
            return Block("wait", {"pick": pick, "join": r.choice(["all", "any"])},
                         [self.block(budget // 3, depth + 1, in_loop) for _ in range(n)])
        return self.step(in_loop)

    def step(self, in_loop: bool) -> Block:
        r = self.rng
        x = r.random()
        props: dict[str, Any] = {"v": r.randint(0, 99)}
        if x < 0.25:
            props["set"] = True
        elif x < 0.4:
            props["read"] = True
        elif x < 0.5:
            k = r.randint(1, 2)
            props.update(failTimes=k, maxRetries=k + r.randint(0, 1) + (0 if r.random() < 0.7 else -1))
            if props["maxRetries"] <= k:
                props["fallback"] = True
        elif x < 0.55:
            props.update(alwaysFail=True, fallback=True, maxRetries=r.randint(1, 2))
        elif x < 0.6 and not in_loop:
            props.update(timeout=True, fallback=True, maxRetries=r.randint(1, 2))
        elif x < 0.62 and not self.failed_for_good:
            self.failed_for_good = True
            props.update(alwaysFail=True)
        elif x < 0.72:
            props["transform"] = True
        return Block("step", props)


def random_tree(rng: random.Random) -> Block:
    """A random block tree of roughly 5-40 nodes."""
    gen = _Gen(rng)
    first = Block("step", {"v": rng.randint(0, 99), "set": True})
    # A plain last step: a loop or join at the very end is its own regression case (see findings F1).
    return Block("seq", children=[first, gen.block(rng.randint(4, 16), 0, False), Block("step", {"v": 0})])


# --------------------------------------------------------------------------------- compilation


class _Builder:
    def __init__(self, bp_id: str, seed: int, case: _CaseParts) -> None:
        self.bp_id = bp_id
        self.seed = seed
        self.case = case
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[dict[str, Any]] = []
        self.entries: list[str] = []
        self.counter = 0

    def node(self, prefix: str, uses: str, **fields: Any) -> str:
        self.counter += 1
        node_id = f"{prefix}{self.counter}"
        self.nodes.append({"id": node_id, "uses": uses, **fields})
        return node_id

    def edge(self, source: str, target: str, **props: Any) -> None:
        self.edges.append({"source": source, "target": target, **{k: v for k, v in props.items() if v is not None}})

    def blueprint(self) -> dict[str, Any]:
        bp: dict[str, Any] = {"id": self.bp_id, "nodes": self.nodes, "edges": self.edges}
        if self.entries:
            bp["metadata"] = {"cycleEntryPoints": self.entries}
        return bp

    # compile(block, settled) -> (entry, exit, props of the exit's outgoing edge, settled keys after)
    def compile(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        method = getattr(self, f"_{block.kind}")
        result: tuple[str, str, dict[str, Any], frozenset[str]] = method(block, settled)
        return result

    def _seq(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        first = last = None
        props: dict[str, Any] = {}
        for child in block.children:
            entry, exit_, out_props, settled = self.compile(child, settled)
            if last is None:
                first = entry
            else:
                extra = {}
                if child.kind == "step" and child.props.get("transform") and self._is_step(last) and not props:
                    extra["transform"] = "result.output.v"
                self.edge(last, entry, **props, **extra)
            last, props = exit_, out_props
        assert first is not None and last is not None
        return first, last, props, settled

    def _is_step(self, node_id: str) -> bool:
        return any(n["id"] == node_id and n["uses"] == "d-step" for n in self.nodes)

    def _step(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        p = block.props
        params: dict[str, Any] = {"v": p.get("v", 0)}
        config: dict[str, Any] = {}
        for key in ("failTimes", "alwaysFail", "set"):
            if p.get(key):
                params[key] = p[key]
        if p.get("read"):
            params["read"] = [*sorted(settled)[-2:], "seed"]
        if p.get("timeout"):
            params["sleepMs"] = 3000
            config["timeout"] = 100
        if p.get("maxRetries"):
            config["maxRetries"] = max(1, int(p["maxRetries"]))
        if p.get("fallback"):
            config["fallback"] = "d-fallback"
        fields: dict[str, Any] = {"params": params}
        if config:
            fields["config"] = config
        node_id = self.node("s", "d-step", **fields)
        if p.get("set"):
            settled = settled | {f"k_{node_id}"}
        return node_id, node_id, {}, settled

    def _join(self, strategy: str) -> str:
        return self.node("j", "d-join", params={"v": 0}, config={"joinStrategy": strategy})

    def _par(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        fork = self.node("f", "d-step", params={"v": 1})
        join = self._join(block.props["join"])
        after = settled
        for child in block.children:
            entry, exit_, props, got = self.compile(child, settled)
            self.edge(fork, entry)
            self.edge(exit_, join, **props)
            after |= got
        return fork, join, {}, after if block.props["join"] == "all" else settled

    def _route(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        p = block.props
        by_action = p["by"] == "action"
        branches = block.children[:-1] if p["default"] else block.children
        params: dict[str, Any] = {"v": 2}
        if by_action:
            params["action"] = f"a{p['pick']}" if p["pick"] >= 0 else "nomatch"
        else:
            params["score"] = p["score"]
        router = self.node("r", "d-step", params=params)
        join = self._join(p["join"])
        after = settled
        for i, child in enumerate(block.children):
            entry, exit_, props, got = self.compile(child, settled)
            if i < len(branches):
                guard = ({"action": f"a{i}"} if by_action
                         else {"condition": f"result.output.score > {p['thresholds'][i]}"})
            else:
                guard = {}
            self.edge(router, entry, **guard)
            self.edge(exit_, join, **props)
            after |= got
        exclusive = by_action
        return router, join, {}, after if (p["join"] == "all" or exclusive) else settled

    def _loop(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        self.counter += 1
        entry_id = f"e{self.counter}"
        key = f"c_{entry_id}"
        self.nodes.append({"id": entry_id, "uses": "d-count", "params": {"key": key, "reset": []}})
        entry_node = self.nodes[-1]
        inner_from = len(self.nodes)
        body_entry, body_exit, props, got = self.compile(block.children[0], settled)
        # An inner loop's counter starts again in every iteration of this one.
        entry_node["params"]["reset"] = [n["params"]["key"] for n in self.nodes[inner_from:] if n["uses"] == "d-count"]
        ctl = self.node("L", "loop-controller", params={"condition": f"{key} < {block.props['n']}"})
        self.edge(entry_id, body_entry)
        self.edge(body_exit, ctl, **props)
        self.edge(ctl, entry_id, action="continue")
        self.entries.append(entry_id)
        return entry_id, ctl, {"action": "break"}, got | {key}

    def _sleep(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        node_id = self.node("z", "sleep", params={"duration": block.props["ms"]})
        return node_id, node_id, {}, settled

    def _batch(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        self.counter += 1
        scatter, gather = f"b{self.counter}", f"g{self.counter}"
        items_key = f"items_{scatter}"
        self.case.context[items_key] = list(block.props["items"])
        self.nodes.append({"id": scatter, "uses": "batch-scatter", "inputs": items_key,
                           "params": {"workerUsesKey": "d-item", "gatherNodeId": gather}})
        self.nodes.append({"id": gather, "uses": "batch-gather",
                           "params": {"gatherNodeId": gather, "outputKey": f"sq_{gather}"}})
        self.edge(scatter, gather)
        return scatter, gather, {}, settled | {f"sq_{gather}"}

    def _wait(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        wait = self.node("w", "wait")
        join = self._join(block.props["join"])
        after = settled
        for action, child in zip(("approve", "reject"), block.children, strict=False):
            entry, exit_, props, got = self.compile(child, settled)
            self.edge(wait, entry, action=action)
            self.edge(exit_, join, **props)
            after |= got
        pick = block.props["pick"]
        self.case.resume[wait] = (pick, {"by": "harness", "pick": pick})
        return wait, join, {}, after

    def _sub(self, block: Block, settled: frozenset[str]) -> tuple[str, str, dict[str, Any], frozenset[str]]:
        self.case.children += 1
        child_id = f"{self.bp_id}-c{self.case.children}"
        child = _Builder(child_id, self.seed, self.case)
        _entry, child_exit, _props, _got = child.compile(block.children[0], frozenset({"x"}))
        self.case.blueprints.append(child.blueprint())
        source = sorted(settled)[-1] if settled else "seed"
        node_id = self.node("u", "subflow", params={"blueprintId": child_id, "inputs": {"x": source},
                                                     "outputs": {f"res_{self.counter + 1}": child_exit}})
        # the outputs key names this node: fix it now that its id is known
        self.nodes[-1]["params"]["outputs"] = {f"res_{node_id}": child_exit}
        return node_id, node_id, {}, settled | {f"res_{node_id}"}


@dataclass
class _CaseParts:
    context: dict[str, Any]
    resume: dict[str, tuple[str | None, Any]] = field(default_factory=dict)
    blueprints: list[dict[str, Any]] = field(default_factory=list)
    children: int = 0


def compile_case(seed: int, tree: Block) -> Case:
    """Compile a block tree into the case's blueprints, initial context and resume plan."""
    parts = _CaseParts(context={"seed": seed})
    builder = _Builder(f"g{seed}", seed, parts)
    builder.compile(tree, frozenset({"seed"}))
    return Case(seed, tree, [builder.blueprint(), *parts.blueprints], parts.context, parts.resume)


def generate(seed: int, *, min_nodes: int = 5, max_nodes: int = 40) -> Case:
    """The case of a seed: a random tree, redrawn until the main blueprint has 5-40 nodes."""
    rng = random.Random(seed)
    for _ in range(50):
        case = compile_case(seed, random_tree(rng))
        if min_nodes <= case.node_count <= max_nodes:
            return case
    return case


# --------------------------------------------------------------------------------- shrinking


def shrink_steps(tree: Block) -> list[Block]:
    """Smaller variants of a tree: each subtree replaced by a plain step, or dropped from a sequence."""
    variants: list[Block] = []

    def paths(block: Block, path: tuple[int, ...]) -> list[tuple[int, ...]]:
        found = [path]
        for i, child in enumerate(block.children):
            found.extend(paths(child, (*path, i)))
        return found

    for path in sorted(paths(tree, ()), key=len):
        if not path:
            continue
        parent_path, index = path[:-1], path[-1]
        for replace in ("drop", "step"):
            variant = copy.deepcopy(tree)
            parent = variant
            for i in parent_path:
                parent = parent.children[i]
            target = parent.children[index]
            if replace == "drop":
                # The root's first and last steps stay: without them the blueprint may have no start
                # node, or end in a loop (a case of its own: F1).
                droppable = (parent.kind == "seq" and len(parent.children) > 1) or \
                    (parent.kind == "par" and len(parent.children) > 2)
                if not droppable or (not parent_path and index in (0, len(parent.children) - 1)):
                    continue
                del parent.children[index]
            else:
                if target.kind == "step" and not target.props.keys() - {"v"}:
                    continue
                parent.children[index] = Block("step", {"v": 0})
            variants.append(variant)
    # Simplify a step's properties too (a flaky step becomes a plain one, and so on).
    for path in paths(tree, ()):
        variant = copy.deepcopy(tree)
        target = variant
        for i in path:
            target = target.children[i]
        if target.kind == "step" and target.props.keys() - {"v"}:
            target.props = {"v": target.props.get("v", 0)}
            variants.append(variant)
    return variants
