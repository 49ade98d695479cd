"""Fixtures shared by the test suite: real services, the NAB sensor data, flow runs.

A service's module is imported by its fixture, when a test uses it. The session's TLS
certificate is made in :func:`pytest_configure`, before any test module (and so any
client library) is imported: the product's TLS clients trust it through ``SSL_CERT_FILE``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.flowrun import FlowProcess
    from tests.services.azurite import Azurite
    from tests.services.kafka import KafkaBroker
    from tests.services.mariadb import MariaDB
    from tests.services.mosquitto import Mosquitto
    from tests.services.postgres import Postgres
    from tests.services.s3proxy import S3Server
    from tests.services.samba import SambaServer
    from tests.services.tls import TestCertificate
    from tests.simulators.azure_token import AzureTokenSimulator
    from tests.simulators.sightmachine import SightMachineSimulator

_CERT_DIR = Path(tempfile.mkdtemp(prefix="factoryflow-tls-"))
#: The session's self-signed certificate for HTTPS test servers (Azurite, the token
#: endpoint), made by :func:`pytest_configure`.
CERTIFICATE: TestCertificate

#: The service principal the Azure tests sign in as (tenant, client id, secret).
TENANT_ID = "beb1d7f9-8e2e-4dc4-83be-190ebceb70ea"
CLIENT_ID = "b8d454e3-67ec-4f2f-8dcb-a5d6f87abbc6"
CLIENT_SECRET = "factoryflow-test-client-secret"


def pytest_configure(config: pytest.Config) -> None:
    """Make the session's certificate and have every TLS client of the session, and of the
    dataflows it starts, trust it: before any client library is imported (aiohttp builds
    its default context at import)."""
    global CERTIFICATE
    from tests.services.tls import make_certificate

    CERTIFICATE = make_certificate(_CERT_DIR)
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(CERTIFICATE.bundle)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_CERT_DIR, ignore_errors=True)

#: The NAB series the project ships (MIT, LICENSE.txt beside it).
NAB = Path(__file__).resolve().parents[1] / "data" / "nab"
NAB_ROWS = 22_695  # rows of machine_temperature_system_failure.csv (header excluded)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the whole session (started and stopped by the tests)."""
    from tests.services.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """A MariaDB server for the whole session (started and stopped by the tests)."""
    from tests.services.mariadb import mariadb_server

    with mariadb_server() as server:
        yield server


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """A single-node KRaft Kafka broker for the whole session (never stopped mid-session:
    outage tests start their own)."""
    from tests.services.kafka import kafka_broker

    with kafka_broker() as broker:
        yield broker


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto broker for the whole session (never stopped mid-session: outage tests
    start their own)."""
    from tests.services.mosquitto import mosquitto_broker

    with mosquitto_broker() as broker:
        yield broker


@pytest.fixture(scope="session")
def certificate() -> TestCertificate:
    """The session's trusted self-signed certificate for ``127.0.0.1``."""
    return CERTIFICATE


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """An S3Proxy server (filesystem backend) for the whole session."""
    from tests.services.s3proxy import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def azurite_http() -> Iterator[Azurite]:
    """Azurite's blob service over HTTP (connection strings with the account key)."""
    from tests.services.azurite import azurite

    with azurite() as server:
        yield server


@pytest.fixture(scope="session")
def azure_token() -> Iterator[AzureTokenSimulator]:
    """The Azure AD token endpoint simulator, knowing the tests' service principal."""
    from tests.simulators.azure_token import AzureTokenSimulator

    with AzureTokenSimulator(CERTIFICATE, TENANT_ID, {CLIENT_ID: CLIENT_SECRET}) as simulator:
        yield simulator


@pytest.fixture(scope="session")
def azurite_https() -> Iterator[Azurite]:
    """Azurite's blob service over HTTPS with OAuth (bearer tokens from :func:`azure_token`)."""
    from tests.services.azurite import azurite

    with azurite(CERTIFICATE) as server:
        yield server


@pytest.fixture(scope="session")
def samba() -> Iterator[SambaServer]:
    """A Samba server with one share (``data``), encryption required, for the whole session."""
    from tests.services.samba import samba_server

    with samba_server() as server:
        yield server


@pytest.fixture
def sight_machine() -> Iterator[SightMachineSimulator]:
    """A fresh Sight Machine ingest simulator, answering 200."""
    from tests.simulators.sightmachine import SightMachineSimulator

    with SightMachineSimulator() as simulator:
        yield simulator


@pytest.fixture
def flows() -> Iterator[Any]:
    """``flows(home, config)`` makes a :class:`FlowProcess`; whatever still runs is killed."""
    from tests.flowrun import FlowProcess

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
