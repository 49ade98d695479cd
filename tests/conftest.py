"""Fixtures shared by the test suite: real services, the shared sensor data, flow runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.postgres import Postgres, postgres_server

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NAB = SHARED / "data" / "nab"
NAB_ROWS = 22_695  # rows of machine_temperature_system_failure.csv (header excluded)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session (started and stopped by the tests)."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def nab_machine_csv() -> Path:
    """The NAB machine temperature series: ``timestamp,value``, 22,695 rows."""
    path = NAB / "machine_temperature_system_failure.csv"
    assert path.exists(), f"{path} is missing: the tests read ../shared/data beside the repo"
    return path
