"""Blueprint lint: every structural problem of a blueprint at once, each with its path.

Codes (stable, kebab-case):

- ``duplicate-node-id``: two nodes share an id (reported on every repeat).
- ``dangling-edge``: an edge's ``source`` or ``target`` names no node.
- ``unknown-node``: ``metadata.cycleEntryPoints`` or a ``batch-scatter``'s ``gatherNodeId`` names no node.
- ``unknown-implementation``: ``uses`` (or a scatter's ``workerUsesKey``) is neither registered nor built in.
- ``unknown-fallback``: ``config.fallback`` is neither a node of the blueprint nor registered nor built in.
- ``bad-join-strategy``: ``config.joinStrategy`` is not ``all`` or ``any``.
- ``unexplained-cycle``: a cycle with no declared entry point and no loop controller inside it.
- ``no-start-node``: nothing to start a run with (no node without incoming edges, no entry point).
- ``bad-expression``: an edge ``condition``/``transform`` or a loop condition the safe evaluator rejects.
- ``unknown-subflow``: a ``subflow``'s ``blueprintId`` names no known blueprint.
- ``missing-param``: a built-in node lacks a parameter it cannot run without.
- ``bad-param``: a built-in node's parameter has the wrong type or value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from .builtins.durations import ACCEPTED_FORMS, duration_ms
from .builtins.names import (
    BATCH_SCATTER,
    BUILTIN_NODE_TYPES,
    LOOP_CONTROLLER,
    SLEEP,
    SUBFLOW,
)
from .errors import BlueprintError, ExpressionError
from .graph import compile_graph, entry_node_ids
from .models import NodeDefinition, WorkflowBlueprint

if TYPE_CHECKING:
    from .expressions import SafeEvaluator

JOIN_STRATEGIES = frozenset({"all", "any"})


@dataclass(frozen=True)
class LintIssue:
    """One problem: where it is (``nodes[2].uses``), a short code and a human message."""

    path: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _nonempty_str(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip())


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `"duration": true` is a mistake, not one millisecond.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class _Linter:
    """Collects issues; one instance per lint call."""

    def __init__(
        self,
        bp: WorkflowBlueprint,
        registry: Mapping[str, Any] | None,
        blueprints: Mapping[str, WorkflowBlueprint] | None,
    ) -> None:
        self.bp = bp
        self.registry = registry
        self.blueprints = blueprints
        self.issues: list[LintIssue] = []
        self.node_ids = {n.id for n in bp.nodes}
        self._evaluator: SafeEvaluator | None = None

    def add(self, path: str, code: str, message: str) -> None:
        self.issues.append(LintIssue(path, code, message))

    def known_implementation(self, uses: str) -> bool:
        """True when uses is built in or registered; always True when no registry was given."""
        return self.registry is None or uses in BUILTIN_NODE_TYPES or uses in self.registry

    # --- expressions ------------------------------------------------------------------------------

    def check_expression(self, path: str, what: str, expr: Any) -> None:
        if not isinstance(expr, str):
            self.add(path, "bad-expression", f"{what} must be a string expression, got {type(expr).__name__}")
            return
        try:
            self._get_evaluator().check(expr)
        except ExpressionError as exc:
            reason = _quote(str(exc), 200, as_repr=False)
            self.add(path, "bad-expression", f"{what} {_quote(expr)} is rejected: {reason}")
        except (SyntaxError, ValueError, RecursionError) as exc:
            # The evaluator is expected to wrap these in ExpressionError; a lint pass must still
            # report the expression rather than crash if one slips through.
            reason = _quote(str(exc), 200, as_repr=False)
            self.add(path, "bad-expression", f"{what} {_quote(expr)} does not parse: {reason}")

    def _get_evaluator(self) -> SafeEvaluator:
        if self._evaluator is None:
            # Imported on first use: most blueprints have no expression, and the evaluator pulls in
            # simpleeval, which importing lint (e.g. for the HTTP API) should not pay for.
            from .expressions import SafeEvaluator

            self._evaluator = SafeEvaluator()
        return self._evaluator

    # --- checks -----------------------------------------------------------------------------------

    def run(self) -> list[LintIssue]:
        self.check_nodes()
        self.check_edges()
        self.check_metadata()
        self.check_graph()
        return self.issues

    def check_nodes(self) -> None:
        first_seen: dict[str, int] = {}
        for i, node in enumerate(self.bp.nodes):
            where = f"nodes[{i}]"
            if node.id in first_seen:
                self.add(
                    f"{where}.id",
                    "duplicate-node-id",
                    f"duplicate node id {node.id!r} (first defined at nodes[{first_seen[node.id]}])",
                )
            else:
                first_seen[node.id] = i
            if not self.known_implementation(node.uses):
                self.add(
                    f"{where}.uses",
                    "unknown-implementation",
                    f"node {node.id!r} uses {node.uses!r}, which is neither registered nor built in",
                )
            fallback = node.config.fallback
            if fallback is not None and fallback not in self.node_ids and not self.known_implementation(fallback):
                self.add(
                    f"{where}.config.fallback",
                    "unknown-fallback",
                    f"node {node.id!r} falls back to {fallback!r}, which is neither a node of the blueprint "
                    "nor a registered or built-in implementation",
                )
            if node.config.join_strategy not in JOIN_STRATEGIES:
                self.add(
                    f"{where}.config.joinStrategy",
                    "bad-join-strategy",
                    f"node {node.id!r} has join strategy {node.config.join_strategy!r}; "
                    "expected 'all' or 'any'",
                )
            self.check_builtin_params(where, node)

    def check_builtin_params(self, where: str, node: NodeDefinition) -> None:
        params = node.params
        pwhere = f"{where}.params"
        if node.uses == SUBFLOW:
            bid = params.get("blueprintId")
            if not _nonempty_str(bid):
                self.add(
                    f"{pwhere}.blueprintId",
                    "missing-param",
                    f"subflow node {node.id!r} needs params.blueprintId (the child blueprint's id)",
                )
            elif self.blueprints is not None and bid not in self.blueprints:
                self.add(
                    f"{pwhere}.blueprintId",
                    "unknown-subflow",
                    f"subflow node {node.id!r} runs blueprint {bid!r}, which is not loaded",
                )
            for key in ("inputs", "outputs"):
                mapping = params.get(key)
                if mapping is not None and not (
                    isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
                ):
                    self.add(
                        f"{pwhere}.{key}",
                        "bad-param",
                        f"subflow node {node.id!r}: params.{key} must map names to context keys (strings)",
                    )
        elif node.uses == BATCH_SCATTER:
            worker = params.get("workerUsesKey")
            if not _nonempty_str(worker):
                self.add(
                    f"{pwhere}.workerUsesKey",
                    "missing-param",
                    f"batch-scatter node {node.id!r} needs params.workerUsesKey (the workers' `uses`)",
                )
            elif not self.known_implementation(worker):
                self.add(
                    f"{pwhere}.workerUsesKey",
                    "unknown-implementation",
                    f"batch-scatter node {node.id!r} runs workers of {worker!r}, "
                    "which is neither registered nor built in",
                )
            gather = params.get("gatherNodeId")
            if not _nonempty_str(gather):
                self.add(
                    f"{pwhere}.gatherNodeId",
                    "missing-param",
                    f"batch-scatter node {node.id!r} needs params.gatherNodeId (its batch-gather node)",
                )
            elif gather not in self.node_ids:
                self.add(
                    f"{pwhere}.gatherNodeId",
                    "unknown-node",
                    f"batch-scatter node {node.id!r} gathers at {gather!r}, which is not a node",
                )
            chunk = params.get("chunkSize")
            if chunk is not None and not _positive_int(chunk):
                self.add(
                    f"{pwhere}.chunkSize",
                    "bad-param",
                    f"batch-scatter node {node.id!r}: params.chunkSize must be a positive integer",
                )
        elif node.uses == SLEEP:
            if "duration" not in params or params["duration"] is None:
                self.add(
                    f"{pwhere}.duration",
                    "missing-param",
                    f"sleep node {node.id!r} needs params.duration ({ACCEPTED_FORMS})",
                )
            else:
                try:
                    duration_ms(params["duration"])
                except ValueError as exc:
                    self.add(f"{pwhere}.duration", "bad-param", f"sleep node {node.id!r}: {exc}")
        elif node.uses == LOOP_CONTROLLER:
            if "condition" not in params or params["condition"] is None or params["condition"] == "":
                self.add(
                    f"{pwhere}.condition",
                    "missing-param",
                    f"loop-controller node {node.id!r} needs params.condition (go round again while true)",
                )
            else:
                self.check_expression(f"{pwhere}.condition", "loop condition", params["condition"])
            limit = params.get("maxIterations")
            if limit is not None and not _positive_int(limit):
                self.add(
                    f"{pwhere}.maxIterations",
                    "bad-param",
                    f"loop-controller node {node.id!r}: params.maxIterations must be a positive integer",
                )

    def check_edges(self) -> None:
        for i, edge in enumerate(self.bp.edges):
            where = f"edges[{i}]"
            for end in ("source", "target"):
                value = getattr(edge, end)
                if value not in self.node_ids:
                    self.add(
                        f"{where}.{end}",
                        "dangling-edge",
                        f"edge {edge.source!r} -> {edge.target!r}: {end} {value!r} is not a node",
                    )
            if edge.condition is not None:
                self.check_expression(f"{where}.condition", "condition", edge.condition)
            if edge.transform is not None:
                self.check_expression(f"{where}.transform", "transform", edge.transform)

    def check_metadata(self) -> None:
        for i, nid in enumerate(self.bp.metadata.cycle_entry_points):
            if nid not in self.node_ids:
                self.add(
                    f"metadata.cycleEntryPoints[{i}]",
                    "unknown-node",
                    f"cycle entry point {nid!r} is not a node",
                )

    def check_graph(self) -> None:
        if not self.bp.nodes:
            self.add("nodes", "no-start-node", "blueprint has no nodes")
            return
        graph = compile_graph(self.bp)
        if not entry_node_ids(graph):
            # With every node on a cycle a run has nowhere to begin unless one is declared.
            self.add(
                "nodes",
                "no-start-node",
                "no node lacks incoming edges and metadata.cycleEntryPoints names none: "
                "a run has nowhere to start",
            )
        entry_points = set(self.bp.metadata.cycle_entry_points)
        edge_index = {(e.source, e.target): i for i, e in reversed(list(enumerate(self.bp.edges)))}
        for cycle in graph.cycles:
            members = set(cycle)
            if members & entry_points:
                continue
            if any(graph.nodes[nid].uses == LOOP_CONTROLLER for nid in cycle):
                continue
            # Point at the edge that closes the loop: that is the one the author has to explain.
            closing = sorted(edge_index[b] for b in graph.back_edges if b[0] in members and b[1] in members)
            path = f"edges[{closing[0]}]" if closing else f"nodes[{self._node_index(cycle[0])}]"
            shown = " -> ".join(repr(n) for n in cycle[:6]) + (" -> ..." if len(cycle) > 6 else "")
            self.add(
                path,
                "unexplained-cycle",
                f"cycle through {shown} is not explained: list one of its nodes in "
                "metadata.cycleEntryPoints or route it through a loop-controller node",
            )

    def _node_index(self, node_id: str) -> int:
        return next(i for i, n in enumerate(self.bp.nodes) if n.id == node_id)


def _quote(text: str, limit: int = 60, as_repr: bool = True) -> str:
    # Expressions (and evaluator messages that echo them) can be huge; an issue stays one short line.
    short = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(short) if as_repr else short


def lint_blueprint(
    bp: WorkflowBlueprint,
    registry: Mapping[str, Any] | None = None,
    *,
    blueprints: Mapping[str, WorkflowBlueprint] | None = None,
) -> list[LintIssue]:
    """Every problem of the blueprint (implementations checked only when a registry is given)."""
    return _Linter(bp, registry, blueprints).run()


def validate_blueprint(
    bp: WorkflowBlueprint,
    registry: Mapping[str, Any] | None = None,
    *,
    blueprints: Mapping[str, WorkflowBlueprint] | None = None,
) -> None:
    """Raise BlueprintError listing every lint problem, one per line; return quietly when clean."""
    issues = lint_blueprint(bp, registry, blueprints=blueprints)
    if issues:
        raise BlueprintError(f"blueprint {bp.id!r} has {len(issues)} problem(s)", [str(i) for i in issues])
