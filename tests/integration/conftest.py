"""Fixtures for distributed runs against the real emulators (Azurite, the Cosmos DB stand-in, Redis).

``distributed`` builds the production wiring (``build_services(Settings)``) on this test's queue,
database and Redis, starts the adapter's polling worker, and closes everything afterwards. Tests pass
their own registry and blueprints, and optionally an event bus or engine options (see harness.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from harness import Distributed
from helpers import AzureTestEnv


@pytest.fixture
async def distributed(azure_env: AzureTestEnv) -> AsyncIterator[Distributed]:
    """A builder of distributed runtimes on this test's queue, Cosmos database and Redis."""
    harness = Distributed(azure_env)
    try:
        yield harness
    finally:
        await harness.close()
