"""Fixtures for the infra/ tests."""

from __future__ import annotations

import pytest
from infra_model import Terraform, load_terraform


@pytest.fixture(scope="session")
def tf() -> Terraform:
    """infra/*.tf, parsed once per session."""
    return load_terraform()
