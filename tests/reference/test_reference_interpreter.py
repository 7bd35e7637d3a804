"""The reference interpreter against SPEC, rule by rule (the oracle must be right before it judges)."""

from __future__ import annotations

from collections import Counter

from tests.differential.runners import blueprints_of
from tests.differential.stand_ins import behave, digest
from tests.reference.interpreter import Outcome, Reference
from tests.reference.spec_cases import SPEC_CASES


def run(name: str) -> Outcome:
    case = SPEC_CASES[name]
    return Reference(blueprints_of(case), behave).run(case.blueprint_id, case.context, case.resume)


def ran(out: Outcome, bp: str) -> Counter[str]:
    return Counter({k.split(":", 1)[1]: v for k, v in out.counts.items() if k.startswith(bp + ":")})


def test_linear_passes_each_output_on() -> None:  # SPEC case 1
    out = run("linear")
    assert out.status == "completed"
    assert out.context["_outputs.b"]["in"] == digest(out.context["_outputs.a"])
    assert "_outputs.c" in out.context


def test_fan_out_join_runs_once_and_sees_every_branch() -> None:  # SPEC case 2
    out = run("fan-out-all")
    assert ran(out, "fan-out-all")["e"] == 1
    ctx = out.context
    assert ctx["_outputs.e"]["in"] == digest({p: ctx[f"_outputs.{p}"] for p in "bcd"})


def test_router_takes_only_the_matching_action() -> None:  # SPEC cases 3, 4
    assert set(ran(run("router-action"), "router-action")) == {"a", "bx"}
    assert set(ran(run("unmatched-default"), "unmatched-default")) == {"a", "bd"}
    out = run("unmatched-no-default")
    assert out.status == "completed" and set(ran(out, "unmatched-no-default")) == {"a"}


def test_condition_and_transform() -> None:  # SPEC case 5
    out = run("condition-transform")
    assert set(ran(out, "condition-transform")) == {"a", "hi"}
    assert out.context["_outputs.hi"]["in"] == digest(5)


def test_join_inputs_follow_the_delivering_edges() -> None:  # SPEC "ctx.input"
    for name in ("any-join-after-router", "all-join-one-edge-taken"):
        out = run(name)
        assert ran(out, name)["j"] == 1
        assert out.context["_outputs.j"]["in"] == digest(out.context["_outputs.bx"]), name


def test_retries_then_success_and_failure_without_fallback() -> None:  # SPEC cases 7, 9
    out = run("retries")
    assert out.status == "completed" and out.context["_outputs.a"]["attempt"] == 3
    out = run("failure")
    assert out.status == "failed" and out.failed_node == "f"
    assert "_outputs.b" not in out.context and "_outputs.j" not in out.context


def test_timeout_uses_the_fallback_and_a_fallback_may_name_a_node() -> None:  # SPEC case 8, "fallback"
    assert run("timeout-fallback").context["_outputs.a"]["fallback"] is True
    out = run("fallback-node-id")
    assert out.status == "completed"
    assert out.context["_outputs.a"] == {"n": "a", "fallback": True, "in": digest(None)}
    assert ran(out, "fallback-node-id")["spare"] == 0


def test_loops_single_and_nested() -> None:  # SPEC cases 13, 23
    assert ran(run("loop"), "loop")["body"] == 3
    out = run("nested-loop")
    counts = ran(out, "nested-loop")
    assert counts["oe"] == 3 and counts["ib"] == 6 and counts["z"] == 1


def test_batch_gathers_in_input_order() -> None:  # SPEC case 12
    out = run("batch")
    assert out.context["squares"] == [{"item": i, "sq": i * i} for i in range(10)]


def test_subflow_maps_inputs_and_outputs() -> None:  # SPEC case 10
    out = run("subflow")
    assert out.context["got"] == out.context["_outputs.u"]["_outputs.c2"]
    assert out.context["_outputs.u"]["_outputs.c1"]["read"] == {"x": out.context["k_a"]}


def test_wait_resumes_along_the_action() -> None:  # SPEC case 11
    out = run("wait-resume")
    assert out.awaited == ["w"] and set(ran(out, "wait-resume")) == {"a", "w", "yes"}


def test_any_join_with_a_slow_sibling_keeps_the_sibling() -> None:  # SPEC case 23
    out = run("any-join-slow-sibling")
    assert ran(out, "any-join-slow-sibling")["j"] == 1 and "_outputs.slow" in out.context


def test_bare_node_ids_in_expressions() -> None:  # SPEC "A bare node id in an expression"
    assert set(ran(run("bare-node-id"), "bare-node-id")) == {"r", "hi"}
