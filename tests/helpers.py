"""Helpers shared by the test suites (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ..., *, message: str = ...
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T], timeout: float = ..., interval: float = ..., *, message: str = ...
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    message: str = "condition",
) -> Any:
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
            return value
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"{message} not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(min(interval, remaining))


@dataclass(frozen=True)
class AzureTestEnv:
    """Connection strings of the session's emulators plus names unique to one test."""

    queue_connection_string: str
    queue_name: str
    cosmos_connection_string: str
    cosmos_verify_tls: bool
    cosmos_database: str
    redis_url: str
    redis_prefix: str
    emulator_settings: dict[str, str]

    def settings(self, **extra: str) -> dict[str, str]:
        """App settings for code under test: the emulators' plus this test's queue name."""
        return {**self.emulator_settings, "FLOWCRAFT_QUEUE_NAME": self.queue_name, **extra}


def bp(nodes: Iterable[str | dict[str, Any]], edges: Iterable[tuple[str, str] | dict[str, Any]] = (),
       *, bp_id: str = "t", **extra: Any) -> dict[str, Any]:
    """A blueprint dict; a bare node id uses the implementation of the same name."""
    return {
        "id": bp_id,
        "nodes": [{"id": n, "uses": n} if isinstance(n, str) else n for n in nodes],
        "edges": [{"source": e[0], "target": e[1]} if isinstance(e, tuple) else e for e in edges],
        **extra,
    }


async def serve_until_signalled(services: Any, ready: str) -> int:
    """Run a test worker process's adapter until SIGINT or SIGTERM, then stop it and close its clients."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await services.adapter.start()
    logging.getLogger("flowcraft").info("%s", ready)
    try:
        await stop.wait()
    finally:
        await services.adapter.stop(timeout=5)
        await services.close()
    return 0
