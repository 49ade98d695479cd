"""Sparkplug B decoding and the host application's rules (connectors._sparkplug and
connectors._sparkplug_host), on payloads built field by field with the Sparkplug B
payload message (checked against Tahu's in test_sparkplug_proto)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from connectors._sparkplug import NoBirth, Sparkplug, parse_payload
from connectors._sparkplug_host import HostSettings, SparkplugHost, rebirth_request, state_payload
from connectors._sparkplug_proto import Payload

T = 1767225600000  # 2026-01-01T00:00:00Z in ms


def payload(metrics: list[dict[str, Any]], seq: int | None = 1, timestamp: int = T) -> bytes:
    """A Payload whose metrics set exactly the given fields (``properties``: a dict)."""
    out = Payload(timestamp=timestamp)
    if seq is not None:
        out.seq = seq
    for fields in metrics:
        metric = out.metrics.add()
        for key, value in fields.items():
            if key == "properties":
                for name, (datatype, field, v) in value.items():
                    metric.properties.keys.append(name)
                    prop = metric.properties.values.add(type=datatype)
                    setattr(prop, field, v)
            else:
                setattr(metric, key, value)
    return out.SerializeToString()


def birth(decoder: Sparkplug, metrics: list[tuple[str, int, int]], device: str | None = "d1",
          bdseq: int = 0) -> list[dict[str, Any]]:
    """An NBIRTH (and a DBIRTH of ``device``) naming ``(name, alias, datatype)``, no values."""
    nbirth = payload([{"name": "bdSeq", "datatype": 4, "long_value": bdseq}], seq=0)
    decoder.records("spBv1.0/g/NBIRTH/n", nbirth, print)
    fields = [{"name": n, "alias": a, "datatype": d, "is_null": True} for n, a, d in metrics]
    if device is None:
        return decoder.records("spBv1.0/g/NBIRTH/n", payload(fields, seq=0), print)
    return decoder.records(f"spBv1.0/g/DBIRTH/n/{device}", payload(fields, seq=1), print)


def ddata(decoder: Sparkplug, metrics: list[dict[str, Any]], seq: int = 2,
          warnings: list[str] | None = None) -> list[dict[str, Any]]:
    return decoder.records("spBv1.0/g/DDATA/n/d1", payload(metrics, seq=seq),
                           (warnings if warnings is not None else []).append)


@pytest.mark.parametrize(("datatype", "field", "raws", "value"), [
    (1, "int_value", [251, 4294967291], -5),  # Int8: two's complement (3.0, Tahu Python); sign-extended (Tahu Java)
    (1, "int_value", [128, 4294967168], -128),
    (2, "int_value", [65236, 2**32 - 300], -300),
    (3, "int_value", [4294967291], -5),
    (4, "long_value", [2**64 - 5], -5),
    (1, "long_value", [2**64 - 5], -5),  # an Int8 sign-extended into long_value
    (7, "long_value", [4294967295], 4294967295),  # UInt32 in long_value (Tahu Java)
    (8, "long_value", [2**64 - 1], 2**64 - 1),
    (9, "float_value", [0.5], 0.5),
    (13, "long_value", [T], datetime(2026, 1, 1, tzinfo=UTC)),
    (22, "bytes_value", [b"\xff\x7f\x80"], [-1, 127, -128]),
    (32, "bytes_value", [b"\x03\x00\x00\x00\xa0"], [True, False, True]),
    (33, "bytes_value", [b"a\x00\x00\xc3\xa9\x00"], ["a", "", "é"]),
])
def test_values_from_both_reference_encoders(datatype: int, field: str, raws: list[Any], value: Any) -> None:
    decoder = Sparkplug()
    birth(decoder, [("m", 1, datatype)])
    for seq, raw in enumerate(raws, start=2):
        warnings: list[str] = []
        (record,) = ddata(decoder, [{"alias": 1, field: raw}], seq=seq, warnings=warnings)
        assert record["m"] == value, raw
        assert warnings == []


def test_a_bad_metric_becomes_a_null_and_a_warning_its_siblings_are_kept() -> None:
    decoder = Sparkplug()
    birth(decoder, [("small", 1, 1), ("speed", 2, 10), ("label", 3, 12), ("arr", 4, 24)])
    warnings: list[str] = []
    (record,) = ddata(decoder, [{"alias": 1, "int_value": 300}, {"alias": 2, "double_value": 2.5},
                                {"alias": 3, "double_value": 1.0}, {"alias": 4, "bytes_value": b"\x01\x02\x03"}],
                      warnings=warnings)
    assert (record["small"], record["speed"], record["label"], record["arr"]) == (None, 2.5, None, None)
    assert warnings == [
        "spBv1.0/g/DDATA/n/d1: metric 'small' (Int8): 300 does not fit Int8; stored as null",
        "spBv1.0/g/DDATA/n/d1: metric 'label' (String): a String value in double_value; stored as null",
        "spBv1.0/g/DDATA/n/d1: metric 'arr' (Int32Array): 3 bytes is not a whole number of 4-byte elements; "
        "stored as null"]


def test_historical_transient_null_properties_and_metric_timestamps() -> None:
    decoder = Sparkplug()
    birth(decoder, [("a", 1, 3), ("b", 2, 3), ("c", 3, 3)])
    records = ddata(decoder, [
        {"alias": 1, "int_value": 1},
        {"alias": 1, "int_value": 0, "is_historical": True, "timestamp": T - 5000},  # back-filled by the node
        {"alias": 2, "int_value": 9, "is_transient": True},  # "not to be stored"
        {"alias": 3, "is_null": True, "properties": {"Quality": (3, "int_value", 500),
                                                     "engUnit": (12, "string_value", "mm")}}])
    assert records == [  # in the message's order
        {"timestamp": datetime(2026, 1, 1, tzinfo=UTC), "group_id": "g", "edge_node_id": "n", "device_id": "d1",
         "message_type": "DDATA", "a": 1, "c": None},
        {"timestamp": datetime(2025, 12, 31, 23, 59, 55, tzinfo=UTC), "group_id": "g", "edge_node_id": "n",
         "device_id": "d1", "message_type": "DDATA", "is_historical": True, "a": 0}]
    # properties of a null metric are not read; on a value they are columns
    warnings: list[str] = []
    (record,) = ddata(decoder, [{"alias": 3, "int_value": 7, "properties": {
        "Quality": (3, "int_value", 4294967295), "engUnit": (12, "string_value", "mm"),
        "engLow": (1, "int_value", 300)}}], seq=3, warnings=warnings)  # a bad property keeps the value
    assert (record["c"], record["c:Quality"], record["c:engUnit"], record["c:engLow"]) == (7, -1, "mm", None)
    assert warnings == ["spBv1.0/g/DDATA/n/d1: property 'c:engLow' (Int8): 300 does not fit Int8; stored as null"]


def test_an_unknown_alias_or_no_birth_needs_a_rebirth() -> None:
    decoder = Sparkplug()
    with pytest.raises(NoBirth) as no_birth:
        ddata(decoder, [{"alias": 1, "int_value": 1}])
    assert no_birth.value.node == "g/n"
    assert str(no_birth.value) == "metrics named by alias only, and no DBIRTH of g/n/d1 seen yet"
    birth(decoder, [("a", 1, 3)])
    with pytest.raises(NoBirth, match="metric alias 2 is not in the last DBIRTH of g/n/d1"):
        ddata(decoder, [{"alias": 2, "int_value": 1}])


def test_an_ndeath_of_an_earlier_session_is_ignored() -> None:
    decoder = Sparkplug()
    birth(decoder, [("a", 1, 3)], bdseq=4)
    warnings: list[str] = []
    stale = payload([{"name": "bdSeq", "datatype": 4, "long_value": 3}], seq=None)
    decoder.records("spBv1.0/g/NDEATH/n", stale, warnings.append)
    assert decoder.seq["g/n"] == 1  # still online
    decoder.records("spBv1.0/g/NDEATH/n", payload([{"name": "bdSeq", "datatype": 4, "long_value": 4}], seq=None),
                    warnings.append)
    assert "g/n" not in decoder.seq
    # the next session: the stream's last marker says the node is back
    decoder.records("spBv1.0/g/NBIRTH/n", payload([{"name": "bdSeq", "datatype": 4, "long_value": 5}], seq=0),
                    warnings.append)
    decoder = Sparkplug.from_state(decoder.state())  # and a restart remembers nothing is offline
    decoder.records("spBv1.0/g/NBIRTH/n", payload([{"name": "bdSeq", "datatype": 4, "long_value": 5}], seq=0),
                    warnings.append)
    assert warnings == [
        "an NDEATH of edge node g/n with bdSeq 3, not its NBIRTH's 4: a stale Will of an earlier session, "
        "ignored ('spBv1.0/g/NDEATH/n')",
        "edge node g/n went offline (NDEATH on 'spBv1.0/g/NDEATH/n', bdSeq 4)",
        "edge node g/n back online (NBIRTH on 'spBv1.0/g/NBIRTH/n', bdSeq 5)"]


def host(**settings: Any) -> tuple[SparkplugHost, list[tuple[str, str]]]:
    asked: list[tuple[str, str]] = []
    return SparkplugHost(Sparkplug(), HostSettings(**settings), lambda node, why: asked.append((node, why))), asked


def data_message(alias: int, value: int, seq: int) -> tuple[str, bytes]:
    return "spBv1.0/g/NDATA/n", payload([{"alias": alias, "int_value": value}], seq=seq)


def nbirth_message() -> tuple[str, bytes]:
    return "spBv1.0/g/NBIRTH/n", payload([{"name": "bdSeq", "datatype": 4, "long_value": 0},
                                          {"name": "a", "alias": 1, "datatype": 3, "int_value": 0}], seq=0)


def test_the_host_holds_data_until_the_births_and_bounds_what_it_holds() -> None:
    reader, asked = host(hold_messages=2, rebirth_interval=1000)
    warnings: list[str] = []
    for seq in (5, 6, 7):  # buffer ids 105, 106, 107
        assert reader.read(*data_message(1, seq, seq), 0.0, warnings.append, 100 + seq) == []
    assert reader.oldest_kept() == 106  # the receiver's buffer keeps what is held (105 was dropped)
    assert asked == [("g/n", "metrics named by alias only, and no NBIRTH of g/n seen yet")]  # rate-limited
    assert warnings == ["spBv1.0/g/NDATA/n: more than 2 messages of edge node g/n held (sparkplug_hold_messages) "
                        "while its births are awaited: the oldest is dropped"]
    # the held messages survive a restart in the stream's state
    reader = SparkplugHost.from_state(reader.state(), HostSettings(), lambda *_: None)
    assert reader.oldest_kept() == 106
    records = reader.read(*nbirth_message(), 0.0, warnings.append, 108)
    assert [r["a"] for r in records] == [0, 6, 7]
    assert reader.state()["held"] == {} and reader.oldest_kept() is None
    assert reader.sparkplug.seq["g/n"] == 0  # the held messages' seq did not count


def test_the_reorder_window_puts_messages_back_in_seq_order() -> None:
    reader, asked = host(reorder_timeout=2.0)
    warnings: list[str] = []
    reader.read(*nbirth_message(), 0.0, warnings.append)
    assert reader.read(*data_message(1, 20, 2), 10.0, warnings.append, 7) == []  # 1 is missing: wait
    assert reader.oldest_kept() == 7
    assert [r["a"] for r in reader.read(*data_message(1, 10, 1), 10.5, warnings.append)] == [10, 20]
    assert reader.read(*data_message(1, 40, 4), 11.0, warnings.append) == []  # 3 never comes
    assert reader.due(12.9, warnings.append) == []
    assert [r["a"] for r in reader.due(13.0, warnings.append)] == [40]
    assert warnings == ["spBv1.0/g/NDATA/n: seq 4 after 2: 1 message(s) of edge node g/n missing"]
    assert asked == [("g/n", "a seq gap")]


def test_rebirth_request_and_state_payloads() -> None:
    (metric,) = parse_payload(rebirth_request()).metrics
    assert (metric.name, metric.datatype, metric.boolean_value) == ("Node Control/Rebirth", 11, True)
    assert state_payload(True, 5) == b'{"online": true, "timestamp": 5}'


def test_two_rows_of_one_timestamp_stay_two_records() -> None:
    """A metric met again at a timestamp its record holds starts the next record: the
    sparkplug_b transmit's DDATA of two rows with one timestamp reads back as two rows."""
    decoder = Sparkplug()
    birth(decoder, [("a", 1, 3), ("b", 2, 3)])
    records = ddata(decoder, [{"alias": 1, "int_value": 1, "timestamp": T}, {"alias": 2, "int_value": 2, "timestamp": T},
                              {"alias": 1, "int_value": 3, "timestamp": T}, {"alias": 2, "int_value": 4, "timestamp": T},
                              {"alias": 1, "int_value": 0, "timestamp": T - 1000}])
    assert [(r["timestamp"].second, r["a"], r.get("b")) for r in records] == [(0, 1, 2), (0, 3, 4), (59, 0, None)]
