"""The sample app's nodes, fake model and blueprint loading (no engine run, no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import workflows
from flowcraft_core.context import NodeContextView
from flowcraft_core.models import WorkflowBlueprint, load_blueprints
from flowcraft_core.nodes import CancelSignal, NodeContext, NodeResult
from workflows import fake_llm, llm
from workflows.nodes import (
    llm_condition,
    llm_process,
    llm_router,
    output_node,
    render_template,
    resolve_inputs,
)

SHARED_ENV = "FLOWCRAFT_SHARED_DIR"


def shared_fixtures() -> Path | None:
    """The shared declarative fixtures: from FLOWCRAFT_SHARED_DIR, else a shared/ beside the repo."""
    configured = os.environ.get(SHARED_ENV)
    shared = Path(configured) if configured else Path(__file__).resolve().parents[3] / "shared"
    fixtures = shared / "fixtures" / "declarative"
    return fixtures if fixtures.is_dir() else None


EXPECTED_IDS = {
    "1.blog-post": {"100"},
    "2.job-application": {"200", "201", "202"},
    "3.customer-review": {"300", "301", "302"},
    "4.content-moderation": {"400", "401", "402", "403"},
}


def make_ctx(base: dict[str, Any], params: dict[str, Any]) -> NodeContext:
    return NodeContext(
        context=NodeContextView(base),
        input=None,
        params=params,
        dependencies={},
        run_id="r",
        node_id="n",
        signal=CancelSignal(),
    )


def node_params(blueprint_id: str, node_id: str) -> dict[str, Any]:
    node = workflows.blueprints[blueprint_id].node(node_id)
    assert node is not None
    return dict(node.params)


@pytest.fixture(autouse=True)
def _default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test uses the offline stand-in, whatever the environment says."""
    monkeypatch.delenv(llm.COMPLETION_ENV_VAR, raising=False)
    llm.set_completion_function(None)


# --- input resolution --------------------------------------------------------------------------------


async def test_prefixed_output_wins_over_direct_key() -> None:
    view = NodeContextView({"_outputs.a": "from node", "a": "from context"})
    assert await resolve_inputs(view, {"x": "a"}) == {"x": "from node"}


async def test_direct_key_used_when_no_output() -> None:
    view = NodeContextView({"a": "from context"})
    assert await resolve_inputs(view, {"x": "a"}) == {"x": "from context"}


async def test_list_falls_back_in_order() -> None:
    view = NodeContextView({"second": "2", "_outputs.third": "3"})
    resolved = await resolve_inputs(view, {"x": ["first", "second", "third"], "y": ["first", "third"]})
    assert resolved == {"x": "2", "y": "3"}


async def test_first_source_key_wins_even_as_direct_key() -> None:
    # The order of the list matters more than the kind of key.
    view = NodeContextView({"first": "direct", "_outputs.second": "output"})
    assert await resolve_inputs(view, {"x": ["first", "second"]}) == {"x": "direct"}


async def test_missing_inputs_resolve_to_empty_string() -> None:
    view = NodeContextView({})
    assert await resolve_inputs(view, {"x": "nope", "y": ["a", "b"], "z": []}) == {"x": "", "y": "", "z": ""}


async def test_none_value_counts_as_absent() -> None:
    view = NodeContextView({"_outputs.a": None, "a": "fallback"})
    assert await resolve_inputs(view, {"x": "a"}) == {"x": "fallback"}


async def test_non_string_values_are_kept() -> None:
    view = NodeContextView({"_outputs.a": {"k": 1}, "n": 3})
    assert await resolve_inputs(view, {"x": "a", "y": "n"}) == {"x": {"k": 1}, "y": 3}


async def test_resolution_sees_the_nodes_own_writes() -> None:
    view = NodeContextView({})
    await view.set("late", "written")
    assert await resolve_inputs(view, {"x": "late"}) == {"x": "written"}


async def test_no_inputs_is_empty() -> None:
    assert await resolve_inputs(NodeContextView({}), None) == {}


async def test_malformed_inputs_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"params\.inputs must be a mapping"):
        await resolve_inputs(NodeContextView({}), ["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"params\.inputs\.x"):
        await resolve_inputs(NodeContextView({}), {"x": 5})


# --- template rendering ------------------------------------------------------------------------------


def test_render_replaces_every_occurrence() -> None:
    assert render_template("{{a}} and {{ b }} and {{a}}", {"a": "1", "b": "2"}) == "1 and 2 and 1"


def test_render_stringifies_values() -> None:
    assert render_template("{{n}}|{{t}}|{{d}}|{{e}}", {"n": 3, "t": True, "d": {"k": "v"}, "e": ""}) == (
        '3|True|{"k": "v"}|'
    )


def test_render_leaves_unknown_placeholders() -> None:
    assert render_template("hi {{who}}", {}) == "hi {{who}}"


def test_render_does_not_reinterpret_values() -> None:
    assert render_template("{{a}}", {"a": "{{b}}", "b": "no"}) == "{{b}}"


# --- the nodes ---------------------------------------------------------------------------------------


async def test_llm_process_renders_and_completes() -> None:
    seen: list[str] = []

    def model(prompt: str) -> str:
        seen.append(prompt)
        return "done"

    llm.set_completion_function(model)
    ctx = make_ctx({"topic": "DAGs"}, {"promptTemplate": "Write about {{t}}.", "inputs": {"t": "topic"}})
    result = await llm_process(ctx)
    assert result == NodeResult(output="done")
    assert seen == ["Write about DAGs."]


async def test_llm_process_default_is_fake_and_offline() -> None:
    ctx = make_ctx({"topic": "DAGs"}, {"promptTemplate": "Write about {{t}}.", "inputs": {"t": "topic"}})
    result = await llm_process(ctx)
    assert result.output == "[fake-llm] Write about DAGs."
    assert result.action is None


async def test_async_completion_function_is_awaited() -> None:
    async def model(prompt: str) -> str:
        return prompt.upper()

    llm.set_completion_function(model)
    result = await llm_process(make_ctx({}, {"promptTemplate": "abc"}))
    assert result.output == "ABC"


async def test_completion_function_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(llm.COMPLETION_ENV_VAR, "workflows.fake_llm:first_sentence")
    result = await llm_process(make_ctx({}, {"promptTemplate": "One. Two."}))
    assert result.output == "One."
    monkeypatch.setenv(llm.COMPLETION_ENV_VAR, "no-colon")
    with pytest.raises(ValueError, match=llm.COMPLETION_ENV_VAR):
        await llm_process(make_ctx({}, {"promptTemplate": "x"}))


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        ("true", "true"),
        ("True.", "true"),
        (" 'true' ", "true"),
        ("false", "false"),
        ("untrue", "false"),
        ("", "false"),
    ],
)
async def test_llm_condition_action(answer: str, action: str) -> None:
    llm.set_completion_function(lambda _prompt: answer)
    result = await llm_condition(make_ctx({}, {"promptTemplate": "?"}))
    assert result.action == action
    assert result.output == answer


@pytest.mark.parametrize(
    ("answer", "action"),
    [("action_redact", "action_redact"), ("  'action_ban'.\n", "action_ban"), ("", "default")],
)
async def test_llm_router_action_is_output(answer: str, action: str) -> None:
    llm.set_completion_function(lambda _prompt: answer)
    result = await llm_router(make_ctx({}, {"promptTemplate": "?"}))
    assert result.action == action
    assert result.output == action


async def test_output_node_sets_output_key() -> None:
    ctx = make_ctx(
        {"_outputs.gen": "body"},
        {"outputKey": "ticket_payload", "promptTemplate": "[{{r}}]", "inputs": {"r": "gen"}},
    )
    result = await output_node(ctx)
    assert result.output == "[body]"
    assert await ctx.context.get("ticket_payload") == "[body]"
    assert ctx.context.changes() == ({"ticket_payload": "[body]"}, [])


async def test_output_node_default_key_and_no_model_call() -> None:
    def model(prompt: str) -> str:
        raise AssertionError("the output node must not call the model")

    llm.set_completion_function(model)
    ctx = make_ctx({"name": "Jane"}, {"promptTemplate": "Hi {{n}}", "inputs": {"n": "name"}})
    result = await output_node(ctx)
    assert result.output == "Hi Jane"
    assert await ctx.context.get("final_output") == "Hi Jane"


async def test_output_node_with_untaken_branches() -> None:
    # 400's final_log after the redact branch: only moderation_result exists.
    params = node_params("400", "final_log")
    ctx = make_ctx({"moderation_result": "Post Edited for PII."}, params)
    result = await output_node(ctx)
    assert result.output == "--- CONTENT MODERATION COMPLETE ---\n\nFinal Action Log:\nPost Edited for PII."
    assert await ctx.context.get("final_output") == result.output


def test_registry_keys() -> None:
    assert set(workflows.registry) == {"llm-process", "llm-condition", "llm-router", "output"}
    assert workflows.registry["llm-router"] is llm_router
    assert workflows.registry["output"] is output_node


# --- the fake model's rules --------------------------------------------------------------------------

SEVERE_POST = "Those people are subhuman vermin."
PII_POST = "Call me at (555) 123-4567 any time."
SPAM_POST = "Huge DISCOUNT today, click here: http://deals.example"
CLEAN_POST = "Thanks for the quick fix, everything works now."


async def _moderate(post: str) -> tuple[str, dict[str, Any]]:
    """Run 400's three checks and its router with the blueprint's own params; return the action."""
    base: dict[str, Any] = {"userId": "u-1", "userPost": post}
    outputs: dict[str, Any] = {}
    for node_id, fn in (
        ("check_for_pii", llm_condition),
        ("check_for_hate_speech", llm_process),
        ("check_for_spam", llm_condition),
    ):
        result = await fn(make_ctx(base, node_params("400", node_id)))
        outputs[node_id] = result.output
        base[f"_outputs.{node_id}"] = result.output
    routed = await llm_router(make_ctx(base, node_params("400", "triage_post")))
    assert routed.output == routed.action
    assert routed.action is not None
    return routed.action, outputs


async def test_moderation_severe_hate_bans() -> None:
    action, outputs = await _moderate(SEVERE_POST)
    assert outputs["check_for_hate_speech"] == "severe"
    assert action == "action_ban"


async def test_moderation_severe_hate_beats_pii() -> None:
    action, _ = await _moderate(SEVERE_POST + " Mail me: a@b.io")
    assert action == "action_ban"


async def test_moderation_pii_redacts() -> None:
    action, outputs = await _moderate(PII_POST)
    assert outputs == {"check_for_pii": "true", "check_for_hate_speech": "none", "check_for_spam": "false"}
    assert action == "action_redact"


async def test_moderation_pii_beats_spam() -> None:
    action, _ = await _moderate(SPAM_POST + " write to sales@deals.example")
    assert action == "action_redact"


async def test_moderation_spam_deletes() -> None:
    action, outputs = await _moderate(SPAM_POST)
    assert outputs["check_for_spam"] == "true"
    assert outputs["check_for_pii"] == "false"
    assert action == "action_delete_spam"


async def test_moderation_clean_approves() -> None:
    action, outputs = await _moderate(CLEAN_POST)
    assert outputs == {"check_for_pii": "false", "check_for_hate_speech": "none", "check_for_spam": "false"}
    assert action == "action_approve"


async def test_moderation_moderate_hate_is_not_a_ban() -> None:
    action, outputs = await _moderate("You are an idiot.")
    assert outputs["check_for_hate_speech"] == "moderate"
    assert action == "action_approve"


async def test_moderation_sample_post_routes_to_redact() -> None:
    action, _ = await _moderate(workflows.use_cases["4.content-moderation"]["initialContext"]["userPost"])
    assert action == "action_redact"


def test_triage_rules_directly() -> None:
    assert fake_llm.triage("severe", "true", "true") == "action_ban"
    assert fake_llm.triage("moderate", "true", "true") == "action_redact"
    assert fake_llm.triage("none", "false", "true") == "action_delete_spam"
    assert fake_llm.triage("none", "false", "false") == "action_approve"
    assert fake_llm.triage("", "", "") == "action_approve"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to test@example.com", True),
        ("call 555-123-4567", True),
        ("call 555.123.4567", True),
        ("call +1 555 123 4567", True),
        ("order 12345 shipped on 2024-01-15", False),
        ("no contact details here", False),
    ],
)
def test_pii_detection(text: str, expected: bool) -> None:
    assert fake_llm.has_pii(text) is expected


def test_redaction() -> None:
    assert fake_llm.redact_pii("mail a.b@c.org or 555-123-4567.") == "mail [REDACTED] or [REDACTED]."


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Buy now!", True), ("see https://x.example", True), ("Click HERE", True), ("see you soon", False)],
)
def test_spam_detection(text: str, expected: bool) -> None:
    assert fake_llm.is_spam(text) is expected


async def test_job_application_qualifies_sample_applicant() -> None:
    base: dict[str, Any] = dict(workflows.initial_context("2.job-application"))
    skills = await llm_process(make_ctx(base, node_params("200", "extract_skills")))
    assert skills.output == "TypeScript, Node.js, React, SQL"
    tone = await llm_process(make_ctx(base, node_params("200", "analyze_tone")))
    assert tone.output == "professional"
    base["_outputs.extract_skills"] = skills.output
    base["_outputs.analyze_tone"] = tone.output
    decision = await llm_condition(make_ctx(base, node_params("200", "check_qualifications")))
    assert decision.action == "true"


async def test_job_application_rejects_missing_skill_or_casual_tone() -> None:
    params = node_params("200", "check_qualifications")
    no_sql = make_ctx(
        {"_outputs.extract_skills": "TypeScript, Node.js", "_outputs.analyze_tone": "professional"}, params
    )
    assert (await llm_condition(no_sql)).action == "false"
    casual = make_ctx(
        {"_outputs.extract_skills": "TypeScript, Node.js, SQL", "_outputs.analyze_tone": "casual"}, params
    )
    assert (await llm_condition(casual)).action == "false"
    unprofessional = make_ctx(
        {"_outputs.extract_skills": "TypeScript, Node.js, SQL", "_outputs.analyze_tone": "unprofessional"},
        params,
    )
    assert (await llm_condition(unprofessional)).action == "false"


def test_skills_and_tone_rules() -> None:
    assert fake_llm.extract_skills("JavaScript, PostgreSQL and GitHub; also Java.") == [
        "JavaScript",
        "PostgreSQL",
        "Java",
    ]
    assert fake_llm.analyze_tone("Hey dude, gonna crush this job") == "casual"
    assert fake_llm.analyze_tone("Whatever, just give me the job") == "unprofessional"
    assert fake_llm.analyze_tone("Dear hiring manager, I am applying.") == "professional"


async def test_customer_review_sample_is_a_negative_bug_report() -> None:
    base: dict[str, Any] = dict(workflows.initial_context("3.customer-review"))
    summary = await llm_process(make_ctx(base, node_params("300", "summarize")))
    assert summary.output.startswith("The new dashboard is a huge improvement")
    assert summary.output.endswith("datasets.")
    category = await llm_process(make_ctx(base, node_params("300", "categorize")))
    assert category.output == "Bug Report"
    base["_outputs.summarize"] = summary.output
    sentiment = await llm_condition(make_ctx(base, node_params("300", "check_sentiment")))
    assert sentiment.action == "false"


async def test_customer_review_positive_summary() -> None:
    ctx = make_ctx(
        {"_outputs.summarize": "I love the new dashboard, great work."}, node_params("300", "check_sentiment")
    )
    assert (await llm_condition(ctx)).action == "true"


async def test_ticket_is_json() -> None:
    ctx = make_ctx(
        {"category": "Bug Report", "summary": "PDF export crashes."}, node_params("302", "gen_ticket_data")
    )
    ticket = json.loads((await llm_process(ctx)).output)
    assert ticket == {
        "title": "Customer Feedback: Bug Report",
        "description": "User reported an issue summarized as: PDF export crashes.",
    }


def test_default_answer_is_marked_and_truncated() -> None:
    assert fake_llm.complete("\n\nHello  there\nsecond line\n") == "[fake-llm] Hello there second line"
    long = fake_llm.complete("x" * 1000)
    assert long.startswith("[fake-llm] ")
    assert len(long) <= len("[fake-llm] ") + fake_llm.MAX_ECHO_CHARS
    assert long.endswith("...")
    assert fake_llm.complete("same") == fake_llm.complete("same")


# --- blueprints and use cases ------------------------------------------------------------------------


def test_all_blueprints_loaded_with_file_name_ids() -> None:
    expected = set().union(*EXPECTED_IDS.values())
    assert set(workflows.blueprints) == expected
    for bp_id, bp in workflows.blueprints.items():
        assert isinstance(bp, WorkflowBlueprint)
        assert bp.id == bp_id
    for use_case, ids in EXPECTED_IDS.items():
        files = {p.stem for p in (workflows.BLUEPRINTS_DIR / use_case).glob("*.json")}
        assert files == ids


def test_blueprint_files_are_the_fixtures_unchanged() -> None:
    fixtures = shared_fixtures()
    if fixtures is None:
        where = f"{SHARED_ENV}={os.environ[SHARED_ENV]}" if os.environ.get(SHARED_ENV) else "beside the repo"
        message = f"shared/fixtures/declarative not found ({where}); set {SHARED_ENV} to the shared/ folder"
        if os.environ.get("CI") or os.environ.get(SHARED_ENV):
            pytest.fail(message)  # CI always has shared/ beside the clone; a wrong setting is an error too
        pytest.skip(message)
    for use_case, ids in EXPECTED_IDS.items():
        for bp_id in ids:
            ours = (workflows.BLUEPRINTS_DIR / use_case / f"{bp_id}.json").read_bytes()
            assert ours == (fixtures / use_case / f"{bp_id}.json").read_bytes(), (use_case, bp_id)


def test_every_uses_is_registered_or_subflow() -> None:
    for bp in workflows.blueprints.values():
        for node in bp.nodes:
            assert node.uses in workflows.registry or node.uses == "subflow", (bp.id, node.id)
            if node.uses == "subflow":
                assert node.params["blueprintId"] in workflows.blueprints


def test_use_cases() -> None:
    assert set(workflows.use_cases) == set(EXPECTED_IDS)
    for name, case in workflows.use_cases.items():
        assert case["entryWorkflowId"] in EXPECTED_IDS[name]
        assert case["entryWorkflowId"] == min(EXPECTED_IDS[name])
    assert workflows.use_cases["4.content-moderation"]["initialContext"]["userId"] == "user-456"
    copy = workflows.initial_context("1.blog-post")
    copy["topic"] = "changed"
    assert workflows.use_cases["1.blog-post"]["initialContext"]["topic"].startswith("The rise of AI")
    with pytest.raises(KeyError, match="unknown use case"):
        workflows.initial_context("5.nope")


def test_convergence_rule_changes_no_fixture_node() -> None:
    # In the fixtures, every node with several incoming edges has distinct predecessors, so the rule
    # (taken from Flowcraft's example loader) changes nothing; the one any-join is final_log in 400,
    # set in its JSON. 200's final_output and 300's final_step stay "all" joins.
    any_joins = {
        (bp.id, node.id)
        for bp in workflows.blueprints.values()
        for node in bp.nodes
        if node.config.join_strategy == "any"
    }
    assert any_joins == {("400", "final_log")}
    for bp_id in workflows.blueprints:
        fresh = load_blueprints(workflows.BLUEPRINTS_DIR / _use_case_of(bp_id) / f"{bp_id}.json")
        assert workflows.apply_convergence_rule(fresh[bp_id]) == []
    assert workflows.blueprints["200"].node("final_output").config.join_strategy == "all"  # type: ignore[union-attr]
    assert workflows.blueprints["300"].node("final_step").config.join_strategy == "all"  # type: ignore[union-attr]


def _use_case_of(bp_id: str) -> str:
    return next(name for name, ids in EXPECTED_IDS.items() if bp_id in ids)


def test_convergence_rule_sets_any_when_all_predecessors_are_one_node() -> None:
    bp = WorkflowBlueprint.model_validate(
        {
            "id": "conv",
            "nodes": [
                {"id": "router", "uses": "llm-router"},
                {"id": "join", "uses": "output", "config": {"maxRetries": 2}},
                {"id": "mixed", "uses": "output"},
                {"id": "other", "uses": "output"},
            ],
            "edges": [
                {"source": "router", "target": "join", "action": "a"},
                {"source": "router", "target": "join", "action": "b"},
                {"source": "router", "target": "mixed"},
                {"source": "other", "target": "mixed"},
                {"source": "router", "target": "other"},
            ],
        }
    )
    assert workflows.apply_convergence_rule(bp) == ["join"]
    join = bp.node("join")
    assert join is not None
    assert join.config.join_strategy == "any"
    assert join.config.max_retries == 2
    assert bp.to_wire()["nodes"][1]["config"]["joinStrategy"] == "any"
    assert bp.node("mixed").config.join_strategy == "all"  # type: ignore[union-attr]
    assert bp.node("other").config.join_strategy == "all"  # type: ignore[union-attr]
