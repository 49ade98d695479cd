"""Fixtures shared by the test suite: real services, the NAB sensor data, flow runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flowrun import FlowProcess
from tests.services.azurite import Azurite, azurite
from tests.services.kafka import KafkaBroker, kafka_broker
from tests.services.mosquitto import Mosquitto, mosquitto_broker
from tests.services.postgres import Postgres, postgres_server
from tests.services.s3proxy import S3Server, s3_server
from tests.services.samba import SambaServer, samba_server
from tests.services.tls import TestCertificate, make_certificate
from tests.simulators.azure_token import AzureTokenSimulator
from tests.simulators.sightmachine import SightMachineSimulator

_CERT_DIR = Path(tempfile.mkdtemp(prefix="factoryflow-tls-"))
#: The session's self-signed certificate for HTTPS test servers (Azurite, the token endpoint).
CERTIFICATE = make_certificate(_CERT_DIR)
# trusted by every TLS client of the session and of the dataflows it starts: set before any
# client library (aiohttp builds its default context at import) is imported
os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(CERTIFICATE.bundle)

#: The service principal the Azure tests sign in as (tenant, client id, secret).
TENANT_ID = "beb1d7f9-8e2e-4dc4-83be-190ebceb70ea"
CLIENT_ID = "b8d454e3-67ec-4f2f-8dcb-a5d6f87abbc6"
CLIENT_SECRET = "factoryflow-test-client-secret"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CERT_DIR, ignore_errors=True)

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


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto broker for the whole session (never stopped mid-session: outage tests
    start their own)."""
    with mosquitto_broker() as broker:
        yield broker


@pytest.fixture(scope="session")
def certificate() -> TestCertificate:
    """The session's trusted self-signed certificate for ``127.0.0.1``."""
    return CERTIFICATE


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """An S3Proxy server (filesystem backend) for the whole session."""
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def azurite_http() -> Iterator[Azurite]:
    """Azurite's blob service over HTTP (connection strings with the account key)."""
    with azurite() as server:
        yield server


@pytest.fixture(scope="session")
def azure_token() -> Iterator[AzureTokenSimulator]:
    """The Azure AD token endpoint simulator, knowing the tests' service principal."""
    with AzureTokenSimulator(CERTIFICATE, TENANT_ID, {CLIENT_ID: CLIENT_SECRET}) as simulator:
        yield simulator


@pytest.fixture(scope="session")
def azurite_https() -> Iterator[Azurite]:
    """Azurite's blob service over HTTPS with OAuth (bearer tokens from :func:`azure_token`)."""
    with azurite(CERTIFICATE) as server:
        yield server


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """A Samba server with one share (``data``), encryption required, for the whole session."""
    with samba_server() as server:
        yield server


@pytest.fixture
def sight_machine() -> Iterator[SightMachineSimulator]:
    """A fresh Sight Machine ingest simulator, answering 200."""
    with SightMachineSimulator() as simulator:
        yield simulator


@pytest.fixture
def flows() -> Iterator[Any]:
    """``flows(home, config)`` makes a :class:`FlowProcess`; whatever still runs is killed."""
    started: list[FlowProcess] = []

    def make(home: Path, config: dict[str, Any], snapshot: int = 1, workers: int = 1) -> FlowProcess:
        flow = FlowProcess(home, config, snapshot=snapshot, workers=workers)
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
