"""Fixtures shared by the test suite: real services, the NAB sensor data, flow runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flowrun import FlowProcess
from tests.services.kafka import KafkaBroker, kafka_broker
from tests.services.postgres import Postgres, postgres_server
from tests.simulators.sightmachine import SightMachineSimulator

#: The NAB series the project ships (MIT, LICENSE.txt beside it).
NAB = Path(__file__).resolve().parents[1] / "data" / "nab"
NAB_ROWS = 22_695  # rows of machine_temperature_system_failure.csv (header excluded)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session (started and stopped by the tests)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """A single-node KRaft Kafka broker for the whole session (never stopped mid-session:
    outage tests start their own)."""
    with kafka_broker() as broker:
        yield broker


@pytest.fixture
def sight_machine() -> Iterator[SightMachineSimulator]:
    """A fresh Sight Machine ingest simulator, answering 200."""
    with SightMachineSimulator() as simulator:
        yield simulator


@pytest.fixture
def flows() -> Iterator[Any]:
    """``flows(home, config)`` makes a :class:`FlowProcess`; whatever still runs is killed."""
    started: list[FlowProcess] = []

    def make(home: Path, config: dict[str, Any], snapshot: int = 1) -> FlowProcess:
        flow = FlowProcess(home, config, snapshot=snapshot)
        started.append(flow)
        return flow

    yield make
    for flow in started:
        flow.close()


@pytest.fixture
def nab_machine_csv() -> Path:
    """The NAB machine temperature series: ``timestamp,value``, 22,695 rows."""
    path = NAB / "machine_temperature_system_failure.csv"
    assert path.exists(), f"{path} is missing from the repository"
    return path
