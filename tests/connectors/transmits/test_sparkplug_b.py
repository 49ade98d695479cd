"""The sparkplug_b transmit against Mosquitto, read by Eclipse Tahu's Java host (tahu-core's
decoder, run as a process) and by the mqtt receiver's Sparkplug B host."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from connectors.transmits.sparkplug_b import SparkplugTransmit
from dataflows.config import load, validate
from dataflows.context import RunContext
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch, StreamKey
from dataflows.report import TransmitReport
from dataflows.spool import spooled_batches
from dataflows.testing import poll_until
from tests.conftest import NAB_ROWS
from tests.connectors.conformance import TransmitHarness, transmit_harness
from tests.connectors.receivers.test_mqtt import Receiver, entry, presubscribe
from tests.services.mosquitto import Mosquitto, Subscriber
from tests.services.tahu import TahuHost

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def transmit(**keys: Any) -> SparkplugTransmit:
    doc = {"data_receiver": [], "transforms": [],
           "data_transmit": [{"transmit_name": "uns", "transmit_type": "sparkplug_b", **keys}]}
    return load(doc, runnable=False).data_transmit[0]


def violations(**keys: Any) -> list[tuple[list[Any], str]]:
    doc = {"data_receiver": [], "transforms": [], "data_transmit": [
        {"transmit_name": "uns", "transmit_type": "sparkplug_b", "host": "127.0.0.1", **keys}]}
    return [(v.json_path, v.description) for v in validate(doc)]


def test_config_rules() -> None:
    assert violations(group_id="plant1") == []
    assert violations() == [(["data_transmit", 0], "Object missing required field `group_id`")] or \
        violations()[0][1].endswith("`group_id`")
    assert violations(group_id="a/b")[0] == (["data_transmit", 0, "group_id"],
                                             "group_id 'a/b' holds '/', '+' or '#': Sparkplug ids are one topic level")
    assert "only {asset}, {stream_type} may be used" in violations(group_id="g", device_id="{line}")[0][1]
    assert violations(group_id="g", metric_name="{stream_type}/{column}") == []


def open_writer(config: SparkplugTransmit, home: Path) -> Any:
    return config.open_writer(RunContext(home=home), TransmitReport(Ledger(ledger_path(home)), config.transmit_name,
                                                                     config.record_noun))


def nab_batches(nab_machine_csv: Path, rows: int, per_batch: int) -> list[Batch]:
    frame = pl.read_csv(nab_machine_csv, try_parse_dates=True).head(rows).with_columns(
        pl.col("timestamp").dt.replace_time_zone("UTC"),
        (pl.int_range(pl.len()) % 256 - 128).cast(pl.Int8).alias("phase"),
        pl.when(pl.int_range(pl.len()) % 10 == 3).then(None).otherwise(pl.lit("ok")).alias("status"))
    return [Batch("nab", StreamKey("machine_1", "temperature"), frame.slice(i, per_batch), "nab.csv")
            for i in range(0, frame.height, per_batch)]


def test_a_connack_before_loop_start_returns_still_gets_the_births(mosquitto: Mosquitto, tmp_path: Path,
                                                                   nab_machine_csv: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that answers CONNECT before paho's ``loop_start`` returns: the edge node's
    ``on_connect`` publishes its births then, through a client it must already hold (it
    once died in paho's thread there, and every write waited for a connection, 60 s)."""
    import paho.mqtt.client as mqtt

    loop_start = mqtt.Client.loop_start

    def connected_first(client: mqtt.Client) -> Any:  # the CONNACK handled on this thread, first
        client.reconnect()
        deadline = time.monotonic() + 10
        while not client.is_connected() and time.monotonic() < deadline:
            client.loop(0.1)
        return loop_start(client)

    group = f"C{uuid.uuid4().hex[:6]}"
    watcher = Subscriber(mosquitto, f"spBv1.0/{group}/#", f"watch-{group}")
    monkeypatch.setattr(mqtt.Client, "loop_start", connected_first)
    writer = open_writer(transmit(host="127.0.0.1", port=mosquitto.port, group_id=group, edge_node_id="fast",
                                  publish_timeout=10.0), tmp_path / "tx")
    monkeypatch.undo()
    try:
        assert writer.write(nab_batches(nab_machine_csv, 10, 10)) == "delivered"
        poll_until(lambda: len(watcher.received()) >= 3, what="NBIRTH, DBIRTH and DDATA")
        assert [topic.split("/")[2] for topic, _ in watcher.received()[:3]] == ["NBIRTH", "DBIRTH", "DDATA"]
    finally:
        writer.close()
        watcher.close()


def test_an_edge_node_as_tahu_and_the_receiver_read_it(mosquitto: Mosquitto, tmp_path: Path,
                                                       nab_machine_csv: Path) -> None:
    """NBIRTH (bdSeq, Node Control/Rebirth), DBIRTH with aliases and datatypes, DDATA by alias
    with seq wrapping, a Rebirth NCMD answered, the NDEATH on close: as Tahu's Java host
    decodes them; and the mqtt receiver gets the whole NAB series back exactly."""
    group = f"U{uuid.uuid4().hex[:6]}"
    host = TahuHost(mosquitto, group, tmp_path)
    receiver_config = entry(mosquitto, [{"asset": "uns", "stream_type": "spb", "topic": f"spBv1.0/{group}/#"}],
                            payload_format="sparkplug_b")
    presubscribe(mosquitto, receiver_config)
    config = transmit(host="127.0.0.1", port=mosquitto.port, group_id=group, edge_node_id="ff1",
                      records_per_message=20)
    batches = nab_batches(nab_machine_csv, NAB_ROWS, 1000)  # the whole NAB series
    writer = open_writer(config, tmp_path / "tx")
    try:
        assert writer.write(batches[:3]) == "delivered"
        host.rebirth("ff1")
        poll_until(lambda: sum(m["topic"].endswith("/NBIRTH/ff1") for m in host.messages()) == 2,
                   what="the births answering the Rebirth request")
        assert writer.write(batches[3:]) == "delivered"
    finally:
        writer.close()
    poll_until(lambda: host.messages() and host.messages()[-1]["topic"].endswith("/NDEATH/ff1"), what="the NDEATH")
    messages = host.messages()
    host.close()
    assert [m for m in messages if "error" in m] == []
    kinds = [m["topic"].split("/")[2] for m in messages]
    # births, 3 batches of 50 DDATA, births again (the rebirth), 20 batches (the last 695 rows), the death
    assert kinds == ["NBIRTH", "DBIRTH", *["DDATA"] * 150, "NBIRTH", "DBIRTH", *["DDATA"] * (19 * 50 + 35), "NDEATH"]
    nbirth, dbirth = messages[0], messages[1]
    assert nbirth["seq"] == 0 and dbirth["seq"] == 1
    assert [(m["name"], m["datatype"], m["value"]) for m in nbirth["metrics"]] == [
        ("bdSeq", "Int64", "0"), ("Node Control/Rebirth", "Boolean", "false")]
    assert [(m["name"], m["alias"], m["datatype"]) for m in dbirth["metrics"]] == [
        ("value", 1, "Double"), ("phase", 2, "Int8"), ("status", 3, "String")]
    assert all(m["is_null"] for m in dbirth["metrics"])  # no value known yet
    ddata = messages[2]
    assert {m["name"] for m in ddata["metrics"]} == {None} and {m["alias"] for m in ddata["metrics"]} == {1, 2, 3}
    first = batches[0].frame.row(0, named=True)
    assert [(m["alias"], m["value"], m["timestamp"]) for m in ddata["metrics"][:3]] == [
        (1, repr(first["value"]), int(first["timestamp"].timestamp() * 1000)), (2, "-128", ddata["metrics"][0]["timestamp"]),
        (3, "ok", ddata["metrics"][0]["timestamp"])]
    rebirth_at = kinds.index("NBIRTH", 1)
    assert [m["seq"] for m in messages[:rebirth_at]] == list(range(152))
    second = [m["seq"] for m in messages[rebirth_at:-1]]
    assert second == [i % 256 for i in range(len(second))] and len(second) > 256  # wraps after 255
    assert messages[rebirth_at]["seq"] == 0 and messages[rebirth_at + 1]["seq"] == 1
    reborn = messages[rebirth_at + 1]["metrics"]  # the DBIRTH carries the last values written
    last = batches[2].frame.row(-1, named=True)
    assert [m["value"] for m in reborn] == [repr(last["value"]), str(last["phase"]), last["status"]]
    assert [(m["name"], m["value"]) for m in messages[-1]["metrics"]] == [("bdSeq", "0")]

    receiver = Receiver(receiver_config, tmp_path / "rx")
    got = receiver.rows({"uns:spb": NAB_ROWS + 4}, timeout=60)["uns:spb"]
    receiver.close()
    data = got.filter(pl.col("message_type") == "DDATA").select("timestamp", "value", "phase", "status")
    sent = pl.concat([b.frame for b in batches]).select("timestamp", "value", "phase", "status")
    assert data.schema["phase"] == pl.Int8
    assert data.with_columns(pl.col("timestamp").dt.cast_time_unit("us")).equals(sent)


def test_a_killed_job_leaves_its_ndeath_with_the_births_bdseq(mosquitto: Mosquitto, tmp_path: Path,
                                                              nab_machine_csv: Path, flows: Any) -> None:
    """The job SIGKILLed: the broker publishes the Will, an NDEATH whose bdSeq is the last
    NBIRTH's; the next run is born with the next bdSeq and delivers every record."""
    group = f"K{uuid.uuid4().hex[:6]}"
    host = TahuHost(mosquitto, group, tmp_path)
    data = tmp_path / "in"
    data.mkdir()
    config = {
        "data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.2,
                           "connections": [{"data_directory": str(data)}],
                           "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                           "streams": [{"asset": "machine_1", "stream_type": "temperature", "parser": "csv",
                                        "file_filter": ["*.csv"]}]}],
        "transforms": [{"transform_name": "utc", "transform_type": "convert_timestamps",
                        "field_names": ["timestamp"], "timezone": "UTC"}],
        "data_transmit": [{"transmit_name": "uns", "transmit_type": "sparkplug_b", "host": "127.0.0.1",
                           "port": mosquitto.port, "group_id": group, "edge_node_id": "job"}]}
    rows = pl.read_csv(nab_machine_csv)
    rows.head(2000).write_csv(data / "a.csv")
    flow = flows(tmp_path / "home", config)
    flow.start()
    poll_until(lambda: sum(len(m.get("metrics", [])) for m in host.messages() if "/DDATA/" in m["topic"]) >= 2000,
               timeout=60, what="the first file's records")
    flow.kill()
    poll_until(lambda: any(m["topic"].endswith("/NDEATH/job") for m in host.messages()), what="the Will")
    rows.slice(2000, 2000).write_csv(data / "b.csv")
    flow.start()
    flow.wait_for(lambda: sum(len(m.get("metrics", [])) for m in host.messages() if "/DDATA/" in m["topic"]) >= 4000,
                  timeout=60, what="the second file's records")  # fails with the job's log
    assert flow.stop(signal.SIGTERM) == 0
    poll_until(lambda: host.messages()[-1]["topic"].endswith("/NDEATH/job"), what="the NDEATH of the clean stop")
    messages = host.messages()
    host.close()
    events = [(m["topic"].split("/")[2], next((x["value"] for x in m["metrics"] if x["name"] == "bdSeq"), None))
              for m in messages if "DATA" not in m["topic"] and "DBIRTH" not in m["topic"]]
    assert events == [("NBIRTH", "0"), ("NDEATH", "0"), ("NBIRTH", "1"), ("NDEATH", "1")]
    pairs = [(x["timestamp"], float(x["value"])) for m in messages if "/DDATA/" in m["topic"] for x in m["metrics"]]
    expected = [(int(datetime.fromisoformat(t).replace(tzinfo=UTC).timestamp() * 1000), v)
                for t, v in rows.head(4000).select("timestamp", "value").rows()]
    print(f"{len(pairs)} values published for {len(expected)} records "
          f"({len(pairs) - len(set(pairs))} again after the kill: the batch in flight)")
    assert list(dict.fromkeys(pairs)) == expected  # every record, in order; at least once
    assert _EPOCH + timedelta(milliseconds=expected[0][0]) == datetime(2013, 12, 2, 21, 15, tzinfo=UTC)


def test_with_a_primary_host_the_edge_node_waits_for_its_state_online(mosquitto: Mosquitto, tmp_path: Path,
                                                                        nab_machine_csv: Path) -> None:
    """``primary_host_id``: no births and no data until the host's STATE says online (the
    write fails and is retried meanwhile); then births and data; offline again holds data."""
    import paho.mqtt.client as mqtt

    from connectors.transmits.sparkplug_b import SparkplugPublishError

    group = f"P{uuid.uuid4().hex[:6]}"
    host = TahuHost(mosquitto, group, tmp_path)
    config = transmit(host="127.0.0.1", port=mosquitto.port, group_id=group, edge_node_id="ff1",
                      primary_host_id=f"scada-{group}", publish_timeout=1.0)
    batches = nab_batches(nab_machine_csv, 100, 100)
    state = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"state-{group}")
    state.connect("127.0.0.1", mosquitto.port)
    state.loop_start()
    writer = open_writer(config, tmp_path / "tx")
    try:
        try:
            writer.write(batches)
        except SparkplugPublishError as exc:
            assert f"Primary Host scada-{group} is not online after 1 s" in str(exc)
        else:
            raise AssertionError("the write went out before the Primary Host was online")
        assert host.messages() == []
        state.publish(f"spBv1.0/STATE/scada-{group}", b'{"online": true, "timestamp": 1}', qos=1,
                      retain=True).wait_for_publish(5)
        assert writer.write(batches) == "delivered"
        state.publish(f"spBv1.0/STATE/scada-{group}", b'{"online": false, "timestamp": 1}', qos=1,
                      retain=True).wait_for_publish(5)
        poll_until(lambda: not writer._host_online, what="the host offline")
        try:
            writer.write(batches)
        except SparkplugPublishError as exc:
            assert "is not online" in str(exc)
        else:
            raise AssertionError("the write went out while the Primary Host was offline")
    finally:
        writer.close()
        state.publish(f"spBv1.0/STATE/scada-{group}", b"", qos=1, retain=True).wait_for_publish(5)
        state.loop_stop()
    poll_until(lambda: host.messages() and host.messages()[-1]["topic"].endswith("/NDEATH/ff1"), what="the NDEATH")
    kinds = [m["topic"].split("/")[2] for m in host.messages()]
    host.close()
    assert kinds == ["NBIRTH", "DBIRTH", "DDATA", "NDEATH"]


@transmit_harness
class SparkplugHarness(TransmitHarness):
    """A Sparkplug group of the session's broker, read by a subscriber from the start and
    decoded by the receiver's host (births, then DDATA by alias)."""

    transmit_type = "sparkplug_b"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.broker: Mosquitto = request.getfixturevalue("mosquitto")
        self.group = f"conformance{uuid.uuid4().hex[:8]}"
        self.subscriber = Subscriber(self.broker, f"spBv1.0/{self.group}/#", self.group)

    def transmit(self, home: Path) -> dict[str, Any]:
        return {"transmit_name": "conformance", "transmit_type": "sparkplug_b", "host": "127.0.0.1",
                "port": self.broker.port, "group_id": self.group}

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        from connectors._sparkplug import Sparkplug

        spooled = [s for b in spooled_batches(home / "components" / "conformance" / "spool.sqlite")
                   for s in b.frame["seq"].to_list()]
        decoder = Sparkplug()
        seqs: list[int] = []
        deadline = time.monotonic() + 10
        while len(spooled) + len(seqs) < expected and time.monotonic() < deadline:
            seqs = [r["seq"] for topic, payload in self.subscriber.received() if "/DDATA/" in topic or "BIRTH" in topic
                    for r in decoder.records(topic, payload, print) if r.get("seq") is not None
                    and r["message_type"] == "DDATA"]
            time.sleep(0.1)
        return spooled + seqs

    def close(self) -> None:
        self.subscriber.close()


def test_a_broker_killed_between_writes_gives_a_new_session_and_nothing_lost(tmp_path: Path,
                                                                             nab_machine_csv: Path) -> None:
    """The broker SIGKILLed: the next write fails (and is retried); once the broker is back,
    the edge node is born again with the next bdSeq (seq from 0), and the batch is published
    whole after the births, no old seq in between."""
    from connectors._sparkplug import parse_payload
    from connectors.transmits.sparkplug_b import SparkplugPublishError
    from tests.services.mosquitto import mosquitto_broker

    group = f"R{uuid.uuid4().hex[:6]}"
    batches = nab_batches(nab_machine_csv, 400, 200)
    with mosquitto_broker() as broker:
        watcher = Subscriber(broker, f"spBv1.0/{group}/#", f"watch-{group}")
        writer = open_writer(transmit(host="127.0.0.1", port=broker.port, group_id=group, edge_node_id="ff1",
                                      records_per_message=50, publish_timeout=2.0), tmp_path / "tx")
        try:
            assert writer.write(batches[:1]) == "delivered"
            watcher.wait_for(2 + 4, timeout=20)  # the broker acknowledged them; out to the watcher before the kill
            broker.kill()
            try:
                writer.write(batches[1:])
            except SparkplugPublishError as exc:
                print(f"while the broker was down: {exc}")
            else:
                raise AssertionError("a write succeeded with the broker down")
            broker.start()
            for _ in range(30):  # the forwarder retries with backoff
                try:
                    assert writer.write(batches[1:]) == "delivered"
                    break
                except SparkplugPublishError:
                    time.sleep(0.5)
            else:
                raise AssertionError("no write succeeded after the broker came back")
            got = watcher.wait_for(2 + 4 + 2 + 4, timeout=20)
        finally:
            writer.close()
            watcher.close()
    decoded = [(topic.split("/")[2], parse_payload(payload)) for topic, payload in got]
    kinds = [kind for kind, _ in decoded]
    assert kinds[:6] == ["NBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA", "DDATA"]
    second = kinds.index("NBIRTH", 1)
    assert kinds[second:second + 6] == ["NBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA", "DDATA"]
    assert [p.seq for _, p in decoded[second:second + 6]] == [0, 1, 2, 3, 4, 5]
    bdseqs = [next(m.long_value for m in p.metrics if m.name == "bdSeq") for k, p in decoded if k == "NBIRTH"]
    assert bdseqs[0] == 0 and bdseqs[-1] > 0
    values = [m.double_value for k, p in decoded[second:] if k == "DDATA" for m in p.metrics if m.alias == 1]
    assert values == batches[1].frame["value"].to_list()
