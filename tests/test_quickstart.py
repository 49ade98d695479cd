"""The FactoryTX quickstart config running as written: its ``azure_data_lake`` block with
only its secret and account host changed, against Azurite over HTTPS with OAuth and the
Azure AD token simulator; SQL and the transmit as in the demo (sqlite, localfile)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflows.demo import Plant, demo_config
from tests.conftest import CERTIFICATE, CLIENT_ID, CLIENT_SECRET, TENANT_ID
from tests.services.azurite import Azurite, azurite
from tests.simulators.azure_token import AzureTokenSimulator
from tests.specs import quickstart

STORE = "factorytxreceivertest"  # the quickstart's store_name, an Azurite account here


@pytest.fixture
def lake() -> Iterator[Azurite]:
    with azurite(CERTIFICATE, account=STORE) as server:
        yield server


def quickstart_config(home: Path, lake: Azurite, token: AzureTokenSimulator) -> dict[str, Any]:
    """The quickstart verbatim but for the Azure secret and hosts, SQL and the transmit."""
    config = quickstart()
    demo = demo_config(home)
    config["data_receiver"][0] = demo["data_receiver"][0]  # sqlite in place of MS SQL Server
    config["data_transmit"] = demo["data_transmit"]  # localfile in place of the Sight Machine cloud
    connection = config["data_receiver"][1]["connections"][0]
    assert (connection["tenant_id"], connection["client_id"], connection["store_name"]) == (
        TENANT_ID, CLIENT_ID, STORE)
    connection.update(client_secret=CLIENT_SECRET, account_host=lake.account_host,
                      authority_host=token.authority)
    return config


def test_the_quickstart_runs_as_written(tmp_path: Path, lake: Azurite, azure_token: AzureTokenSimulator,
                                       flows: Any) -> None:
    home = tmp_path / "home"
    plant = Plant(home)
    plant.create()
    for _ in range(11):  # rows every tick, a spraypaint file every fifth: 3 files
        plant.tick()
    files = sorted((home / "demo" / "spraypaint").glob("*.csv"))
    assert len(files) == 3
    fs = lake.filesystem()
    fs.mkdir("directory-1")
    for path in files:  # the quickstart's data_directory is the container
        fs.pipe(f"directory-1/{path.name}", path.read_bytes())
    config = quickstart_config(home, lake, azure_token)
    flow = flows(home, config)
    flow.start()
    outputs = {"spraypaint__azure_lake.jsonl": 12, "lasercut__mssql.jsonl": None,
               "diecast__mssql.jsonl": None, "fusion__mssql.jsonl": None}
    flow.wait_for(lambda: all(len(flow.output("MyTransmit_1", name)) >= (n or 1) for name, n in outputs.items()),
                  timeout=120, what="records of every quickstart stream")
    assert flow.stop() == 0
    delivered = {name: len(flow.output("MyTransmit_1", name)) for name in outputs}
    print("records delivered per stream:", json.dumps(delivered))
    assert delivered["spraypaint__azure_lake.jsonl"] == 12  # 3 files of 4 booths, once each
    spraypaint = flow.output("MyTransmit_1", "spraypaint__azure_lake.jsonl")
    assert all(r["timestamp"].endswith("Z") and r["booth"].startswith("booth_") for r in spraypaint)
    log = flow.log()
    assert "3 new or changed files of 3 present; 2 wait for the next polls" in log  # max_files_per_request 1
    assert azure_token.requests >= 1
