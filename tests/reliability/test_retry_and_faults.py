"""Unit tests of the retry policy (flowcraft_core.azure.retry) and the fault hooks (flowcraft_dev.faults).

No emulators: errors are constructed the way the SDKs raise them, and the crash hook's exit is replaced.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from unittest.mock import MagicMock

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flowcraft_core.azure.adapter import AzureQueueAdapter
from flowcraft_core.azure.retry import RetryPolicy, describe, is_transient, redact, retry_after_seconds, retry_transient
from flowcraft_core.engine import EngineOptions
from flowcraft_core.runtime import FlowRuntime
from flowcraft_dev.faults import (
    CHECKPOINTS,
    CRASH_ENV,
    CRASH_EXIT_CODE,
    CrashAt,
    CrashSpec,
    StepRecorder,
    fault_hook_from_env,
)

FAST = RetryPolicy(max_attempts=5, initial_delay=0.001, max_delay=0.01, max_total_seconds=5)


def cosmos_error(status: int, headers: dict[str, str] | None = None) -> CosmosHttpResponseError:
    err = CosmosHttpResponseError(status_code=status, message=f"status {status}")
    err.headers = headers or {}
    return err


def http_error(status: int) -> HttpResponseError:
    err = HttpResponseError(message=f"status {status}")
    err.status_code = status
    return err


@pytest.mark.parametrize(("error", "transient"), [
    (cosmos_error(408), True), (cosmos_error(429), True), (cosmos_error(449), True), (cosmos_error(500), True),
    (cosmos_error(502), True), (cosmos_error(503), True), (cosmos_error(504), True),
    (cosmos_error(400), False), (cosmos_error(401), False), (cosmos_error(403), False), (cosmos_error(413), False),
    (CosmosResourceNotFoundError(status_code=404, message="gone"), False),
    (CosmosResourceExistsError(status_code=409, message="taken"), False),
    (CosmosAccessConditionFailedError(status_code=412, message="etag"), False),
    (ServiceRequestError("connection refused"), True), (ServiceResponseError("connection reset"), True),
    (http_error(503), True), (http_error(500), True), (http_error(429), True), (http_error(413), False),
    (ResourceNotFoundError("no queue"), False),
    (RedisConnectionError("Error 111 connecting"), True), (RedisTimeoutError("timed out"), True),
    (RedisResponseError("WRONGTYPE"), False),
    (ConnectionResetError(), True), (TimeoutError(), True),
    (ValueError("a bug"), False), (KeyError("x"), False), (asyncio.CancelledError(), False),
])
def test_only_transient_errors_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


async def test_a_transient_failure_is_retried_until_it_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flowcraft.retry")
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise cosmos_error(503)
        return "ok"

    assert await FAST.call("cosmos.load", flaky) == "ok"
    assert calls == 3
    assert [m.split(" (")[0] for m in caplog.messages] == ["cosmos.load failed", "cosmos.load failed"]
    assert "CosmosHttpResponseError 503" in caplog.messages[0] and "retry 1/4" in caplog.messages[0]


async def test_a_permanent_failure_is_raised_at_once() -> None:
    calls = 0

    async def missing() -> None:
        nonlocal calls
        calls += 1
        raise CosmosResourceNotFoundError(status_code=404, message="nope")

    with pytest.raises(CosmosResourceNotFoundError):
        await FAST.call("cosmos.get", missing)
    assert calls == 1


async def test_retries_stop_after_the_attempt_budget_with_the_original_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flowcraft.retry")
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    with pytest.raises(RedisConnectionError):
        await FAST.call("redis.arrive", down)
    assert calls == FAST.max_attempts
    assert "giving up" in caplog.messages[-1]


async def test_retries_stop_after_the_time_budget() -> None:
    policy = RetryPolicy(max_attempts=1000, initial_delay=0.05, max_delay=0.05, max_total_seconds=0.4)
    calls = 0

    async def unreachable() -> None:
        nonlocal calls
        calls += 1
        raise ServiceRequestError("unreachable")

    with pytest.raises(ServiceRequestError):
        await policy.call("queue.enqueue", unreachable)
    # Waits are at least 0.05 s, so a 0.4 s budget allows at most 9 attempts, far below max_attempts: the
    # time budget, not the attempt budget, ended the retries (a slow machine only makes the count smaller).
    assert 2 <= calls <= 9


def test_backoff_grows_is_capped_jittered_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_delay=0.1, max_delay=2.0, jitter=0.5)
    for n in range(1, 12):
        base = min(2.0, 0.1 * 2 ** (n - 1))
        assert base <= policy.delay(n) <= base * 1.5
    assert len({round(policy.delay(3), 6) for _ in range(20)}) > 1  # jittered
    throttled = cosmos_error(429, {"x-ms-retry-after-ms": "1200"})
    assert retry_after_seconds(throttled) == 1.2
    assert policy.delay(1, throttled) >= 1.2
    assert policy.delay(1, cosmos_error(429, {"x-ms-retry-after-ms": "999999"})) <= 3.0  # never beyond the cap


def test_logged_errors_are_redacted() -> None:
    text = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=c2VjcmV0a2V5==;QueueEndpoint=x; "
            "AccountEndpoint=https://h/;AccountKey=abc/def+ghi==; rediss://:hunter2@cache:6380/0 "
            "redis://user:pw@h/0 https://h/q?sv=1&sig=abcDEF%2B&se=2 password=topsecret")
    cleaned = redact(text)
    for secret in ("c2VjcmV0a2V5", "abc/def+ghi", "hunter2", ":pw@", "abcDEF", "topsecret"):
        assert secret not in cleaned
    assert "AccountName=devstoreaccount1" in cleaned and "cache:6380" in cleaned
    assert "AccountKey=***" in describe(ValueError(text))
    assert len(describe(ValueError("x" * 10_000))) < 400


class _Store:
    retry_policy: RetryPolicy | None = FAST

    def __init__(self) -> None:
        self.calls = 0

    @retry_transient("test.op")
    async def op(self, value: int, *, fail: int) -> int:
        self.calls += 1
        if self.calls <= fail:
            raise ConnectionResetError()
        return value * 2


async def test_the_decorator_uses_the_objects_policy() -> None:
    store = _Store()
    assert await store.op(21, fail=2) == 42
    assert store.calls == 3
    store.retry_policy = RetryPolicy(max_attempts=1)
    store.calls = 0
    with pytest.raises(ConnectionResetError):
        await store.op(1, fail=5)
    assert store.calls == 1


# --- fault hooks -------------------------------------------------------------------------------------------


def test_crash_specs_parse_and_reject_what_is_wrong() -> None:
    assert CrashSpec.parse("after-commit:3") == CrashSpec("after-commit", 3)
    assert CrashSpec.parse("after-gate") == CrashSpec("after-gate", 1)
    assert CrashSpec.parse("after-execute:2:e") == CrashSpec("after-execute", 2, "e")
    assert str(CrashSpec("after-execute", 2, "e")) == "after-execute:2:e"
    for bad in ("after-lunch:1", "after-commit:x", "after-commit:0", ""):
        with pytest.raises(ValueError, match=CRASH_ENV):
            CrashSpec.parse(bad)


def test_the_crash_hook_exits_on_the_nth_matching_checkpoint_only() -> None:
    exits: list[int] = []
    hook = CrashAt(CrashSpec("after-commit", 2, "b"), exit=exits.append)
    hook("after-commit", "r", "a")
    hook("after-execute", "r", "b")
    hook("after-commit", "r", "b")
    assert exits == []
    hook("after-commit", "r", "b")
    assert exits == [CRASH_EXIT_CODE]


def test_fault_injection_is_off_unless_the_environment_asks() -> None:
    assert fault_hook_from_env({}) is None
    assert fault_hook_from_env({CRASH_ENV: "  "}) is None
    hook = fault_hook_from_env({CRASH_ENV: "before-final:1"})
    assert isinstance(hook, CrashAt) and hook.spec == CrashSpec("before-final", 1)
    with pytest.raises(ValueError):
        fault_hook_from_env({CRASH_ENV: "everywhere"})


def _adapter() -> AzureQueueAdapter:
    return AzureQueueAdapter(queue_client=MagicMock(), cosmos_client=MagicMock(), coordination_store=MagicMock())


def test_the_adapter_installs_the_hook_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CRASH_ENV, raising=False)
    assert _adapter().engine.fault_hook is None
    monkeypatch.setenv(CRASH_ENV, "after-enqueue:4")
    hook = _adapter().engine.fault_hook
    assert isinstance(hook, CrashAt) and hook.spec == CrashSpec("after-enqueue", 4)
    monkeypatch.setenv(CRASH_ENV, "after-nothing:1")
    with pytest.raises(ValueError):
        _adapter()


async def test_checkpoints_are_reached_in_order_by_an_in_process_run() -> None:
    from rel_workflows import blueprints, registry

    recorder = StepRecorder()
    runtime = FlowRuntime(registry=registry, blueprints=blueprints)
    runtime.engine.fault_hook = recorder
    result = await runtime.run("fan", {"token": "t"})
    assert result.status == "completed"
    counts = recorder.counts()
    assert set(counts) == set(CHECKPOINTS)
    order = [step for step, _, _ in recorder.steps]
    assert order.index("after-execute") < order.index("after-commit") < order.index("after-gate")
    assert order[-2:] == ["before-final", "after-final"]
    hits: dict[str, Any] = {s: n for s, n in counts.items()}
    assert hits["after-claim"] == 1 and hits["after-execute"] == hits["after-commit"] == 5


def test_engines_have_no_fault_hook_by_default() -> None:
    assert EngineOptions().fault_hook is None
    assert FlowRuntime(registry={}, blueprints={}).engine.fault_hook is None
