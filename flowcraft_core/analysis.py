"""Static facts about a blueprint (entry and exit nodes, cycles) and a Mermaid diagram of it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .builtins import names
from .graph import compile_graph
from .models import EdgeDefinition, WorkflowBlueprint


@dataclass(frozen=True)
class BlueprintAnalysis:
    """Entry and exit nodes, cycles and size of one blueprint."""

    start_node_ids: list[str]
    terminal_node_ids: list[str]
    cycles: list[list[str]]
    is_dag: bool
    node_count: int
    edge_count: int

    def to_dict(self) -> dict[str, Any]:
        """The analysis in the camelCase shape Flowcraft's ``analyzeBlueprint`` returns."""
        return {
            "startNodeIds": list(self.start_node_ids),
            "terminalNodeIds": list(self.terminal_node_ids),
            "cycles": [list(c) for c in self.cycles],
            "isDag": self.is_dag,
            "nodeCount": self.node_count,
            "edgeCount": self.edge_count,
        }


def analyze_blueprint(bp: WorkflowBlueprint) -> BlueprintAnalysis:
    """Start and terminal nodes, cycles (strongly connected components) and counts of a blueprint."""
    graph = compile_graph(bp)
    return BlueprintAnalysis(
        start_node_ids=list(graph.start_node_ids),
        terminal_node_ids=list(graph.terminal_node_ids),
        cycles=[list(c) for c in graph.cycles],
        is_dag=graph.is_dag,
        # Counts are of what the author wrote, so duplicates and dangling edges still show up here
        # (lint reports them); the graph itself ignores them.
        node_count=len(bp.nodes),
        edge_count=len(bp.edges),
    )


# --- Mermaid ---------------------------------------------------------------------------------------

# Longest edge-label part (condition, transform, action) before it is cut with an ellipsis: a diagram
# is for reading the shape of a workflow, and long expressions make Mermaid lay it out badly.
MAX_LABEL_PART = 40

# Characters that Mermaid's lexer may read as syntax even inside a quoted label, or that its HTML
# rendering would interpret, written as Mermaid's own ``#<decimal>;`` entity codes. Mapping one
# character at a time (rather than chained replaces) means ``#`` and ``;`` are never escaped twice.
_MERMAID_ESCAPES: dict[str, str] = {ch: f"#{ord(ch)};" for ch in '"#&<>|;`{}[]()\\'}

# Shapes (opening, closing) per built-in node type, so that control nodes stand out from tasks.
_SHAPES: dict[str, tuple[str, str]] = {
    names.SUBFLOW: ("[[", "]]"),  # subroutine: runs another blueprint
    names.WAIT: ("{{", "}}"),  # hexagon: pauses for the outside world
    names.WEBHOOK: ("{{", "}}"),
    names.SLEEP: ("([", "])"),  # stadium: a timer
    names.LOOP_CONTROLLER: ("{", "}"),  # rhombus: a decision to go round again
    names.BATCH_SCATTER: ("[/", "/]"),  # parallelograms: fan out, fan in
    names.BATCH_GATHER: ("[\\", "\\]"),
}
_DEFAULT_SHAPE = ("[", "]")

_NON_ID_CHARS = re.compile(r"[^A-Za-z0-9_]+")


def mermaid_escape(text: str) -> str:
    """Make text safe inside a double-quoted Mermaid label (entities for syntax chars, no newlines)."""
    flat = " ".join(text.split())  # a newline would end the statement
    return "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in flat)


def _shorten(text: str, limit: int = MAX_LABEL_PART) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _edge_label(edge: EdgeDefinition) -> str:
    parts: list[str] = []
    if edge.action:
        parts.append(_shorten(edge.action))
    if edge.condition:
        parts.append("if " + _shorten(edge.condition))
    if edge.transform:
        parts.append("⇒ " + _shorten(edge.transform))
    return " · ".join(parts)


class _IdAllocator:
    """Gives every blueprint node id a unique Mermaid id.

    Blueprint ids may hold spaces, dashes, dots or quotes, and may collide with Mermaid keywords
    (``end``, ``graph``); a numbered prefix keeps the result valid and unique while the sanitized
    suffix keeps the source readable.
    """

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __call__(self, node_id: str) -> str:
        if node_id not in self._ids:
            suffix = _NON_ID_CHARS.sub("_", node_id).strip("_")[:40]
            self._ids[node_id] = f"n{len(self._ids)}" + (f"_{suffix}" if suffix else "")
        return self._ids[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._ids


def generate_mermaid(bp: WorkflowBlueprint) -> str:
    """A ``flowchart TD`` Mermaid diagram of the blueprint, ready to paste into Markdown."""
    graph = compile_graph(bp)
    mid = _IdAllocator()
    lines = ["flowchart TD"]
    if not bp.nodes:
        lines.append('    empty["(empty blueprint)"]')
        return "\n".join(lines) + "\n"

    for node in bp.nodes:
        if node.id in mid:
            continue  # a duplicate id is drawn once; lint reports it
        opening, closing = _SHAPES.get(node.uses, _DEFAULT_SHAPE)
        label = f"{mermaid_escape(node.id)}<br/><i>{mermaid_escape(node.uses)}</i>"
        lines.append(f'    {mid(node.id)}{opening}"{label}"{closing}')

    # Edges naming unknown nodes are still drawn, to a visibly broken placeholder, so the diagram
    # shows the mistake instead of hiding it.
    missing: list[str] = []
    for edge in bp.edges:
        for end in (edge.source, edge.target):
            if end not in mid:
                missing.append(mid(end))
                lines.append(f'    {mid(end)}["{mermaid_escape(end)}<br/><i>unknown node</i>"]')

    for edge in bp.edges:
        # Back edges start the next loop iteration: dashed, so loops read as loops.
        arrow = "-.->" if graph.is_back_edge(edge) else "-->"
        label = _edge_label(edge)
        pipe = f'|"{mermaid_escape(label)}"|' if label else ""
        lines.append(f"    {mid(edge.source)} {arrow}{pipe} {mid(edge.target)}")

    if missing:
        lines.append("    classDef missing stroke:#c00,stroke-dasharray:4 2,color:#c00")
        lines.append(f"    class {','.join(missing)} missing")
    return "\n".join(lines) + "\n"
