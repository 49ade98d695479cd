"""docs/connectors.md stays true: its example connector is built from the page, registers
itself, and runs, with nothing else edited."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from api import meta
from api.templates import template_for
from dataflows import registry
from dataflows.config import load, validate
from dataflows.ledger import Ledger, ledger_path
from dataflows.sdk import RunContext
from dataflows.testing import StreamDriver
from tests.test_architecture import PUBLIC_SDK

DOC = Path(__file__).resolve().parents[2] / "docs" / "connectors.md"


def example_source() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- example: connectors/receivers/host_health.py -->\n```python\n(.*?)```",
                      text, re.DOTALL)
    assert match, "docs/connectors.md lost its example module"
    return match.group(1)


@pytest.fixture
def host_health(tmp_path: Path) -> Iterator[Any]:
    """The doc's module, imported from a file, registered; unregistered afterwards."""
    path = tmp_path / "host_health.py"
    path.write_text(example_source())
    spec = importlib.util.spec_from_file_location("doc_example_host_health", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        registry.receivers.unregister("host_health")
        sys.modules.pop(spec.name, None)


def test_the_example_imports_only_the_public_sdk() -> None:
    imported = set(re.findall(r"^from (dataflows[\w.]*) import", example_source(), re.MULTILINE))
    assert imported and imported <= PUBLIC_SDK


def test_the_example_connector_validates_runs_and_is_served(host_health: Any, tmp_path: Path) -> None:
    cls = registry.receivers.get("host_health")
    assert cls is host_health.HostHealthReceiver
    sink = {"transmit_name": "local", "transmit_type": "localfile"}
    document = {"data_receiver": [cls.example], "transforms": [], "data_transmit": [sink]}
    assert validate(document, runnable=True) == []
    bad = {**cls.example, "streams": [{"asset": "a", "stream_type": "b", "cpu_measure": "median"}]}
    (violation,) = validate({**document, "data_receiver": [bad]})
    assert violation.json_path == ["data_receiver", 0, "streams", 0, "cpu_measure"]
    assert violation.description == "unsupported cpu_measure 'median'; accepted: busiest, total"
    (unknown,) = validate({**document, "data_receiver": [{**cls.example, "protocol": "ftp"}]})
    assert "host_health" in unknown.description.split("accepted: ")[1].split(", ")  # the registry's list

    receiver = load(document).data_receiver[0]
    (stream,) = receiver.stream_list
    ctx = RunContext(home=tmp_path / "home")
    partition = StreamDriver(receiver, ctx, 41)
    (batch,) = partition.next_batch()
    record = batch.frame.row(0, named=True)
    assert record["sample"] == 42 and 0 <= record["disk_percent"] <= 100
    assert 0 <= record["cpu_percent"] <= 100 and 0 <= record["memory_percent"] <= 100
    assert abs((datetime.now(UTC) - record["timestamp"]).total_seconds()) < 60
    assert partition.snapshot().reader == 42
    assert partition.next_batch() == []  # the next sample waits for poll_interval
    partition.close()
    assert Ledger(ledger_path(ctx.home)).received() == {("edge box", "edge_1:health"): 1}

    schema = meta.describe_object("data_receiver_asset", "host_health")["schema"]["schema"]
    assert schema["$defs"]["HostStream"]["properties"]["cpu_measure"]["enum"] == ["total", "busiest"]
    template = template_for("host_health")
    assert template is not None and template["data_receiver"] == [cls.template.receiver]
    assert [v for v in validate(template) if v.level == "error"] == []
    assert "| receiver | `host_health` | yes | Samples the collector host's CPU, memory and disk use. |" \
        in registry.what_runs()
