"""Blueprint models: the wire format of Flowcraft workflows (camelCase JSON, snake_case Python)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .errors import BlueprintError

JoinStrategy = Literal["all", "any"]


class _WireModel(BaseModel):
    """Base for models that speak camelCase on the wire and keep unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="allow",
        frozen=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """Dump as the JSON shape Flowcraft uses (camelCase, no unset fields)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class NodeConfig(_WireModel):
    """Per-node execution settings: retries, delay and timeout in ms, fallback, join strategy."""

    max_retries: int = Field(default=1, ge=1, le=100)
    retry_delay: float = Field(default=0, ge=0)
    timeout: float | None = Field(default=None, gt=0)
    fallback: str | None = None
    # Kept as a plain string so that lint can report an unknown strategy with its path
    # instead of failing the whole model.
    join_strategy: str = "all"


class NodeDefinition(_WireModel):
    """One node of a blueprint: its id, the implementation it uses, params, inputs and config."""

    id: str = Field(min_length=1, max_length=256)
    uses: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: str | dict[str, str] | None = None
    config: NodeConfig = Field(default_factory=NodeConfig)


class EdgeDefinition(_WireModel):
    """A directed edge, optionally guarded by an action and a condition, with an input transform."""

    source: str
    target: str
    action: str | None = None
    condition: str | None = None
    transform: str | None = None


class BlueprintMetadata(_WireModel):
    """Optional blueprint metadata: a version and the declared entry points of cycles."""

    version: str | None = None
    cycle_entry_points: list[str] = Field(default_factory=list)


class WorkflowBlueprint(_WireModel):
    """A workflow: nodes, edges and metadata."""

    id: str = Field(min_length=1, max_length=256)
    nodes: list[NodeDefinition]
    edges: list[EdgeDefinition] = Field(default_factory=list)
    metadata: BlueprintMetadata = Field(default_factory=BlueprintMetadata)

    @property
    def version(self) -> str:
        """The declared version, or a content hash so that a changed blueprint is detected."""
        if self.metadata.version:
            return self.metadata.version
        import hashlib

        body = json.dumps(self.to_wire(), sort_keys=True, separators=(",", ":"))
        return "sha1:" + hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()[:16]

    def node(self, node_id: str) -> NodeDefinition | None:
        """The node with this id, if any."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None


def _format_validation_error(exc: ValidationError, where: str) -> BlueprintError:
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        problems.append(f"{path}: {err['msg']}")
    return BlueprintError(f"invalid blueprint {where}", problems)


def parse_blueprint(data: Any, *, default_id: str | None = None, where: str = "") -> WorkflowBlueprint:
    """Validate a blueprint dict, using default_id when the JSON has no id; raise BlueprintError."""
    if not isinstance(data, dict):
        raise BlueprintError(f"invalid blueprint {where}".strip(), ["(root): expected a JSON object"])
    if default_id is not None and not data.get("id"):
        data = {**data, "id": default_id}
    try:
        return WorkflowBlueprint.model_validate(data)
    except ValidationError as exc:
        error = _format_validation_error(exc, where or repr(data.get("id", "?")))
        # Graph problems are reported with the schema ones, not after the author fixed those.
        raise BlueprintError(error.message, error.problems + _raw_graph_problems(data)) from None


def _raw_graph_problems(data: dict[str, Any]) -> list[str]:
    """Duplicate node ids and dangling edges of a blueprint dict that does not validate."""
    raw_nodes, raw_edges = data.get("nodes"), data.get("edges")
    nodes: list[Any] = raw_nodes if isinstance(raw_nodes, list) else []
    edges: list[Any] = raw_edges if isinstance(raw_edges, list) else []
    problems: list[str] = []
    first: dict[str, int] = {}
    for i, node in enumerate(nodes):
        nid = node.get("id") if isinstance(node, dict) else None
        if not isinstance(nid, str):
            continue
        if nid in first:
            problems.append(f"nodes[{i}].id: duplicate node id {nid!r} (first defined at nodes[{first[nid]}])")
        else:
            first[nid] = i
    for i, edge in enumerate(edges):
        if not isinstance(edge, dict):
            continue
        for end in ("source", "target"):
            value = edge.get(end)
            if isinstance(value, str) and value not in first:
                problems.append(f"edges[{i}].{end}: edge {edge.get('source')!r} -> {edge.get('target')!r}: "
                                f"{end} {value!r} is not a node")
    return problems


def load_blueprints(path: str | Path) -> dict[str, WorkflowBlueprint]:
    """Load one blueprint file or every ``*.json`` below a folder, keyed by id (file name when absent)."""
    root = Path(path)
    files = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    if not files or not files[0].exists():
        raise BlueprintError(f"no blueprint found at {root}", [f"{root}: no such file or no *.json inside"])
    result: dict[str, WorkflowBlueprint] = {}
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BlueprintError(
                f"invalid JSON in {file}", [f"{file}:{exc.lineno}:{exc.colno}: {exc.msg}"]
            ) from None
        bp = parse_blueprint(data, default_id=file.stem, where=str(file))
        if bp.id in result:
            raise BlueprintError(f"duplicate blueprint id {bp.id!r}", [f"{file}: id {bp.id!r} already loaded"])
        result[bp.id] = bp
    return result
