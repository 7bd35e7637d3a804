"""Fixtures of the reliability suite (crashes, duplicates, outages, load, hostile input, secrets).

The modules next to this file are imported by plain name (pytest puts this directory on sys.path), so
they carry a ``rel_`` prefix to stay clear of other suites' helper modules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from helpers import AzureTestEnv
from rel_support import RelHarness


@pytest.fixture
async def rel(azure_env: AzureTestEnv) -> AsyncIterator[RelHarness]:
    """A builder of workers on this test's queue, Cosmos database and Redis prefix."""
    harness = RelHarness(azure_env)
    try:
        yield harness
    finally:
        await harness.close()
