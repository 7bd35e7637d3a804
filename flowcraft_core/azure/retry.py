"""Retries of transient dependency failures: Cosmos DB, Redis and Storage Queues (with tenacity).

Every store method the engine calls is idempotent (records are created once, gates remember each
member, final statuses are ETag-guarded, jobs are delivered at least once anyway), so a method can be
retried as a whole when its dependency answers "try again" or cannot be reached. What is retried:

- Cosmos DB: 408, 429, 449, 500, 502, 503, 504 (after the SDK's own retries gave up; a 429's
  ``x-ms-retry-after-ms`` is honoured), and requests that could not be sent or got no response; but
  not a 500 that blames the request's content ("... is not valid JSON": the local stand-in's answer to
  a body the real service refuses with 400), which no retry can change;
- Storage: 408, 429, 500, 502, 503, 504 and connection failures;
- Redis: ``ConnectionError`` and ``TimeoutError`` (a restarted or failed-over cache);
- plain socket errors (``ConnectionError``, ``TimeoutError``) from any of them.

Anything else (any other 4xx: 400, 404, 409, 412, 413...; a bug) is raised at once. Waits grow exponentially with
random jitter, each is capped, and the whole call is bounded by attempts and by total time, so an outage
longer than the budget surfaces as the original error: the worker then leaves the message on the queue
and it is retried after its visibility timeout (and poisoned after ``maxDequeueCount`` deliveries).

Each retry is logged at WARNING with the operation and the error's type and (redacted, shortened)
message; connection strings, keys and passwords never reach the log.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import CosmosHttpResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay

logger = logging.getLogger("flowcraft.retry")

P = ParamSpec("P")
T = TypeVar("T")

TRANSIENT_COSMOS_STATUS: frozenset[int] = frozenset({408, 429, 449, 500, 502, 503, 504})
TRANSIENT_STORAGE_STATUS: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Storage and Cosmos connection strings, SAS tokens.
    (re.compile(r"(?i)(AccountKey|SharedAccessKey|SharedAccessSignature)=[^;\s'\"]*"), r"\1=***"),
    (re.compile(r"(?i)([?&]sig=)[^&\s'\"]*"), r"\1***"),
    # redis://user:password@host and rediss://:password@host
    (re.compile(r"(?i)(rediss?://[^:@/\s]*:)[^@/\s]+@"), r"\1***@"),
    (re.compile(r"(?i)(password\s*[=:]\s*)[^\s,;&'\"]+"), r"\1***"),
)


def redact(text: str) -> str:
    """Text with keys, SAS signatures and passwords replaced by ``***``."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def describe(exc: BaseException, limit: int = 240) -> str:
    """A short, redacted, single-line description of an error for logs."""
    status = getattr(exc, "status_code", None)
    head = type(exc).__name__ + (f" {status}" if isinstance(status, int) else "")
    message = " ".join(redact(str(exc)).split())
    if len(message) > limit:
        message = message[:limit] + "..."
    return f"{head}: {message}" if message else head


# How a server error says that the request itself was bad (the Cosmos stand-in parses bodies with
# JSON.parse and answers 500 with its message); a retry would send the same bytes again.
_BAD_CONTENT = re.compile(r"is not valid JSON|Unexpected token|JSON\.parse|Unexpected end of JSON", re.IGNORECASE)


def is_transient(exc: BaseException) -> bool:
    """True when the failure is worth retrying (see the module docstring for the list)."""
    if isinstance(exc, CosmosHttpResponseError):  # before HttpResponseError: it is a subclass
        if exc.status_code == 500 and _BAD_CONTENT.search(str(exc)):
            return False
        return exc.status_code in TRANSIENT_COSMOS_STATUS
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return True
    if isinstance(exc, HttpResponseError):
        return exc.status_code in TRANSIENT_STORAGE_STATUS
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def retry_after_seconds(exc: BaseException | None) -> float:
    """The server's requested wait (Cosmos ``x-ms-retry-after-ms``, HTTP ``Retry-After``), or 0."""
    headers: Any = getattr(exc, "headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if not headers:
        return 0.0
    try:
        value = headers.get("x-ms-retry-after-ms")
        if value is not None:
            return float(value) / 1000.0
        value = headers.get("Retry-After")
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError, AttributeError):
        return 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and total time."""

    max_attempts: int = 8
    initial_delay: float = 0.1
    max_delay: float = 2.0
    # Wall-clock budget of one call including its waits; past it the last error is raised.
    max_total_seconds: float = 20.0
    # Up to this fraction of each wait is added at random, so that workers do not retry in lockstep.
    jitter: float = 0.5

    def delay(self, retry_number: int, exc: BaseException | None = None) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based)."""
        base: float = min(self.max_delay, self.initial_delay * 2.0 ** (retry_number - 1))
        wait: float = base + random.uniform(0.0, base * self.jitter)
        ceiling: float = self.max_delay * (1.0 + self.jitter)
        return min(max(wait, retry_after_seconds(exc)), ceiling)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return self.delay(state.attempt_number, exc)

    async def call(self, operation: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, retrying transient failures; the last error is re-raised."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_total_seconds),
            wait=self._wait,
            retry=retry_if_exception(is_transient),
            before_sleep=functools.partial(_log_retry, operation, self),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await fn(*args, **kwargs)
        except BaseException as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            if attempts > 1 and is_transient(exc):
                logger.warning("%s still failing after %d attempts, giving up: %s", operation, attempts,
                               describe(exc))
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


def _log_retry(operation: str, policy: RetryPolicy, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("%s failed (%s); retry %d/%d in %.2fs", operation,
                   describe(exc) if exc is not None else "no result", state.attempt_number,
                   policy.max_attempts - 1, wait)


DEFAULT_RETRY_POLICY = RetryPolicy()


class HasRetryPolicy(Protocol):
    """An object with an optional ``retry_policy`` attribute (the stores and the queue)."""

    retry_policy: RetryPolicy | None


S = TypeVar("S", bound=HasRetryPolicy)


def retry_transient(operation: str) -> Callable[[Callable[Concatenate[S, P], Awaitable[T]]],
                                                Callable[Concatenate[S, P], Coroutine[Any, Any, T]]]:
    """Decorate an idempotent async method so transient failures are retried with ``self.retry_policy``.

    Decorate only the outermost public methods: nested decorated calls would multiply the attempts.
    """
    def decorate(fn: Callable[Concatenate[S, P], Awaitable[T]]) -> Callable[Concatenate[S, P], Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
            policy = self.retry_policy or DEFAULT_RETRY_POLICY
            return await policy.call(operation, fn, self, *args, **kwargs)

        return wrapper

    return decorate
