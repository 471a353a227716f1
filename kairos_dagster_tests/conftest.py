"""Fixtures shared by the test modules that run Dagster jobs."""

import pytest
from dagster import DagsterInstance


@pytest.fixture(scope="module")
def instance():
    """An ephemeral Dagster instance, one per test module."""
    with DagsterInstance.ephemeral() as inst:
        yield inst
