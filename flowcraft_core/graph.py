"""The compiled shape of a blueprint: adjacency, start and terminal nodes, cycles and back edges.

Both runtimes route with this one structure, computed once per blueprint and cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .models import EdgeDefinition, NodeDefinition, WorkflowBlueprint

# Iterations of nested loops are digits of one integer, innermost highest: a node two loops deep runs in
# iteration ``outer + inner * ITERATION_BASE``. A node in one loop (or an innermost loop) keeps counting
# past the base; a loop around other loops must stay below it (9 999 rounds) so the digits stay apart.
# Three levels stay below 2**53, so iteration numbers survive JSON readers that use doubles.
ITERATION_BASE = 10_000


def _power(depth: int) -> int:
    """The weight of a loop depth's digit in an iteration number."""
    return int(ITERATION_BASE ** depth)


@dataclass(frozen=True)
class Loop:
    """A natural loop: its header (the target of its back edges), its body and its nesting depth."""

    header: str
    body: frozenset[str]
    depth: int  # 1 for an outermost loop
    back_sources: frozenset[str]


@dataclass(frozen=True)
class CompiledGraph:
    """Adjacency and cycle facts of one blueprint (treat as immutable)."""

    blueprint: WorkflowBlueprint
    nodes: dict[str, NodeDefinition]
    out_edges: dict[str, list[EdgeDefinition]]
    in_edges: dict[str, list[EdgeDefinition]]
    start_node_ids: list[str]
    terminal_node_ids: list[str]
    # Edges that close a cycle (found by depth-first search from the entry nodes): taking one starts
    # the next iteration of a loop instead of arriving at a join.
    back_edges: frozenset[tuple[str, str]]
    # Each node's strongly connected component id (-1 when the node is in no cycle).
    component: dict[str, int]
    cycles: list[list[str]]
    forward_predecessors: dict[str, list[str]] = field(default_factory=dict)
    reachable_terminals: frozenset[str] = frozenset()
    # The blueprint's version, computed once: hashing the whole blueprint on every job was O(nodes).
    version: str = ""
    # For each source, the positions of its out-edges by target: a node's routes are stored in its
    # out-edge order, so the route to a target can be found without scanning them all.
    out_positions: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # Loops by header, and for each node the headers of the loops it belongs to, outermost first.
    loops: dict[str, Loop] = field(default_factory=dict)
    node_loops: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def is_back_edge(self, edge: EdgeDefinition) -> bool:
        """True when taking this edge starts a new loop iteration."""
        return (edge.source, edge.target) in self.back_edges

    def in_cycle(self, node_id: str) -> bool:
        """True when the node belongs to a cycle."""
        return self.component.get(node_id, -1) >= 0

    def same_cycle(self, a: str, b: str) -> bool:
        """True when both nodes belong to the same cycle (strongly connected component)."""
        ca = self.component.get(a, -1)
        return ca >= 0 and ca == self.component.get(b, -1)

    def exit_edges(self, component_id: int) -> list[EdgeDefinition]:
        """Edges leaving a cycle."""
        return [
            e
            for src, edges in self.out_edges.items()
            if self.component.get(src, -1) == component_id
            for e in edges
            if self.component.get(e.target, -1) != component_id
        ]

    def depth(self, node_id: str) -> int:
        """How many loops the node is in (0 outside every loop)."""
        return len(self.node_loops.get(node_id, ()))

    def common_depth(self, a: str, b: str) -> int:
        """How many enclosing loops two nodes share."""
        n = 0
        for la, lb in zip(self.node_loops.get(a, ()), self.node_loops.get(b, ()), strict=False):
            if la != lb:
                break
            n += 1
        return n

    def truncate_iteration(self, node_id: str, iteration: int, depth: int) -> int:
        """The iteration of the node's loops down to ``depth`` only (deeper loops' digits dropped)."""
        if depth >= self.depth(node_id):
            return iteration
        return iteration % _power(depth) if depth > 0 else 0

    def target_iteration(self, source: str, target: str, kind: str, iteration: int) -> int:
        """The iteration at which a route of ``source`` (run in ``iteration``) reaches ``target``.

        Iterations are tracked per loop: a back edge starts the next round of its own loop (inner
        loops start again from 0); leaving a loop returns to the iteration of the loops around it;
        entering one starts its round 0.
        """
        if kind == "back":
            loop = self.loops.get(target)
            if loop is not None:
                base = self.truncate_iteration(source, iteration, loop.depth)
                return base + _power(loop.depth - 1)
            return iteration + 1
        return self.truncate_iteration(source, iteration, self.common_depth(source, target))

    def loop_exit_edges(self, header: str) -> list[EdgeDefinition]:
        """Edges leaving the loop with this header (from its body to outside it)."""
        loop = self.loops.get(header)
        if loop is None:
            return []
        return [e for src in loop.body for e in self.out_edges.get(src, []) if e.target not in loop.body]

    def loop_of_back_edge(self, source: str, target: str) -> str | None:
        """The header of the loop a back edge belongs to (its target), if it is one."""
        return target if (source, target) in self.back_edges and target in self.loops else None

    @property
    def is_dag(self) -> bool:
        """True when the blueprint has no cycle."""
        return not self.cycles


def _strongly_connected(nodes: Iterable[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so that deep graphs do not hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            recurse = False
            children = succ.get(node, [])
            while i < len(children):
                child = children[i]
                i += 1
                if child not in index:
                    work.append((node, i))
                    work.append((child, 0))
                    recurse = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if recurse:
                continue
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                result.append(comp)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return result


def _back_edges(roots: list[str], succ: dict[str, list[str]]) -> set[tuple[str, str]]:
    """Edges to a node still on the depth-first stack."""
    color: dict[str, int] = {}
    back: set[tuple[str, str]] = set()
    for root in roots:
        if root in color:
            continue
        color[root] = 1
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            children = succ.get(node, [])
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                state = color.get(child, 0)
                if state == 0:
                    color[child] = 1
                    work.append((child, 0))
                elif state == 1:
                    back.add((node, child))
            else:
                color[node] = 2
    return back


def compile_graph(bp: WorkflowBlueprint) -> CompiledGraph:
    """Compute adjacency, entry and exit nodes, cycles and back edges of a blueprint."""
    nodes = {n.id: n for n in bp.nodes}
    out_edges: dict[str, list[EdgeDefinition]] = {nid: [] for nid in nodes}
    in_edges: dict[str, list[EdgeDefinition]] = {nid: [] for nid in nodes}
    for edge in bp.edges:
        if edge.source in nodes and edge.target in nodes:
            out_edges[edge.source].append(edge)
            in_edges[edge.target].append(edge)
    succ = {nid: list(dict.fromkeys(e.target for e in edges)) for nid, edges in out_edges.items()}
    # A node named by another's config.fallback runs only in that node's place (as in Flowcraft): it is
    # not a start node of its own, so a run neither starts it nor waits for it as a terminal.
    fallbacks = fallback_node_ids(bp)
    start = [nid for nid in nodes if not in_edges[nid] and nid not in fallbacks]
    terminal = [nid for nid in nodes if not out_edges[nid]]

    comps = _strongly_connected(nodes, succ)
    component: dict[str, int] = {}
    cycles: list[list[str]] = []
    for comp in comps:
        is_cycle = len(comp) > 1 or any(e.target == comp[0] for e in out_edges[comp[0]])
        cid = len(cycles) if is_cycle else -1
        if is_cycle:
            order = {nid: i for i, nid in enumerate(nodes)}
            cycles.append(sorted(comp, key=order.__getitem__))
        for nid in comp:
            component[nid] = cid

    # Declared entry points root the search first so that the edge back into them is the back edge;
    # the remaining nodes root it afterwards so that cycles reachable from nowhere are classified too.
    roots = list(dict.fromkeys(start + [nid for nid in bp.metadata.cycle_entry_points if nid in nodes]))
    reached = _reachable(roots, succ)
    back = _back_edges(roots + list(nodes), succ)

    fwd_preds: dict[str, list[str]] = {}
    for nid, edges in in_edges.items():
        fwd_preds[nid] = list(dict.fromkeys(e.source for e in edges if (e.source, e.target) not in back))
    reachable_terminals = frozenset(t for t in terminal if t in reached)
    loops, node_loops = _natural_loops(back, in_edges, succ)
    return CompiledGraph(
        blueprint=bp,
        nodes=nodes,
        out_edges=out_edges,
        in_edges=in_edges,
        start_node_ids=start,
        terminal_node_ids=terminal,
        back_edges=frozenset(back),
        component=component,
        cycles=cycles,
        forward_predecessors=fwd_preds,
        reachable_terminals=reachable_terminals,
        version=bp.version,
        out_positions=_out_positions(out_edges),
        loops=loops,
        node_loops=node_loops,
    )


def fallback_node_ids(bp: WorkflowBlueprint) -> set[str]:
    """Ids of nodes that another node's ``config.fallback`` names."""
    ids = {n.id for n in bp.nodes}
    return {n.config.fallback for n in bp.nodes
            if n.config.fallback is not None and n.config.fallback in ids and n.config.fallback != n.id}


def _natural_loops(back: set[tuple[str, str]], in_edges: dict[str, list[EdgeDefinition]],
                   succ: dict[str, list[str]]) -> tuple[dict[str, Loop], dict[str, tuple[str, ...]]]:
    """Each back edge's natural loop (merged per header), nested by body containment."""
    bodies: dict[str, set[str]] = {}
    sources: dict[str, set[str]] = {}
    for source, header in back:
        body = bodies.setdefault(header, {header})
        sources.setdefault(header, set()).add(source)
        todo = [source]
        while todo:
            nid = todo.pop()
            if nid in body:
                continue
            body.add(nid)
            todo.extend(e.source for e in in_edges.get(nid, []))
        # Only nodes on a cycle through the header belong to it (an irreducible graph could otherwise
        # pull in nodes before the loop).
        body &= _reachable([header], succ)
    # Outer loops are larger; a loop's depth is one more than the loops whose bodies contain its own.
    ordered = sorted(bodies, key=lambda h: (-len(bodies[h]), h))
    loops: dict[str, Loop] = {}
    for header in ordered:
        members = frozenset(bodies[header])
        depth = 1 + sum(1 for other in loops.values() if members < other.body)
        loops[header] = Loop(header, members, depth, frozenset(sources[header]))
    node_loops: dict[str, tuple[str, ...]] = {}
    for header in sorted(loops, key=lambda h: loops[h].depth):
        for nid in loops[header].body:
            node_loops[nid] = (*node_loops.get(nid, ()), header)
    return loops, node_loops


def _out_positions(out_edges: dict[str, list[EdgeDefinition]]) -> dict[str, dict[str, list[int]]]:
    positions: dict[str, dict[str, list[int]]] = {}
    for source, edges in out_edges.items():
        by_target = positions.setdefault(source, {})
        for i, edge in enumerate(edges):
            by_target.setdefault(edge.target, []).append(i)
    return positions


def _reachable(roots: list[str], succ: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(succ.get(node, []))
    return seen


def entry_node_ids(graph: CompiledGraph) -> list[str]:
    """Nodes a run starts with: start nodes, or declared cycle entry points when there are none."""
    if graph.start_node_ids:
        return list(graph.start_node_ids)
    return [nid for nid in graph.blueprint.metadata.cycle_entry_points if nid in graph.nodes]
