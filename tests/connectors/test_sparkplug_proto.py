"""The Sparkplug B wire format (connectors._sparkplug_proto): the Payload message against the
one compiled into Eclipse Tahu's Java tahu-core, and the array encodings of Sparkplug 3.0
section 6.4.17 against the receiver's decoders."""

from __future__ import annotations

import struct

import pytest

from connectors._sparkplug import _DATATYPES
from connectors._sparkplug_proto import DataType, Payload, encode_array, file_descriptor, set_value
from tests.services.tahu import tahu_descriptor


def test_the_payload_schema_is_tahus_field_for_field() -> None:
    """Every message, field (name, number, label, type, message type, oneof), extension range
    and DataType value equals tahu-core's; only the options (Java's package) and the explicit
    ``syntax`` (Tahu's protoc leaves proto2 implicit) differ."""
    from google.protobuf import descriptor_pb2, text_format

    tahu = descriptor_pb2.FileDescriptorProto.FromString(tahu_descriptor())
    assert tahu.options.java_outer_classname == "SparkplugBProto"
    ours = file_descriptor()
    assert ours.syntax == "proto2"
    for schema in (tahu, ours):
        schema.ClearField("options")
        schema.ClearField("syntax")
    assert text_format.MessageToString(ours) == text_format.MessageToString(tahu)
    assert len(ours.message_type[0].nested_type) == 7 and len(ours.enum_type[0].value) == 35


def test_a_payload_round_trips_with_its_fields() -> None:
    payload = Payload(timestamp=1767225600000, seq=255)
    metric = payload.metrics.add(name="press/temperature", alias=7, datatype=DataType.Double)
    set_value(metric, DataType.Double, 71.25)
    set_value(payload.metrics.add(alias=8, datatype=DataType.Int16), DataType.Int16, -300)
    set_value(payload.metrics.add(alias=9, datatype=DataType.String), DataType.String, None)
    back = Payload.FromString(payload.SerializeToString())
    assert (back.timestamp, back.seq, len(back.metrics)) == (1767225600000, 255, 3)
    assert (back.metrics[0].name, back.metrics[0].alias, back.metrics[0].WhichOneof("value"),
            back.metrics[0].double_value) == ("press/temperature", 7, "double_value", 71.25)
    assert back.metrics[1].int_value == 65236  # -300 as two's complement in 16 bits (6.4.16)
    assert back.metrics[2].is_null and back.metrics[2].WhichOneof("value") is None


@pytest.mark.parametrize(("datatype", "values"), [
    (DataType.Int8Array, [-128, 0, 127]), (DataType.Int16Array, [-32768, 5]), (DataType.Int32Array, [-5, 2**31 - 1]),
    (DataType.Int64Array, [-(2**63), 2**63 - 1]), (DataType.UInt8Array, [0, 255]), (DataType.UInt16Array, [65535]),
    (DataType.UInt32Array, [2**32 - 1, 1]), (DataType.UInt64Array, [2**64 - 1]), (DataType.FloatArray, [1.5, -2.25]),
    (DataType.DoubleArray, [0.1, 1e300]), (DataType.BooleanArray, [True, False, True, True, False, False, False,
                                                                    False, True]),
    (DataType.StringArray, ["ABC", "", "ümlaut"]), (DataType.Int32Array, []), (DataType.StringArray, []),
])
def test_arrays_decode_to_what_was_encoded(datatype: DataType, values: list) -> None:
    assert _DATATYPES[datatype][1](encode_array(datatype, values)) == values


def test_array_bytes_are_the_specifications() -> None:
    """Section 6.4.17's forms: little-endian elements; a BooleanArray's 4-byte count, then
    its bits from each byte's highest; a StringArray's NUL-terminated strings."""
    assert encode_array(DataType.Int16Array, [-23, 123]) == bytes([0xE9, 0xFF, 0x7B, 0x00])
    assert encode_array(DataType.BooleanArray, [False, False, True, True, False, True, False, False, True]) == \
        bytes([9, 0, 0, 0, 0b00110100, 0b10000000])
    assert encode_array(DataType.StringArray, ["ABC", "hello"]) == b"ABC\0hello\0"
    assert encode_array(DataType.DateTimeArray, [1256102875335]) == struct.pack("<q", 1256102875335)
    with pytest.raises(ValueError, match="not an array datatype"):
        encode_array(DataType.DataSet, [1])
