"""Helpers shared by the test suites (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Raises ``TimeoutError`` naming ``message`` and the last value seen once ``timeout`` seconds have
    passed. Always evaluates the predicate at least once, and once more at the deadline, so a slow
    interval never turns a met condition into a failure.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"{message} not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(min(interval, remaining))
