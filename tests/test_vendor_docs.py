"""docs/vendors.md stays true: each connector's example runs in the main job against its
simulator started as a process (``python -m tests.simulators.<vendor> --port N``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataflows.config import validate
from tests.flowrun import REPO
from tests.services.process import free_port
from tests.simulators.authentise import DEMO_USER

DOC = REPO / "docs" / "vendors.md"
PORTS = {"factoryio": 7410, "machinemetrics": 8010, "authentise": 8020}
CAPTURE = (REPO / "tests" / "fixtures" / "authentise" / "modeler_status_1.log").read_bytes()


def example(vendor: str) -> str:
    """The JSON of the page's ``<!-- run: vendor -->`` block."""
    match = re.search(rf"<!-- run: {vendor} -->\n```json\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert match, f"docs/vendors.md lost its {vendor} example"
    return match.group(1)


@pytest.fixture
def simulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The vendor's simulator as a process on a free port: (base URL, port)."""
    vendor, port = request.param, free_port()
    log = open(tmp_path / f"{vendor}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", f"tests.simulators.{vendor}", "--port", str(port)],
                            cwd=REPO, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(base + "/", timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"{vendor}.log").read_text()
            time.sleep(0.1)
    yield base, port
    proc.terminate()
    assert proc.wait(15) == 0  # a clean exit on SIGTERM
    log.close()


def config(vendor: str, port: int, **replace: str) -> dict[str, Any]:
    text = example(vendor).replace(f":{PORTS[vendor]}", f":{port}").replace(f'"port": {PORTS[vendor]}',
                                                                            f'"port": {port}')
    for old, new in replace.items():
        text = text.replace(old, new)
    document = json.loads(text)
    assert [v for v in validate(document) if v.level == "error"] == []
    return document


@pytest.mark.parametrize("simulator", ["factoryio"], indirect=True)
def test_the_factoryio_example(simulator: tuple[str, int], tmp_path: Path, flows: Any) -> None:
    _, port = simulator
    flow = flows(tmp_path / "home", config("factoryio", port))
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", "sorter__sensors.jsonl")) >= 3, what="three polls")
    assert flow.stop() == 0
    sensors = flow.output("local", "sorter__sensors.jsonl")
    assert set(sensors[0]) == {"asset", "stream_type", "timestamp", "At entry", "Weight [input 0]",
                               "Weight [input 1]", "Pieces sorted"}
    actuators = flow.output("local", "sorter__actuators.jsonl")
    assert actuators and "FACTORY I/O (Reset)" in actuators[0] and "Entry conveyor" in actuators[0]


@pytest.mark.parametrize("simulator", ["machinemetrics"], indirect=True)
def test_the_machinemetrics_example(simulator: tuple[str, int], tmp_path: Path, flows: Any) -> None:
    _, port = simulator
    flow = flows(tmp_path / "home", config("machinemetrics", port))
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", "cnc_cell__production.jsonl")) >= 3
                  and flow.output("local", "cnc_cell__downtime.jsonl"), timeout=60, what="a window's rollups")
    assert flow.stop() == 0
    production = flow.output("local", "cnc_cell__production.jsonl")
    assert {r["machine"] for r in production[:3]} == {"MACHINE 1", "MACHINE 2", "MACHINE 3"}
    assert all(isinstance(r["totalParts"], int) for r in production)
    assert {r["reason"] for r in flow.output("local", "cnc_cell__downtime.jsonl")} <= {
        "Chipping Out", "Part Changeover", "Setup"}


@pytest.mark.parametrize("simulator", ["authentise"], indirect=True)
def test_the_authentise_example(simulator: tuple[str, int], tmp_path: Path, flows: Any) -> None:
    base, port = simulator
    spool = tmp_path / "echo"
    spool.mkdir()
    for i in range(3):
        (spool / f"status_{i}.log").write_bytes(CAPTURE.replace(b'"my-job"', f'"job-{i}"'.encode()))
    flow = flows(tmp_path / "home", config("authentise", port, **{"/var/spool/echo/fortus_1": str(spool)}))
    client = httpx.Client(base_url=base)
    assert client.post("/sessions/", json=dict(zip(("username", "password"), DEMO_USER, strict=True))).is_success

    def uploaded() -> list[dict[str, Any]]:
        return [c for c in client.get("/capture/").json()["resources"] if c["status"] == "uploaded"]

    flow.start()
    flow.wait_for(lambda: len(uploaded()) == 3 and len(flow.output("local", "fortus_1__status.jsonl")) == 3,
                  what="three captures uploaded and parsed")
    assert flow.stop() == 0
    assert sorted(b["name"] for b in client.get("/build/").json()["resources"]) == ["job-0", "job-1", "job-2"]
    status = flow.output("local", "fortus_1__status.jsonl")
    assert sorted(r["currentJob.jobName"] for r in status) == ["job-0", "job-1", "job-2"]
    assert {r["general.modelerStatus"] for r in status} == {"Building"}
    client.close()
