"""The JSON policy (flowcraft_core.json_policy) and the edges that apply it, without the emulators.

The same edges run on the emulators in tests/reliability/test_hostile_json.py; here each rule is
pinned down on its own, and the queue parser gets a hypothesis property: whatever bytes arrive, it
returns a job or raises NotAJobError, nothing else.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
from azure.cosmos.exceptions import CosmosHttpResponseError
from hostile_json import HOSTILE_FRAGMENTS, hostile_documents, nested, splice
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcraft_core import FlowRuntime, http_api
from flowcraft_core.azure.queue import encode_job, parse_job
from flowcraft_core.azure.retry import is_transient
from flowcraft_core.errors import NotAJobError
from flowcraft_core.json_policy import MAX_DEPTH, TRUNCATED, JsonPolicyError, check, sanitize, violation
from flowcraft_core.models import WorkflowBlueprint
from flowcraft_core.nodes import NodeContext, NodeResult
from flowcraft_core.protocols import Job


def deep(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value


# ---------------------------------------------------------------------------------------------- policy
@pytest.mark.parametrize("value", [None, True, 0, -1.5, "text", "emoji \U0001f600", [1, [2, {"a": None}]],
                                   {"k": (1, 2)}, {1: "int key"}, deep(MAX_DEPTH - 1), 2**63 - 1])
def test_json_values_conform(value: Any) -> None:
    assert violation(value) is None
    assert check(value, what="it") is value


@pytest.mark.parametrize(("value", "reason"), [
    (math.inf, "not a JSON number"), (-math.inf, "not a JSON number"), (math.nan, "not a JSON number"),
    ({"a": [1, math.inf]}, "at a[1]: inf"),
    ("x\ud800", "lone surrogate"), ({"\udfff": 1}, "object key holds a lone surrogate"),
    (deep(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
    (json.loads(nested(MAX_DEPTH + 1)), "nested deeper"),
    ({1, 2}, "type set is not JSON"), (b"raw", "type bytes"), (object(), "type object"),
    ({(1, 2): "tuple key"}, "key of type tuple"), (2**63, "64-bit range"), (-(2**63) - 1, "64-bit range"),
])
def test_policy_violations_are_named_with_their_place(value: Any, reason: str) -> None:
    problem = violation(value)
    assert problem is not None and reason in problem, problem
    with pytest.raises(JsonPolicyError, match="the thing is not acceptable JSON"):
        check(value, what="the thing")


def test_a_value_nested_far_too_deep_is_reported_not_a_recursion_error() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    problem = violation(value)
    assert problem is not None and "nested deeper than 64" in problem and "more>" in problem
    assert sanitize(value) is not None  # iterative too


def test_sanitize_always_yields_strict_utf8_json() -> None:
    odd = {"deep": deep(500), "s": "a\ud800b", "\udc00key": [math.inf, math.nan, 10**30, b"b", {1, 2}],
           (1, 2): "tuple key", 3: "int key"}
    clean = sanitize(odd)
    text = json.dumps(clean, allow_nan=False, ensure_ascii=False).encode("utf-8")
    back = json.loads(text)
    assert back["s"] == "a\ufffdb" and back["\ufffdkey"][:3] == [None, None, None]
    assert back["3"] == "int key" and "(1, 2)" in back
    level, cursor = 0, back["deep"]
    while isinstance(cursor, dict):
        level, cursor = level + 1, cursor["k"]
    assert cursor == TRUNCATED and level > MAX_DEPTH


# ------------------------------------------------------------------------------------------ queue parser
def test_the_deep_message_from_the_attack_is_not_a_job() -> None:
    body = base64.b64encode(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(NotAJobError, match="nested too deeply"):
        parse_job(body, base64_encoded=True)


@pytest.mark.parametrize("raw", [b'{"runId": "\xff"}', b"9" * 5000, b'{"runId": 1e999}', b'["\\ud800"]',
                                 b"[" * 65 + b"]" * 65, b'{"runId": "r", "blueprintId": "b", "nodeId": "\\udfff"}'])
def test_messages_that_break_the_decoder_are_not_jobs(raw: bytes) -> None:
    with pytest.raises(NotAJobError):
        parse_job(base64.b64encode(raw), base64_encoded=True)
    with pytest.raises(NotAJobError):
        parse_job(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=hostile_documents(), encode=st.booleans())
def test_the_queue_parser_returns_a_job_or_raises_not_a_job_whatever_arrives(body: bytes, encode: bool) -> None:
    wire = base64.b64encode(body) if encode else body
    try:
        job = parse_job(wire, base64_encoded=encode)
    except NotAJobError as exc:
        assert str(exc)
    else:
        assert isinstance(job, Job)


def test_a_good_job_still_parses() -> None:
    job = Job("run-1", "bp", "node", 2, 3)
    assert parse_job(encode_job(job), base64_encoded=True).to_dict() == job.to_dict()


# ---------------------------------------------------------------------------------------- HTTP parsing
def _request(body: bytes) -> http_api.ApiRequest:
    return http_api.ApiRequest.build("POST", "http://h/api/runs", headers={"Content-Type": "application/json"},
                                     body=body)


@pytest.mark.parametrize("fragment", HOSTILE_FRAGMENTS)
def test_request_bodies_break_the_policy_with_a_400_or_pass_it(fragment: bytes) -> None:
    body = splice({"blueprintId": "b", "context": {"x": 0}}, ["context", "x"], fragment)
    try:
        data = http_api.read_json(_request(body), max_bytes=1_048_576, required=True)
    except http_api.ApiError as exc:
        assert exc.status in (400, 413), exc
    else:
        assert violation(data) is None


def test_an_infinite_number_in_a_body_is_a_400_naming_its_place() -> None:
    with pytest.raises(http_api.ApiError) as failure:
        http_api.read_json(_request(b'{"blueprintId": "b", "context": {"a": [1, 1e999]}}'), max_bytes=10_000,
                           required=True)
    assert failure.value.status == 400 and failure.value.code == "invalid_json"
    assert "at context.a[1]" in failure.value.detail and "finite" in failure.value.detail


# -------------------------------------------------------------------------------------------- rendering
def test_rendering_never_raises_and_always_yields_strict_json() -> None:
    item = {"runId": "r", "status": "completed", "blueprintId": 7, "createdAt": math.nan, "lastUpdated": 1e300,
            "result": {"context": {"deep": deep(400), "s": "\ud800", "n": math.inf}}, "reason": ["odd"]}
    status, payload, _ = http_api.render((200, http_api.run_view(item)))
    body = json.loads(payload.decode("utf-8"), parse_constant=lambda name: pytest.fail(name))
    assert status == 200 and body["status"] == "completed" and body["result"]["context"]["s"] == "\ufffd"
    assert body["result"]["context"]["n"] is None and body["blueprintId"] == "7"
    # render() itself, on a body no handler would build.
    status, payload, _ = http_api.render((200, {"x": "\udfff", "y": math.nan, "z": deep(1000)}))
    assert json.loads(payload)["x"] == "\ufffd"


def test_a_policy_error_from_a_handler_maps_to_400() -> None:
    status, body = http_api.error_result(JsonPolicyError("the initial context is not acceptable JSON: x"))
    assert status == 400 and body["error"] == "invalid_json"


# ---------------------------------------------------------------------------------------------- retries
def _cosmos_error(status: int, message: str) -> CosmosHttpResponseError:
    return CosmosHttpResponseError(status_code=status, message=message)


def test_content_errors_from_cosmos_are_not_transient() -> None:
    assert not is_transient(_cosmos_error(500, 'Unexpected token \'I\', ..."v":Infinity}" is not valid JSON'))
    assert not is_transient(_cosmos_error(400, "One of the specified inputs is invalid"))
    assert not is_transient(_cosmos_error(413, "Request size is too large"))
    assert is_transient(_cosmos_error(500, "Internal server error"))
    assert is_transient(_cosmos_error(503, "Service unavailable"))
    assert is_transient(_cosmos_error(429, "Request rate is large"))


# ----------------------------------------------------------------------------------- engine (in process)
async def _echo(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=ctx.input)


async def test_the_in_process_runtime_refuses_a_hostile_initial_context_and_resume_output() -> None:
    blueprint = {"id": "w", "nodes": [{"id": "a", "uses": "wait"}, {"id": "b", "uses": "echo"}],
                 "edges": [{"source": "a", "target": "b"}]}
    runtime = FlowRuntime(registry={"echo": _echo}, blueprints={"w": WorkflowBlueprint.model_validate(blueprint)})
    with pytest.raises(JsonPolicyError, match="initial context"):
        await runtime.run("w", {"x": nested_value(70)})
    result = await runtime.run("w", {})
    assert result.status == "awaiting"
    with pytest.raises(JsonPolicyError, match="resume output"):
        await runtime.resume(result.run_id, "go", {"x": math.inf})
    assert (await runtime.resume(result.run_id, "go", {"x": 1})).status == "completed"


def nested_value(levels: int) -> Any:
    return json.loads(nested(levels))


# ------------------------------------------------------------------------------------ local host bodies
def test_the_local_host_decodes_bodies_within_a_limit() -> None:
    import gzip
    import zlib

    from scripts.devhost import BodyEncodingError, decode_body

    assert decode_body(gzip.compress(b"{}"), "gzip") == b"{}"
    assert decode_body(zlib.compress(b"{}"), "deflate") == b"{}"
    assert decode_body(b"{}", None) == decode_body(b"{}", "identity") == b"{}"
    for raw, coding, status in ((b"{}", "gzip", 400), (gzip.compress(b"{}")[:-6], "gzip", 400),
                                (gzip.compress(b"0" * 5000), "gzip", 413), (b"{}", "br", 415)):
        with pytest.raises(BodyEncodingError) as failure:
            decode_body(raw, coding, limit=1000)
        assert failure.value.status == status, (raw, coding)
