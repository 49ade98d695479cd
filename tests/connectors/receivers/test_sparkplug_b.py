"""The mqtt receiver's Sparkplug B host against outside implementations, each run as a
process through Debian's Mosquitto: Eclipse Tahu's Java edge node (tahu-core from Maven
Central) and Cirrus Link's Node.js client (sparkplug-client from npm)."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from dataflows.testing import poll_until
from tests.connectors.receivers.test_mqtt import Receiver, entry, presubscribe
from tests.services.cirruslink import CirrusLinkEdgeNode
from tests.services.mosquitto import Mosquitto, Subscriber
from tests.services.tahu import TahuEdgeNode

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


def columns(entry_: dict[str, Any]) -> dict[str, Any]:
    """The record columns Tahu's published values should become (``docs/mqtt.md``'s naming)."""
    out: dict[str, Any] = {}
    for name, value in entry_["values"].items():
        if name in ("Bytes", "File") and value is not None:
            out[name] = bytes.fromhex(value)
        elif name == "DateTime" and value is not None:
            out[name] = _ms(value)
        elif name == "DateTimeArray":
            out[name] = [_ms(v) for v in value]
        elif name in ("DataSet", "Template"):
            out.update({f"{name}/{key}": v for key, v in value.items()})
        else:
            out[name] = value
    return out


def same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return got == want or (math.isnan(got) and math.isnan(want))
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=True))
    return type(got) is type(want) and got == want if not isinstance(want, int | float) else got == want


def compare(frame: pl.DataFrame, published: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """How many metric values arrived exactly, and what is wrong (row, column, got, wanted)."""
    rows = frame.to_dicts()
    wrong: list[str] = []
    exact = 0
    if len(rows) != len(published):
        wrong.append(f"{len(rows)} records for {len(published)} messages")
    for index, (row, sent) in enumerate(zip(rows, published, strict=False)):
        if row["message_type"] != sent["type"] or row["timestamp"] != _ms(sent["timestamp"]):
            wrong.append(f"record {index}: {row['message_type']} at {row['timestamp']}, sent {sent['type']} "
                         f"at {_ms(sent['timestamp'])}")
        for name, want in columns(sent).items():
            got = row.get(name, "<missing>")
            if isinstance(got, pl.Series):
                got = got.to_list()
            if same(got, want):
                exact += 1
            else:
                wrong.append(f"record {index} ({sent['type']}) {name}: got {got!r}, sent {want!r}")
    return exact, wrong


def test_tahu_java_edge_node_every_datatype_exact(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Tahu's Java encoder (Int8/Int16 sign-extended, UInt32 in long_value, datatypes stripped
    from data) through a seq wrap: every metric of every message delivered with its value,
    once; the DDEATH and NDEATH mark the stream."""
    group = f"T{uuid.uuid4().hex[:6]}"
    config = entry(mosquitto, [{"asset": "tahu", "stream_type": "spb", "topic": f"spBv1.0/{group}/#"}],
                   payload_format="sparkplug_b")
    presubscribe(mosquitto, config)
    node = TahuEdgeNode(mosquitto, group, "edge1", "plc1", messages=300, interval_ms=0, workdir=tmp_path, bd_seq=7)
    try:
        published = node.wait()
    finally:
        node.close()
    sent = node.expected()
    assert published == len(sent) + 2 == 304  # NBIRTH, DBIRTH, 300 DDATA, DDEATH, NDEATH
    receiver = Receiver(config, tmp_path / "home")
    got = receiver.rows({"tahu:spb": len(sent)})["tahu:spb"]
    # the DDEATH and the NDEATH carry no records: the last records may be read before them
    receiver.pump(lambda _: any("NDEATH" in m.message for m in receiver.markers()))
    markers = [(m.category, m.message) for m in receiver.markers()]
    receiver.close()
    exact, wrong = compare(got, sent)
    metrics = sum(len(columns(s)) for s in sent)
    print(f"Tahu Java: {published} messages published, {len(sent)} with records, {metrics} metric values; "
          f"{exact} delivered exactly, {len(wrong)} wrong or lost")
    assert wrong == []
    assert exact == metrics
    assert got["Double:engUnit"][1] == "°C" and got["Double:engLow"][1] == -40 and got["Double:Quality"][1] == 192
    assert got["File:file_name"].to_list()[1:4] == ["f0.txt", "f1.txt", "f2.txt"]
    assert "Motor" not in got.columns  # a Template definition is not a value
    assert {name: got.schema[name] for name in ("Int8", "UInt64", "Float", "DateTime", "Bytes", "Int8Array",
                                                "DataSet/count", "Template/rpm", "BooleanArray")} == {
        "Int8": pl.Int8, "UInt64": pl.UInt64, "Float": pl.Float32, "DateTime": pl.Datetime("ms", "UTC"),
        "Bytes": pl.Binary, "Int8Array": pl.List(pl.Int8), "DataSet/count": pl.List(pl.Int32),
        "Template/rpm": pl.Int16, "BooleanArray": pl.List(pl.Boolean)}
    assert markers == [("input warning", f"edge node {group}/edge1 went offline (NDEATH on "
                                         f"'spBv1.0/{group}/NDEATH/edge1', bdSeq 7)")]


def test_tahu_java_edge_node_through_a_broker_sigkill(tmp_path: Path) -> None:
    """The broker SIGKILLed halfway and started again: Tahu's node reconnects and is born
    again (seq 0); the receiver's session reconnects; every metric delivered exactly, once."""
    from tests.services.mosquitto import mosquitto_broker

    group = f"B{uuid.uuid4().hex[:6]}"
    with mosquitto_broker() as broker:  # its own broker: the session's is never stopped
        config = entry(broker, [{"asset": "tahu", "stream_type": "spb", "topic": f"spBv1.0/{group}/#"}],
                       payload_format="sparkplug_b")
        presubscribe(broker, config)
        node = TahuEdgeNode(broker, group, "edge1", "plc1", messages=120, interval_ms=0, workdir=tmp_path,
                            pause_at=61)
        receiver = Receiver(config, tmp_path / "home")
        try:
            assert node.paused.wait(60), node.lines
            receiver.rows({"tahu:spb": 62}, timeout=60)  # the births and 60 DDATA
            broker.kill()
            time.sleep(1)
            broker.start()
            node.resume()
            published = node.wait()
            sent = node.expected()
            got = receiver.rows({"tahu:spb": len(sent)}, timeout=60)["tahu:spb"]
        finally:
            node.close()
            receiver.close()
    exact, wrong = compare(got, sent)
    print(f"Tahu Java through a broker SIGKILL: {published} messages published, {exact} metric values "
          f"delivered exactly, {len(wrong)} wrong or lost")
    assert [s["type"] for s in sent].count("NBIRTH") == 2  # born again after the reconnect
    assert wrong == []
    assert exact == sum(len(columns(s)) for s in sent)


def test_cirrus_link_edge_node_every_datatype_exact(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Cirrus Link's sparkplug-payload (Int8/Int16 sign-extended, Int64 and UInt32 in
    long_value, datatypes sent in data too) through a seq wrap: every metric exact, once."""
    group = f"C{uuid.uuid4().hex[:6]}"
    config = entry(mosquitto, [{"asset": "cirrus", "stream_type": "spb", "topic": f"spBv1.0/{group}/#"}],
                   payload_format="sparkplug_b")
    receiver = Receiver(config, tmp_path / "home")  # listening first: the client publishes at QoS 0
    started = time.monotonic()
    receiver.pump(lambda _: time.monotonic() > started + 1)
    node = CirrusLinkEdgeNode(mosquitto, group, "edge1", "plc1", messages=300, interval_ms=1, workdir=tmp_path)
    try:
        got = receiver.pump(lambda f: node.published is not None and f["cirrus:spb"].height >= len(node.expected()),
                            timeout=60)["cirrus:spb"]
        published = node.wait()
        receiver.pump(lambda _: any("NDEATH" in m.message for m in receiver.markers()))
    finally:
        node.close()
        markers = [m.message for m in receiver.markers()]
        receiver.close()
    sent = node.expected()
    assert published == len(sent) + 2 == 304
    exact, wrong = compare(got, sent)
    metrics = sum(len(columns(s)) for s in sent)
    print(f"Cirrus Link: {published} messages published, {len(sent)} with records, {metrics} metric values; "
          f"{exact} delivered exactly, {len(wrong)} wrong or lost")
    assert wrong == []
    assert exact == metrics
    assert got.schema["Int8"] == pl.Int8 and got.schema["DataSet/count"] == pl.List(pl.Int32)
    assert markers == [f"edge node {group}/edge1 went offline (NDEATH on 'spBv1.0/{group}/NDEATH/edge1', bdSeq 0)"]


def test_a_receiver_started_after_the_edge_node_asks_for_a_rebirth(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The receiver subscribes after Tahu's node was born: its first data names aliases only,
    so the receiver holds it and publishes a Rebirth NCMD; Tahu's node answers with new
    births, and every DDATA published after the subscription is delivered, once, in order."""
    group = f"R{uuid.uuid4().hex[:6]}"
    config = entry(mosquitto, [{"asset": "tahu", "stream_type": "spb", "topic": f"spBv1.0/{group}/#"}],
                   payload_format="sparkplug_b", sparkplug_rebirth_interval=1.0)
    commands = Subscriber(mosquitto, f"spBv1.0/{group}/NCMD/#", f"watch-{group}")
    node = TahuEdgeNode(mosquitto, group, "edge1", "plc1", messages=80, interval_ms=40, workdir=tmp_path)
    receiver = None
    try:
        poll_until(lambda: len(node.expected()) >= 6, timeout=60, what="Tahu's births and first data")
        before = len(node.expected())  # published before the receiver's session subscribed: not seen
        presubscribe(mosquitto, config)
        receiver = Receiver(config, tmp_path / "home")
        last = _ms(node.T0 + 80 * 1000)  # the last DDATA's timestamp

        def complete(frames: dict[str, pl.DataFrame]) -> bool:
            frame = frames["tahu:spb"]
            return node.published is not None and frame.height > 0 and frame["timestamp"].max() == last

        got = receiver.pump(complete, timeout=60)["tahu:spb"]
        node.wait()
        sent = node.expected()
        data = [s for s in sent if s["type"] == "DDATA"]
    finally:
        node.close()
        if receiver is not None:
            receiver.close()
        commands.close()
    rebirth = next(i for i, s in enumerate(sent) if i > 1 and s["type"] == "NBIRTH")
    print(f"Tahu's node: {len(sent)} record messages, {before} before the subscription; NCMDs published: "
          f"{len(commands.received())}; rebirths answered: {node.rebirths}")
    assert node.rebirths == 1 and len(commands.received()) == 1
    delivered = got.filter(pl.col("message_type") == "DDATA")["timestamp"].to_list()
    assert delivered == sorted(set(delivered))  # once each, in order
    first = next(i for i, s in enumerate(data) if _ms(s["timestamp"]) == delivered[0])
    assert first <= before - 1  # nothing lost after the subscription (one may have been seen before it)
    assert delivered == [_ms(s["timestamp"]) for s in data[first:]]
    held = [t for t in delivered if t < _ms(sent[rebirth]["timestamp"])]
    assert held  # data from before the rebirth: held, then delivered after the births
    assert got.filter(pl.col("message_type") == "NBIRTH").height == 1  # the answer to the NCMD


def test_a_restream_asks_for_a_rebirth_and_the_primary_host_state_follows_the_job(
        mosquitto: Mosquitto, tmp_path: Path, flows: Any) -> None:
    """In a running job (the receiver the Primary Host Application): a restream of the stream
    forgets the births, so its next data is held and a Rebirth NCMD goes to Tahu's node; the
    held data is delivered after the new births: every DDATA in the output. The STATE is
    retained online while the job runs, and a SIGKILL leaves the Will: offline, same timestamp."""
    import json

    from dataflows.control import ControlStore, control_path

    group = f"S{uuid.uuid4().hex[:6]}"
    state = Subscriber(mosquitto, "spBv1.0/STATE/ffhost", f"state-{group}")
    commands = Subscriber(mosquitto, f"spBv1.0/{group}/NCMD/#", f"watch-{group}")
    config = {"data_receiver": [{**entry(mosquitto, [{"asset": "tahu", "stream_type": "spb",
                                                      "topic": f"spBv1.0/{group}/#"}],
                                         payload_format="sparkplug_b", sparkplug_host_id="ffhost",
                                         sparkplug_rebirth_interval=1.0)}],
              "transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    online = json.loads(state.wait_for(1)[0][1])
    assert online["online"] is True
    output = flow.home / "components" / "local" / "tahu__spb.jsonl"

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in output.read_text().splitlines()] if output.exists() else []

    node = TahuEdgeNode(mosquitto, group, "edge1", "plc1", messages=150, interval_ms=40, workdir=tmp_path)
    try:
        flow.wait_for(lambda: len(records()) >= 40, timeout=60, what="the first records")
        store = ControlStore(control_path(flow.home))
        store.request_restream([("mqtt", "tahu:spb")])
        flow.wait_for(lambda: store.applied("mqtt", "tahu:spb") > 0, what="the restream applied")
        store.close()
        node.wait()
        last = (_EPOCH + timedelta(milliseconds=node.T0 + 150 * 1000)).strftime("%Y-%m-%dT%H:%M:%SZ")
        flow.wait_for(lambda: any(r["timestamp"] == last for r in records()), timeout=60, what="the last DDATA")
    finally:
        node.close()
    flow.kill()
    offline = state.wait_for(2)[1][1]
    state.close()
    commands.close()
    assert json.loads(offline) == {"online": False, "timestamp": online["timestamp"]}
    print(f"NCMDs published: {len(commands.received())}; rebirths answered by Tahu's node: {node.rebirths}")
    assert node.rebirths >= 1 and len(commands.received()) >= 1
    sent = {(_EPOCH + timedelta(milliseconds=s["timestamp"])).strftime("%Y-%m-%dT%H:%M:%SZ")
            for s in node.expected() if s["type"] == "DDATA"}
    got = {r["timestamp"] for r in records() if r["message_type"] == "DDATA"}
    assert sent - got == set()  # none lost
