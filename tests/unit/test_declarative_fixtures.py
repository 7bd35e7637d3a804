"""SPEC acceptance case 16, in-process half: Flowcraft's declarative use cases run to completion.

The ``workflows`` package holds the fixtures unchanged (its loader applies the any-join convergence
rule, like Flowcraft's example) with deterministic stand-ins for the LLM nodes, so every route below is
fixed by the input text.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import workflows
from flowcraft_core import CollectingEventBus, FlowRuntime, WorkflowResult
from flowcraft_core.lint import lint_blueprint
from workflows import llm

DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _offline_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deterministic stand-in answers every prompt, whatever the environment says."""
    monkeypatch.delenv(llm.COMPLETION_ENV_VAR, raising=False)
    llm.set_completion_function(None)


class Outcome:
    """A finished run plus what its own nodes did (child runs of subflows are kept apart)."""

    def __init__(self, result: WorkflowResult, bus: CollectingEventBus) -> None:
        self.result = result
        self.events = [e for e in bus.events if e["payload"].get("runId") == result.run_id]
        self.child_events = [e for e in bus.events
                             if str(e["payload"].get("runId", "")).startswith(result.run_id + ".")]

    def started(self) -> Counter[str]:
        return Counter(e["payload"]["nodeId"] for e in self.events if e["type"] == "node:start")

    def skipped(self) -> set[str]:
        return {e["payload"]["nodeId"] for e in self.events if e["type"] == "node:skipped"}

    @property
    def final_output(self) -> str:
        value = self.result.context.get("final_output")
        assert isinstance(value, str), f"final_output missing: {sorted(self.result.context)}"
        return value


async def run(blueprint_id: str, context: dict[str, Any]) -> Outcome:
    bus = CollectingEventBus()
    runtime = FlowRuntime(registry=workflows.registry, blueprints=workflows.blueprints, event_bus=bus)
    result = await asyncio.wait_for(runtime.run(blueprint_id, context), DEADLINE)
    assert result.status == "completed", (result.status, result.errors, result.reason)
    assert result.errors == []
    return Outcome(result, bus)


async def run_use_case(name: str, **overrides: Any) -> Outcome:
    context = workflows.initial_context(name)
    context.update(overrides)
    return await run(workflows.use_cases[name]["entryWorkflowId"], context)


def use_case_of(blueprint_id: str) -> str:
    return next(name for name in workflows.use_cases if name.split(".", 1)[0] == blueprint_id[0])


# --- every use case, every blueprint ---------------------------------------------------------------


def test_every_blueprint_is_loaded_and_lints_clean() -> None:
    assert sorted(workflows.blueprints) == ["100", "200", "201", "202", "300", "301", "302", "400", "401", "402",
                                            "403"]
    for blueprint_id, blueprint in workflows.blueprints.items():
        assert lint_blueprint(blueprint, workflows.registry) == [], blueprint_id


@pytest.mark.parametrize("name", sorted(workflows.use_cases))
async def test_use_case_runs_to_completion_with_each_node_at_most_once(name: str) -> None:
    outcome = await run_use_case(name)

    assert outcome.final_output.strip()
    started = outcome.started()
    assert started, "no node ran"
    assert max(started.values()) == 1, started
    # Every node of the entry blueprint either ran or was skipped: no branch was left hanging.
    entry = workflows.blueprints[workflows.use_cases[name]["entryWorkflowId"]]
    assert set(started) | outcome.skipped() == {n.id for n in entry.nodes}
    assert not set(started) & outcome.skipped()
    finish = [e["payload"]["status"] for e in outcome.events if e["type"] == "workflow:finish"]
    assert finish == ["completed"]


@pytest.mark.parametrize("blueprint_id", sorted(workflows.blueprints))
async def test_every_blueprint_runs_alone(blueprint_id: str) -> None:
    outcome = await run(blueprint_id, workflows.initial_context(use_case_of(blueprint_id)))
    assert max(outcome.started().values()) == 1


# --- routes of each use case -----------------------------------------------------------------------


async def test_blog_post_is_a_linear_chain() -> None:
    outcome = await run_use_case("1.blog-post")
    assert list(outcome.started()) == ["generate_outline", "draft_post", "suggest_titles", "final_output"]
    assert "--- TITLES ---" in outcome.final_output
    assert "--- DRAFT ---" in outcome.final_output


async def test_job_application_sample_applicant_gets_an_interview() -> None:
    outcome = await run_use_case("2.job-application")
    assert outcome.started()["send_interview_email"] == 1
    assert outcome.skipped() == {"send_rejection_email"}
    assert outcome.result.context["_outputs.check_qualifications"] == "true"
    assert outcome.final_output.startswith("Final email sent to Jane Doe:")
    assert "interview" in outcome.final_output.lower()


async def test_job_application_casual_cover_letter_is_rejected() -> None:
    outcome = await run_use_case("2.job-application", coverLetter="hey dude, gonna be great at this lol")
    assert outcome.started()["send_rejection_email"] == 1
    assert outcome.skipped() == {"send_interview_email"}
    assert "not be moving forward" in outcome.final_output


async def test_customer_review_negative_sample_opens_a_ticket_and_replies() -> None:
    outcome = await run_use_case("3.customer-review")
    started = outcome.started()
    assert {"negative_branch", "send_to_ticketing_system", "send_email_to_customer", "final_step"} <= set(started)
    assert outcome.skipped() == {"positive_branch"}
    assert started["final_step"] == 1
    assert "Ticket System: [fake-llm]" in outcome.final_output
    assert "Customer Email: [fake-llm]" in outcome.final_output
    # The child blueprint's outputs were mapped back into the parent's context.
    assert outcome.result.context["generated_ticket"]
    assert outcome.result.context["generated_reply"]


async def test_customer_review_positive_review_takes_the_positive_branch() -> None:
    outcome = await run_use_case(
        "3.customer-review", initial_review="I love the new dashboard, it is a great improvement. Thank you!")
    assert outcome.started()["positive_branch"] == 1
    assert outcome.skipped() == {"negative_branch", "send_to_ticketing_system", "send_email_to_customer"}
    assert outcome.started()["final_step"] == 1
    assert "Positive Flow Result: [fake-llm]" in outcome.final_output


# --- content moderation: the router and its any-join ------------------------------------------------


MODERATION_BRANCHES = {"ban_user_branch", "redact_post_branch", "delete_spam_branch", "approve_post_branch"}


async def test_content_moderation_sample_post_is_redacted() -> None:
    outcome = await run_use_case("4.content-moderation")
    started = outcome.started()

    assert outcome.result.context["_outputs.triage_post"] == "action_redact"
    assert started["redact_post_branch"] == 1
    assert outcome.skipped() == MODERATION_BRANCHES - {"redact_post_branch"}
    assert started["final_log"] == 1
    text = outcome.final_output
    assert "[REDACTED]" in text
    assert "test@example.com" not in text and "555-123-4567" not in text
    assert text.startswith("--- CONTENT MODERATION COMPLETE ---")
    # The redaction subflow (402) ran once, as a child run, with both of its branches.
    child_nodes = Counter(e["payload"]["nodeId"] for e in outcome.child_events if e["type"] == "node:start")
    assert child_nodes == {"redact_pii": 1, "generate_warning": 1, "output_redaction_summary": 1}
    assert outcome.result.context["moderation_result"].startswith("Post Edited for PII.")


@pytest.mark.parametrize(
    ("post", "action", "branch", "marker"),
    [
        ("You are all subhuman vermin.", "action_ban", "ban_user_branch", "User Banned Successfully."),
        ("Hi, reach me at test@example.com please.", "action_redact", "redact_post_branch", "[REDACTED]"),
        ("Buy now! Click here: http://deals.example", "action_delete_spam", "delete_spam_branch",
         "deleting a spam post"),
        ("Thanks, the new release works well for me.", "action_approve", "approve_post_branch",
         "approved with no issues"),
    ],
    ids=["ban", "redact", "spam", "approve"],
)
async def test_content_moderation_routes(post: str, action: str, branch: str, marker: str) -> None:
    outcome = await run_use_case("4.content-moderation", userPost=post)
    started = outcome.started()

    assert outcome.result.context["_outputs.triage_post"] == action
    assert started[branch] == 1
    assert outcome.skipped() == MODERATION_BRANCHES - {branch}
    assert started["final_log"] == 1  # the any-join after the router runs exactly once
    assert marker in outcome.final_output
