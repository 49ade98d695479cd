"""The mqtt transmit against Mosquitto (Debian's package, started by the tests)."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from connectors.transmits.mqtt import MqttPublishError, MqttTransmit, topic_for
from dataflows.config import load, validate
from dataflows.context import RunContext
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch, StreamKey
from dataflows.report import TransmitReport, WriteInterrupted
from dataflows.spool import spooled_batches
from dataflows.testing import poll_until
from tests.conftest import NAB_ROWS
from tests.connectors.conformance import TransmitHarness, transmit_harness
from tests.connectors.transmits.test_kafka import nab_receiver, nab_values
from tests.services.mosquitto import (
    PASSWORD,
    PASSWORD_USER,
    Mosquitto,
    Subscriber,
    mosquitto_broker,
)
from tests.services.process import free_port


def transmit(**keys: Any) -> MqttTransmit:
    doc = {"data_receiver": [], "transforms": [],
           "data_transmit": [{"transmit_name": "mqtt", "transmit_type": "mqtt", **keys}]}
    return load(doc, runnable=False).data_transmit[0]


def violations(**keys: Any) -> list[tuple[list[Any], str]]:
    doc = {"data_receiver": [], "transforms": [], "data_transmit": [
        {"transmit_name": "m", "transmit_type": "mqtt", "host": "127.0.0.1", **keys}]}
    return [(v.json_path, v.description) for v in validate(doc)]


def test_config_rules() -> None:
    assert violations() == []
    assert violations(topic="plant/{asset}/{stream_type}/data", tls=True, ca_file="/ca.pem") == []
    assert violations(topic="plant/#")[0][0] == ["data_transmit", 0, "topic"]
    assert "only {asset} and {stream_type}" in violations(topic="plant/{line}")[0][1]
    assert violations(tls=True, cert_file="/c.pem")[0][1] == "give both 'cert_file' and 'key_file', or neither"
    assert violations(ca_file="/ca.pem")[0][1] == "'ca_file', 'cert_file' and 'key_file' need \"tls\": true"
    assert [v[0] for v in violations(qos=0)] == [["data_transmit", 0, "qos"]]


def test_topics_from_the_template() -> None:
    assert topic_for("factoryflow/{asset}/{stream_type}", StreamKey("press 1", "cycle")) == "factoryflow/press 1/cycle"
    assert topic_for("p/{asset}/{stream_type}", StreamKey("a+b#", "c\x00")) == "p/a_b_/c_"


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"timestamp": pl.datetime_range(datetime(2024, 1, 1), datetime(2024, 1, 1, 1),
                                                        "1s", eager=True)[:n],
                         "seq": range(n)})


def open_writer(config: MqttTransmit, home: Path) -> Any:
    """The transmit's writer on an installation at ``home`` (its report writes the ledger there)."""
    return config.open_writer(RunContext(home=home), TransmitReport(Ledger(ledger_path(home)), config.transmit_name,
                                                                     config.record_noun))


def write_once(config: MqttTransmit, batches: list[Batch], home: Path) -> None:
    writer = open_writer(config, home)
    try:
        assert writer.write(batches) == "delivered"
    finally:
        writer.close()


def test_records_and_batches_on_each_listener(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """One message per record, or one per batch, each acknowledged; with a password, and
    over TLS with a client certificate."""
    name = uuid.uuid4().hex[:8]
    subscriber = Subscriber(mosquitto, f"{name}/#", f"sub-{name}")
    batch = Batch("r", StreamKey("press", "cycle"), frame(5), "query")
    write_once(transmit(host="127.0.0.1", port=mosquitto.port, topic=f"{name}/{{asset}}/{{stream_type}}"), [batch], tmp_path)
    write_once(transmit(host="127.0.0.1", port=mosquitto.password_port, username=PASSWORD_USER, password=PASSWORD,
                        topic=f"{name}/password/{{asset}}", payload="batch"), [batch], tmp_path)
    write_once(transmit(host="127.0.0.1", port=mosquitto.tls_port, username=PASSWORD_USER, password=PASSWORD,
                        tls=True, ca_file=str(mosquitto.certificate.cert), cert_file=str(mosquitto.client_cert),
                        key_file=str(mosquitto.client_key), topic=f"{name}/tls/{{asset}}",
                        protocol_version="5"), [batch], tmp_path)
    got = subscriber.wait_for(11, timeout=20)
    subscriber.close()
    records = [json.loads(p) for t, p in got if t == f"{name}/press/cycle"]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[1] == {"asset": "press", "stream_type": "cycle", "timestamp": "2024-01-01T00:00:01Z", "seq": 1}
    (array,) = [json.loads(p) for t, p in got if t == f"{name}/password/press"]
    assert [r["seq"] for r in array] == [0, 1, 2, 3, 4]
    assert [json.loads(p)["seq"] for t, p in got if t == f"{name}/tls/press"] == [0, 1, 2, 3, 4]


def test_a_wrong_password_or_no_broker_fails_the_write(mosquitto: Mosquitto, tmp_path: Path) -> None:
    batch = Batch("r", StreamKey("press", "cycle"), frame(2), "query")
    for config in (transmit(host="127.0.0.1", port=mosquitto.password_port, username=PASSWORD_USER,
                            password="wrong", publish_timeout=2),
                   transmit(host="127.0.0.1", port=free_port(), publish_timeout=2)):
        writer = open_writer(config, tmp_path)
        with pytest.raises(MqttPublishError, match="not connected to 127.0.0.1:"):
            writer.write([batch])
        writer.close()


def test_a_dead_broker_is_the_last_error_within_seconds_and_a_stop_ends_the_wait(tmp_path: Path) -> None:
    """No broker: after 10 s the transmit's last error says so (the write keeps waiting, up to
    ``publish_timeout``); once the dataflow stops, the wait ends within seconds."""
    config = transmit(host="127.0.0.1", port=free_port(), publish_timeout=120)
    ctx = RunContext(home=tmp_path)
    writer = config.open_writer(ctx, TransmitReport(Ledger(ledger_path(tmp_path)), "mqtt", "messages"))
    failure: list[BaseException] = []
    thread = threading.Thread(target=lambda: _capture(failure, writer.write, [
        Batch("r", StreamKey("press", "cycle"), frame(3), "query")]))
    thread.start()
    ledger = Ledger(ledger_path(tmp_path))
    poll_until(lambda: ledger.transmit_status("mqtt").last_error is not None, timeout=20)
    error = ledger.transmit_status("mqtt").last_error or ""
    assert error.startswith("the broker 127.0.0.1:") and "acknowledged none of 3 messages" in error, error
    assert thread.is_alive()  # still waiting: publish_timeout is 120 s
    stopping = time.monotonic()
    ctx.shutdown.set()
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - stopping < 5
    assert isinstance(failure[0], WriteInterrupted) and "the spool keeps them" in str(failure[0])
    writer.close()


def _capture(out: list[BaseException], call: Any, *args: Any) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        out.append(exc)


def test_every_record_arrives_through_a_broker_restart(tmp_path: Path, nab_machine_csv: Path, flows: Any) -> None:
    """The dataflow sends the NAB file while the broker is killed (SIGKILL) and started again:
    a persistent subscriber gets every record, in the file's order."""
    data = tmp_path / "in"
    data.mkdir()
    header, *rows = nab_machine_csv.read_bytes().splitlines(keepends=True)
    (data / "nab.csv").write_bytes(header + b"".join(rows[:3000]))
    with mosquitto_broker() as broker:  # its own broker: the session's is never stopped
        subscriber = Subscriber(broker, "restart/#", "sub-restart")
        config = {"data_receiver": [nab_receiver(data, ["nab"])], "transforms": [], "data_transmit": [
            {"transmit_name": "mqtt", "transmit_type": "mqtt", "host": "127.0.0.1", "port": broker.port,
             "topic": "restart/{asset}", "publish_timeout": 5}]}
        flow = flows(tmp_path / "home", config)
        flow.start()
        ledger = Ledger(ledger_path(flow.home))
        flow.wait_for(lambda: ledger.progress("mqtt", "nab:csv")[0] >= 3000, what="first rows")
        broker.kill()
        with (data / "nab.csv").open("ab") as out:  # rows keep arriving while the broker is down
            out.write(b"".join(rows[3000:]))
        flow.wait_for(lambda: "not connected to 127.0.0.1" in flow.log(), timeout=60, what="the failed write")
        assert ledger.progress("mqtt", "nab:csv")[0] == 3000
        broker.start()
        flow.wait_for(lambda: ledger.progress("mqtt", "nab:csv")[0] >= NAB_ROWS, timeout=120,
                      what="every row after the restart")
        assert flow.stop(signal.SIGTERM) == 0
        got = subscriber.wait_for(NAB_ROWS, timeout=30)
        subscriber.close()
    values = [json.loads(p)["value"] for _, p in got]
    unique = list(dict.fromkeys(  # at-least-once: a batch in flight at the stop may come twice
        (json.loads(p)["timestamp"], json.loads(p)["value"]) for _, p in got))
    print(f"{len(got)} messages for {NAB_ROWS} rows ({len(got) - len(unique)} duplicates)")
    assert [v for _, v in unique] == nab_values(nab_machine_csv)
    assert len(values) >= NAB_ROWS


@transmit_harness
class MqttHarness(TransmitHarness):
    """A topic of the session's broker, read by a persistent subscriber from the start."""

    transmit_type = "mqtt"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.broker: Mosquitto = request.getfixturevalue("mosquitto")
        self.name = f"conformance-{uuid.uuid4().hex[:8]}"
        self.subscriber = Subscriber(self.broker, f"{self.name}/#", self.name)

    def transmit(self, home: Path) -> dict[str, Any]:
        return {"transmit_name": "conformance", "transmit_type": "mqtt", "host": "127.0.0.1",
                "port": self.broker.port, "topic": f"{self.name}/{{asset}}/{{stream_type}}"}

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        # the spool first: a batch published meanwhile is then with the subscriber, never missed
        spooled = [s for b in spooled_batches(home / "components" / "conformance" / "spool.sqlite")
                   for s in b.frame["seq"].to_list()]
        got = self.subscriber.wait_for(expected - len(spooled), timeout=10)
        return spooled + [json.loads(payload)["seq"] for _, payload in got]

    def close(self) -> None:
        self.subscriber.close()
