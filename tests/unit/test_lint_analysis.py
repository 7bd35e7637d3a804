"""Blueprint lint (SPEC case 14 and every other check), analysis and the Mermaid diagram."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flowcraft_core.analysis import BlueprintAnalysis, analyze_blueprint, generate_mermaid, mermaid_escape
from flowcraft_core.errors import BlueprintError
from flowcraft_core.lint import LintIssue, lint_blueprint, validate_blueprint
from flowcraft_core.models import WorkflowBlueprint, load_blueprints

# Registry stand-in: lint only asks whether a key is present.
REGISTRY: dict[str, Any] = {
    k: object() for k in ("task", "llm-process", "llm-condition", "llm-router", "output")
}


def _fixtures_dir() -> Path:
    # The sample app ships the fixtures unchanged (test_workflows_nodes compares them byte for byte with
    # shared/fixtures when it sits beside the repo), so they are always here.
    override = os.environ.get("FLOWCRAFT_DECLARATIVE_FIXTURES", "")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "workflows" / "blueprints"


FIXTURES = _fixtures_dir()


def bp(
    nodes: list[dict[str, Any]], edges: Sequence[tuple[str, str] | dict[str, Any]] = (), **extra: Any
) -> WorkflowBlueprint:
    """A blueprint from terse nodes ({'id', 'uses'?...}) and (source, target) edge tuples."""
    return WorkflowBlueprint.model_validate(
        {
            "id": extra.pop("id", "t"),
            "nodes": [{"uses": "task", **n} for n in nodes],
            "edges": [e if isinstance(e, dict) else {"source": e[0], "target": e[1]} for e in edges],
            **extra,
        }
    )


def n(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i} for i in ids]


def codes(issues: list[LintIssue]) -> list[tuple[str, str]]:
    return [(i.path, i.code) for i in issues]


# --- lint -----------------------------------------------------------------------------------------


def test_case14_every_problem_reported_together_with_paths() -> None:
    blueprint = bp(
        [{"id": "a"}, {"id": "b", "uses": "no-such-thing"}, {"id": "a"}, {"id": "c"}],
        [("a", "b"), ("b", "ghost"), ("phantom", "c")],
    )
    issues = lint_blueprint(blueprint, REGISTRY)
    assert codes(issues) == [
        ("nodes[1].uses", "unknown-implementation"),
        ("nodes[2].id", "duplicate-node-id"),
        ("edges[1].target", "dangling-edge"),
        ("edges[2].source", "dangling-edge"),
    ]
    text = [str(i) for i in issues]
    assert "nodes[1].uses: node 'b' uses 'no-such-thing', which is neither registered nor built in" in text
    assert any(t.startswith("nodes[2].id: duplicate node id 'a'") and "nodes[0]" in t for t in text)
    assert any(t.startswith("edges[1].target:") and "'ghost'" in t for t in text)

    with pytest.raises(BlueprintError) as info:
        validate_blueprint(blueprint, REGISTRY)
    assert info.value.message == "blueprint 't' has 4 problem(s)"
    assert info.value.problems == text


def test_blueprint_error_lists_each_problem_on_its_own_line() -> None:
    blueprint = bp([{"id": "a", "uses": "x"}, {"id": "a", "uses": "y"}], [("a", "z")])
    with pytest.raises(BlueprintError) as info:
        validate_blueprint(blueprint, REGISTRY)
    lines = str(info.value).splitlines()
    assert lines[0] == "blueprint 't' has 4 problem(s)"
    assert len(lines) == 1 + len(info.value.problems)
    for line, problem in zip(lines[1:], info.value.problems, strict=True):
        assert line.strip() == f"- {problem}"


def test_clean_blueprint_has_no_issues_and_validates() -> None:
    blueprint = bp(n("a", "b", "c"), [("a", "b"), ("b", "c")])
    assert lint_blueprint(blueprint, REGISTRY) == []
    validate_blueprint(blueprint, REGISTRY)


def test_lint_issue_str_and_frozen() -> None:
    issue = LintIssue("edges[0].target", "dangling-edge", "nope")
    assert str(issue) == "edges[0].target: nope"
    with pytest.raises(AttributeError):
        issue.code = "x"  # type: ignore[misc]


def test_implementations_checked_only_with_a_registry() -> None:
    blueprint = bp([{"id": "a", "uses": "mystery", "config": {"fallback": "also-mystery"}}])
    assert lint_blueprint(blueprint) == []
    assert codes(lint_blueprint(blueprint, REGISTRY)) == [
        ("nodes[0].uses", "unknown-implementation"),
        ("nodes[0].config.fallback", "unknown-fallback"),
    ]


def test_builtins_need_no_registration() -> None:
    blueprint = bp(
        [
            {"id": "s", "uses": "sleep", "params": {"duration": 10}},
            {"id": "w", "uses": "wait"},
            {"id": "h", "uses": "webhook"},
            {"id": "f", "uses": "task", "config": {"fallback": "wait"}},
        ],
        [("s", "w"), ("w", "h"), ("h", "f")],
    )
    assert lint_blueprint(blueprint, {"task": object()}) == []


def test_fallback_known_in_registry_is_fine() -> None:
    blueprint = bp([{"id": "a", "config": {"fallback": "output"}}])
    assert lint_blueprint(blueprint, REGISTRY) == []


def test_bad_join_strategy() -> None:
    blueprint = bp([{"id": "a"}, {"id": "b", "config": {"joinStrategy": "some"}}], [("a", "b")])
    issues = lint_blueprint(blueprint)
    assert codes(issues) == [("nodes[1].config.joinStrategy", "bad-join-strategy")]
    assert "'some'" in issues[0].message


def test_unexplained_cycle_points_at_the_closing_edge() -> None:
    blueprint = bp(n("start", "a", "b", "end"), [("start", "a"), ("a", "b"), ("b", "a"), ("b", "end")])
    issues = lint_blueprint(blueprint)
    assert codes(issues) == [("edges[2]", "unexplained-cycle")]
    assert "'a' -> 'b'" in issues[0].message


def test_cycle_explained_by_entry_point() -> None:
    blueprint = bp(
        n("start", "a", "b"), [("start", "a"), ("a", "b"), ("b", "a")], metadata={"cycleEntryPoints": ["b"]}
    )
    assert lint_blueprint(blueprint) == []


def test_cycle_explained_by_loop_controller() -> None:
    blueprint = bp(
        [
            {"id": "start"},
            {"id": "body"},
            {"id": "ctl", "uses": "loop-controller", "params": {"condition": "context.count < 3"}},
            {"id": "done"},
        ],
        [
            ("start", "body"),
            ("body", "ctl"),
            {"source": "ctl", "target": "body", "action": "continue"},
            {"source": "ctl", "target": "done", "action": "break"},
        ],
    )
    assert lint_blueprint(blueprint, REGISTRY) == []


def test_each_unexplained_cycle_reported_and_self_loop_counts() -> None:
    blueprint = bp(
        n("s", "a", "b", "c"),
        [("s", "a"), ("a", "a"), ("s", "b"), ("b", "c"), ("c", "b")],
        metadata={"cycleEntryPoints": []},
    )
    assert codes(lint_blueprint(blueprint)) == [
        ("edges[1]", "unexplained-cycle"),
        ("edges[4]", "unexplained-cycle"),
    ]


def test_no_start_node() -> None:
    blueprint = bp(n("a", "b"), [("a", "b"), ("b", "a")])
    found = codes(lint_blueprint(blueprint))
    assert ("nodes", "no-start-node") in found
    assert ("edges[1]", "unexplained-cycle") in found


def test_no_start_node_but_entry_point_declared_is_fine() -> None:
    blueprint = bp(n("a", "b"), [("a", "b"), ("b", "a")], metadata={"cycleEntryPoints": ["a"]})
    assert lint_blueprint(blueprint) == []


def test_empty_blueprint_has_no_start_node() -> None:
    assert codes(lint_blueprint(bp([]))) == [("nodes", "no-start-node")]


def test_unknown_cycle_entry_point() -> None:
    blueprint = bp(n("a"), metadata={"cycleEntryPoints": ["a", "nowhere"]})
    issues = lint_blueprint(blueprint)
    assert codes(issues) == [("metadata.cycleEntryPoints[1]", "unknown-node")]


@pytest.mark.parametrize(
    "field, expr",
    [
        ("condition", "__import__('os').system('true')"),
        ("condition", "result.__class__.__mro__"),
        ("condition", "(lambda: 1)()"),
        ("transform", "result.output +"),
        ("condition", "x" * 20_000),
    ],
)
def test_bad_expression(field: str, expr: str) -> None:
    blueprint = bp(n("a", "b"), [{"source": "a", "target": "b", field: expr}])
    issues = lint_blueprint(blueprint)
    assert codes(issues) == [(f"edges[0].{field}", "bad-expression")]
    assert len(issues[0].message) < 400  # a huge expression is not echoed back in full


def test_good_expressions_pass() -> None:
    blueprint = bp(
        n("a", "b"),
        [
            {
                "source": "a",
                "target": "b",
                "condition": "result.output.score > 0.5",
                "transform": "result.output.value",
            }
        ],
    )
    assert lint_blueprint(blueprint) == []


def test_subflow_params() -> None:
    blueprint = bp(
        [
            {"id": "no_id", "uses": "subflow"},
            {"id": "known", "uses": "subflow", "params": {"blueprintId": "child"}},
            {"id": "unknown", "uses": "subflow", "params": {"blueprintId": "nope", "inputs": ["x"]}},
        ],
        [("no_id", "known"), ("known", "unknown")],
    )
    child = bp(n("c"), id="child")
    without_catalog = codes(lint_blueprint(blueprint))
    assert without_catalog == [
        ("nodes[0].params.blueprintId", "missing-param"),
        ("nodes[2].params.inputs", "bad-param"),
    ]
    with_catalog = codes(lint_blueprint(blueprint, blueprints={"child": child}))
    assert with_catalog == [
        ("nodes[0].params.blueprintId", "missing-param"),
        ("nodes[2].params.blueprintId", "unknown-subflow"),
        ("nodes[2].params.inputs", "bad-param"),
    ]


def test_batch_scatter_params() -> None:
    blueprint = bp(
        [
            {"id": "s1", "uses": "batch-scatter"},
            {"id": "s2", "uses": "batch-scatter", "params": {"workerUsesKey": "ghost", "gatherNodeId": "g9"}},
            {"id": "s3", "uses": "batch-scatter", "params": {"workerUsesKey": "task", "gatherNodeId": "g"}},
            {"id": "g", "uses": "batch-gather", "params": {"gatherNodeId": "g"}},
        ],
        [("s1", "s2"), ("s2", "s3"), ("s3", "g")],
    )
    assert codes(lint_blueprint(blueprint, REGISTRY)) == [
        ("nodes[0].params.workerUsesKey", "missing-param"),
        ("nodes[0].params.gatherNodeId", "missing-param"),
        ("nodes[1].params.workerUsesKey", "unknown-implementation"),
        ("nodes[1].params.gatherNodeId", "unknown-node"),
    ]


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, "missing-param"),
        ({"duration": -1}, "bad-param"),
        ({"duration": True}, "bad-param"),
        ({"duration": "soon"}, "bad-param"),
        ({"duration": 0}, None),
        ({"duration": 1500.5}, None),
        ({"duration": "5m"}, None),  # Flowcraft's string forms
        ({"duration": "500ms"}, None),
        ({"duration": "2h"}, None),
        ({"duration": "1d"}, None),
        ({"duration": "5 minutes"}, "bad-param"),
        ({"duration": "1.5s"}, "bad-param"),
        ({"duration": "5w"}, "bad-param"),
    ],
)
def test_sleep_duration(params: dict[str, Any], expected: str | None) -> None:
    issues = lint_blueprint(bp([{"id": "z", "uses": "sleep", "params": params}]))
    assert codes(issues) == ([("nodes[0].params.duration", expected)] if expected else [])


def test_loop_controller_params() -> None:
    blueprint = bp(
        [
            {"id": "l1", "uses": "loop-controller"},
            {"id": "l2", "uses": "loop-controller", "params": {"condition": "__import__('os')"}},
            {"id": "l3", "uses": "loop-controller", "params": {"condition": "True", "maxIterations": 0}},
        ],
        [("l1", "l2"), ("l2", "l3")],
    )
    assert codes(lint_blueprint(blueprint)) == [
        ("nodes[0].params.condition", "missing-param"),
        ("nodes[1].params.condition", "bad-expression"),
        ("nodes[2].params.maxIterations", "bad-param"),
    ]


def test_awkward_node_ids_are_not_a_problem() -> None:
    # Ids are hashed into Cosmos item ids, so '/', '#', '?', spaces and quotes are all fine.
    ids = ["a/b", "c#d", "e?f", "g h", 'say "hi"', "x\\y"]
    blueprint = bp(n(*ids), list(itertools.pairwise(ids)))
    assert lint_blueprint(blueprint, REGISTRY) == []


def test_declarative_fixtures_lint_clean() -> None:
    assert FIXTURES is not None
    catalog = load_blueprints(FIXTURES)
    for blueprint in catalog.values():
        assert lint_blueprint(blueprint, REGISTRY, blueprints=catalog) == [], blueprint.id


def test_fixture_with_missing_child_blueprint_reports_unknown_subflow() -> None:
    assert FIXTURES is not None
    catalog = load_blueprints(FIXTURES)
    partial = {k: v for k, v in catalog.items() if k != "401"}
    issues = lint_blueprint(catalog["400"], REGISTRY, blueprints=partial)
    assert codes(issues) == [("nodes[4].params.blueprintId", "unknown-subflow")]


# --- analysis -------------------------------------------------------------------------------------


def test_analysis_of_a_diamond() -> None:
    result = analyze_blueprint(bp(n("a", "b", "c", "d"), [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]))
    assert result == BlueprintAnalysis(
        start_node_ids=["a"], terminal_node_ids=["d"], cycles=[], is_dag=True, node_count=4, edge_count=4
    )
    assert result.to_dict() == {
        "startNodeIds": ["a"],
        "terminalNodeIds": ["d"],
        "cycles": [],
        "isDag": True,
        "nodeCount": 4,
        "edgeCount": 4,
    }


def test_analysis_of_a_loop() -> None:
    result = analyze_blueprint(
        bp(
            n("init", "body", "check", "done"),
            [("init", "body"), ("body", "check"), ("check", "body"), ("check", "done")],
        )
    )
    assert result.start_node_ids == ["init"]
    assert result.terminal_node_ids == ["done"]
    assert result.cycles == [["body", "check"]]
    assert result.is_dag is False
    assert result.to_dict()["isDag"] is False


def test_analysis_counts_what_was_written() -> None:
    result = analyze_blueprint(bp(n("a", "a", "b"), [("a", "b"), ("b", "ghost")]))
    assert (result.node_count, result.edge_count) == (3, 2)
    assert result.start_node_ids == ["a"]
    assert result.terminal_node_ids == ["b"]


def test_analysis_of_every_declarative_fixture() -> None:
    assert FIXTURES is not None
    catalog = load_blueprints(FIXTURES)
    assert set(catalog) == {"100", "200", "201", "202", "300", "301", "302", "400", "401", "402", "403"}
    for blueprint in catalog.values():
        result = analyze_blueprint(blueprint)
        assert result.is_dag and result.cycles == [], blueprint.id
        assert result.start_node_ids and result.terminal_node_ids, blueprint.id
        assert result.node_count == len(blueprint.nodes)
        assert result.edge_count == len(blueprint.edges)
    moderation = analyze_blueprint(catalog["400"])
    assert moderation.start_node_ids == ["check_for_pii", "check_for_hate_speech", "check_for_spam"]
    assert moderation.terminal_node_ids == ["final_log"]
    assert (moderation.node_count, moderation.edge_count) == (9, 11)
    assert analyze_blueprint(catalog["200"]).start_node_ids == ["extract_skills", "analyze_tone"]
    assert analyze_blueprint(catalog["302"]).terminal_node_ids == ["output_ticket", "output_reply"]


# --- Mermaid --------------------------------------------------------------------------------------

_MERMAID_ID = r"n\d+(?:_[A-Za-z0-9_]+)?"
_OPENINGS = r"\[\[|\{\{|\(\[|\[/|\[\\|\{|\["
_CLOSINGS = r"\]\]|\}\}|\]\)|/\]|\\\]|\}|\]"
_NODE_LINE = re.compile(rf'^    ({_MERMAID_ID})({_OPENINGS})"([^"]*)"({_CLOSINGS})$')
_EDGE_LINE = re.compile(rf'^    ({_MERMAID_ID}) (-->|-\.->)(?:\|"([^"]*)"\|)? ({_MERMAID_ID})$')


def _parse_mermaid(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, str | None, str]]]:
    """Split a diagram into node declarations and edges, failing on any line that is neither."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "flowchart TD"
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str, str | None, str]] = []
    for line in lines[1:]:
        if m := _NODE_LINE.match(line):
            assert m.group(1) not in nodes, f"node declared twice: {line}"
            nodes[m.group(1)] = (m.group(2), m.group(3))
        elif m := _EDGE_LINE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3), m.group(4)))
        elif line.startswith(("    classDef ", "    class ")):
            continue
        else:
            pytest.fail(f"unexpected Mermaid line: {line!r}")
    for src, _, _, dst in edges:
        assert src in nodes and dst in nodes
    return nodes, edges


def test_mermaid_of_every_fixture_shows_every_node_and_edge_label() -> None:
    assert FIXTURES is not None
    for blueprint in load_blueprints(FIXTURES).values():
        text = generate_mermaid(blueprint)
        nodes, edges = _parse_mermaid(text)
        assert len(nodes) == len(blueprint.nodes)
        assert len(edges) == len(blueprint.edges)  # one line per edge
        labels = [label for _, label in nodes.values()]
        for node in blueprint.nodes:
            assert any(lab.startswith(node.id + "<br/>") and node.uses in lab for lab in labels), node.id
        for edge, (_, arrow, label, _) in zip(blueprint.edges, edges, strict=True):
            assert arrow == "-->"
            if edge.action:
                assert label == edge.action
            else:
                assert label is None


def test_mermaid_subflow_shape() -> None:
    assert FIXTURES is not None
    text = generate_mermaid(load_blueprints(FIXTURES)["400"])
    assert re.search(r'n\d+_ban_user_branch\[\["ban_user_branch<br/><i>subflow</i>"\]\]', text)
    assert re.search(r'n\d+_final_log\["final_log<br/><i>output</i>"\]', text)


def test_mermaid_sanitizes_ids_and_escapes_labels() -> None:
    ids = ['say "hi"', "end", "a-b.c d", "a_b_c_d", "x|y;z"]
    blueprint = bp(
        n(*ids),
        [
            {"source": ids[0], "target": ids[1], "condition": 'result.output == "a<b>"'},
            {"source": ids[1], "target": ids[2], "action": "go|now"},
            (ids[2], ids[3]),
            (ids[3], ids[4]),
        ],
    )
    text = generate_mermaid(blueprint)
    nodes, edges = _parse_mermaid(text)
    assert len(nodes) == 5 and len(set(nodes)) == 5  # 'a-b.c d' and 'a_b_c_d' stay distinct
    assert all(re.fullmatch(_MERMAID_ID, mid) for mid in nodes)
    assert "end" not in {mid for mid in nodes}  # a Mermaid keyword is never used as a bare id
    labels = {label.split("<br/>")[0] for _, label in nodes.values()}
    assert "say #34;hi#34;" in labels
    assert "x#124;y#59;z" in labels
    assert edges[0][2] == "if result.output == #34;a#60;b#62;#34;"
    assert edges[1][2] == "go#124;now"
    assert edges[2][2] is None


def test_mermaid_escape_is_single_pass() -> None:
    assert mermaid_escape("#;") == "#35;#59;"
    assert mermaid_escape("line one\nline two") == "line one line two"


def test_mermaid_truncates_long_conditions() -> None:
    cond = "context.value > 1 and " * 10 + "True"
    text = generate_mermaid(bp(n("a", "b"), [{"source": "a", "target": "b", "condition": cond}]))
    _, edges = _parse_mermaid(text)
    label = edges[0][2]
    assert label is not None and label.startswith("if context.value #62; 1 and") and label.endswith("…")
    assert len(label) < 80


def test_mermaid_loop_back_edge_is_dashed_and_builtin_shapes() -> None:
    blueprint = bp(
        [
            {"id": "start"},
            {"id": "body"},
            {"id": "ctl", "uses": "loop-controller", "params": {"condition": "True"}},
            {"id": "approve", "uses": "wait"},
            {"id": "hook", "uses": "webhook"},
            {"id": "nap", "uses": "sleep", "params": {"duration": 5}},
            {"id": "scatter", "uses": "batch-scatter"},
            {"id": "gather", "uses": "batch-gather"},
        ],
        [
            ("start", "body"),
            ("body", "ctl"),
            {"source": "ctl", "target": "body", "action": "continue"},
            {"source": "ctl", "target": "approve", "action": "break"},
            ("approve", "hook"),
            ("hook", "nap"),
            ("nap", "scatter"),
            ("scatter", "gather"),
        ],
    )
    nodes, edges = _parse_mermaid(generate_mermaid(blueprint))
    arrows = [arrow for _, arrow, _, _ in edges]
    assert arrows == ["-->", "-->", "-.->", "-->", "-->", "-->", "-->", "-->"]
    shape = {label.split("<br/>")[0]: opening for opening, label in nodes.values()}
    assert shape == {
        "start": "[",
        "body": "[",
        "ctl": "{",
        "approve": "{{",
        "hook": "{{",
        "nap": "([",
        "scatter": "[/",
        "gather": "[\\",
    }


def test_mermaid_draws_dangling_edges_to_a_marked_placeholder() -> None:
    text = generate_mermaid(bp(n("a", "a"), [("a", "ghost")]))
    nodes, edges = _parse_mermaid(text)
    assert len(nodes) == 2 and len(edges) == 1
    assert any(label == "ghost<br/><i>unknown node</i>" for _, label in nodes.values())
    assert "classDef missing" in text


def test_mermaid_of_an_empty_blueprint() -> None:
    assert generate_mermaid(bp([])).startswith("flowchart TD\n")
