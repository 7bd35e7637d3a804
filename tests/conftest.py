"""Shared fixtures.

``emulators`` starts Azurite, the Cosmos DB stand-in and a private redis-server once per session
(only when a test asks for it) and fails loudly if they cannot start: a missing emulator is a
broken environment, never a reason to skip.

Async clients are bound to the event loop that created them, and pytest-asyncio gives each test
its own loop, so clients are function-scoped. ``azure_env`` hands each test fresh names (queue,
Cosmos database, Redis key prefix) so tests never see each other's data, and removes them after.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.cosmos.aio import CosmosClient
from azure.storage.queue.aio import QueueClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

REPO_ROOT = Path(__file__).resolve().parents[1]
# The project is not pip-installed into the venv: make `import flowcraft_core` work from any cwd.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from helpers import AzureTestEnv  # noqa: E402

from flowcraft_core.azure.clients import (  # noqa: E402
    ensure_queue,
    make_cosmos_client,
    make_queue_client,
    make_redis,
)
from flowcraft_dev.emulators import EmulatorError, Emulators  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tag every test that (transitively) needs the emulators, so `-m "not emulators"` works
    # without each module remembering the marker.
    for item in items:
        if "emulators" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emulators)


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    emu = Emulators(repo_root=REPO_ROOT)
    try:
        emu.start()
    except EmulatorError as exc:
        pytest.fail(f"could not start the local emulators: {exc}", pytrace=False)
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
async def azure_env(emulators: Emulators) -> AsyncIterator[AzureTestEnv]:
    token = uuid.uuid4().hex[:16]
    env = AzureTestEnv(
        queue_connection_string=emulators.queue_connection_string,
        # Queue names: 3-63 chars of [a-z0-9-]; leave room for the host's "-poison" suffix.
        queue_name=f"t-{token}",
        cosmos_connection_string=emulators.cosmos_connection_string,
        cosmos_verify_tls=False,
        cosmos_database=f"test-{token}",
        redis_url=emulators.redis_url,
        redis_prefix=f"test:{token}:",
        emulator_settings=emulators.env(),
    )
    yield env
    await _cleanup(env)


async def _cleanup(env: AzureTestEnv) -> None:
    for name in (env.queue_name, f"{env.queue_name}-poison"):
        async with make_queue_client(env.queue_connection_string, name) as qc:
            with contextlib.suppress(ResourceNotFoundError):
                await qc.delete_queue()
    async with make_cosmos_client(env.cosmos_connection_string, verify_tls=env.cosmos_verify_tls) as cc:
        with contextlib.suppress(ResourceNotFoundError):
            await cc.delete_database(env.cosmos_database)
    redis = make_redis(env.redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{env.redis_prefix}*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


# Function-scoped clients on the test's own event loop, for tests that just need one of them.


@pytest.fixture
async def queue_client(azure_env: AzureTestEnv) -> AsyncIterator[QueueClient]:
    """A client for this test's queue, which already exists."""
    async with make_queue_client(azure_env.queue_connection_string, azure_env.queue_name) as qc:
        await ensure_queue(qc)
        yield qc


@pytest.fixture
async def cosmos_client(azure_env: AzureTestEnv) -> AsyncIterator[CosmosClient]:
    """A client for the stand-in; create ``azure_env.cosmos_database`` with ensure_cosmos_containers."""
    async with make_cosmos_client(azure_env.cosmos_connection_string, verify_tls=azure_env.cosmos_verify_tls) as cc:
        yield cc


@pytest.fixture
async def redis_client(azure_env: AzureTestEnv) -> AsyncIterator[Redis]:
    """A client for the private redis-server; prefix keys with ``azure_env.redis_prefix``."""
    client = make_redis(azure_env.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


class _SwitchableExporter(InMemorySpanExporter):
    """Keeps spans only while a test uses it (the provider outlives the test and keeps exporting)."""

    active = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return super().export(spans) if self.active else SpanExportResult.SUCCESS


_span_exporter = _SwitchableExporter()
_span_exporter_attached: list[bool] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's SDK tracer provider (OpenTelemetry allows one per process), with an in-memory exporter."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider
    if not _span_exporter_attached:
        provider.add_span_processor(SimpleSpanProcessor(_span_exporter))
        _span_exporter_attached.append(True)
    _span_exporter.clear()
    _span_exporter.active = True
    yield _span_exporter
    _span_exporter.active = False
    _span_exporter.clear()
