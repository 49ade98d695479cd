"""The Sparkplug B wire format: the ``Payload`` protobuf message and the datatypes' encodings.

The message is Eclipse Tahu's ``sparkplug_b.proto`` (package ``org.eclipse.tahu.protobuf``,
Sparkplug 3.0 chapter 6), declared below field by field and built at import time with the
protobuf runtime (``descriptor_pb2`` into a private ``DescriptorPool``), so no generated code
and no Sparkplug library is needed. ``tests/connectors/test_sparkplug_proto.py`` checks it
against the descriptor compiled into Tahu's Java ``tahu-core``.

Implements Sparkplug B 3.0: the payload (section 6.4), datatypes (6.4.16), array encodings
(6.4.17: little-endian elements; BooleanArray a 4-byte count then the bits, first element in the
highest bit; StringArray NUL-terminated UTF-8; DateTimeArray int64 milliseconds since the
epoch, UTC).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

__all__ = ["DataType", "Payload", "encode_array", "set_value"]


class DataType(IntEnum):
    """The Sparkplug B datatypes (Sparkplug 3.0 section 6.4.16), Tahu's names and numbers."""

    Unknown = 0
    Int8 = 1
    Int16 = 2
    Int32 = 3
    Int64 = 4
    UInt8 = 5
    UInt16 = 6
    UInt32 = 7
    UInt64 = 8
    Float = 9
    Double = 10
    Boolean = 11
    String = 12
    DateTime = 13
    Text = 14
    UUID = 15
    DataSet = 16
    Bytes = 17
    File = 18
    Template = 19
    PropertySet = 20
    PropertySetList = 21
    Int8Array = 22
    Int16Array = 23
    Int32Array = 24
    Int64Array = 25
    UInt8Array = 26
    UInt16Array = 27
    UInt32Array = 28
    UInt64Array = 29
    FloatArray = 30
    DoubleArray = 31
    BooleanArray = 32
    StringArray = 33
    DateTimeArray = 34


_PACKAGE = "org.eclipse.tahu.protobuf"
_MAX = 536870912  # protobuf's "to max" (2**29), the end of every extension range
#: The value fields of the ``oneof value`` every value-bearing message has (number per message).
_VALUES = [("int_value", "uint32"), ("long_value", "uint64"), ("float_value", "float"),
           ("double_value", "double"), ("boolean_value", "bool"), ("string_value", "string")]

#: Message (its path under ``Payload``'s package) -> (the first extension number or None, fields).
#: A field is ``(name, number, type)``; a name starting with ``*`` is repeated, with ``|`` in the
#: ``oneof value``; a type is a protobuf scalar or the path of a message. Nested messages follow
#: their parent, in Tahu's order.
_MESSAGES: dict[str, tuple[int | None, list[tuple[str, int, str]]]] = {
    "Payload": (6, [("timestamp", 1, "uint64"), ("*metrics", 2, "Payload.Metric"), ("seq", 3, "uint64"),
                    ("uuid", 4, "string"), ("body", 5, "bytes")]),
    "Payload.Template": (6, [("version", 1, "string"), ("*metrics", 2, "Payload.Metric"),
                             ("*parameters", 3, "Payload.Template.Parameter"), ("template_ref", 4, "string"),
                             ("is_definition", 5, "bool")]),
    "Payload.Template.Parameter": (None, [
        ("name", 1, "string"), ("type", 2, "uint32"),
        *[(f"|{name}", 3 + i, kind) for i, (name, kind) in enumerate(_VALUES)],
        ("|extension_value", 9, "Payload.Template.Parameter.ParameterValueExtension")]),
    "Payload.Template.Parameter.ParameterValueExtension": (1, []),
    "Payload.DataSet": (5, [("num_of_columns", 1, "uint64"), ("*columns", 2, "string"), ("*types", 3, "uint32"),
                            ("*rows", 4, "Payload.DataSet.Row")]),
    "Payload.DataSet.DataSetValue": (None, [
        *[(f"|{name}", 1 + i, kind) for i, (name, kind) in enumerate(_VALUES)],
        ("|extension_value", 7, "Payload.DataSet.DataSetValue.DataSetValueExtension")]),
    "Payload.DataSet.DataSetValue.DataSetValueExtension": (1, []),
    "Payload.DataSet.Row": (2, [("*elements", 1, "Payload.DataSet.DataSetValue")]),
    "Payload.PropertyValue": (None, [
        ("type", 1, "uint32"), ("is_null", 2, "bool"),
        *[(f"|{name}", 3 + i, kind) for i, (name, kind) in enumerate(_VALUES)],
        ("|propertyset_value", 9, "Payload.PropertySet"), ("|propertysets_value", 10, "Payload.PropertySetList"),
        ("|extension_value", 11, "Payload.PropertyValue.PropertyValueExtension")]),
    "Payload.PropertyValue.PropertyValueExtension": (1, []),
    "Payload.PropertySet": (3, [("*keys", 1, "string"), ("*values", 2, "Payload.PropertyValue")]),
    "Payload.PropertySetList": (2, [("*propertyset", 1, "Payload.PropertySet")]),
    "Payload.MetaData": (9, [("is_multi_part", 1, "bool"), ("content_type", 2, "string"), ("size", 3, "uint64"),
                             ("seq", 4, "uint64"), ("file_name", 5, "string"), ("file_type", 6, "string"),
                             ("md5", 7, "string"), ("description", 8, "string")]),
    "Payload.Metric": (None, [
        ("name", 1, "string"), ("alias", 2, "uint64"), ("timestamp", 3, "uint64"), ("datatype", 4, "uint32"),
        ("is_historical", 5, "bool"), ("is_transient", 6, "bool"), ("is_null", 7, "bool"),
        ("metadata", 8, "Payload.MetaData"), ("properties", 9, "Payload.PropertySet"),
        *[(f"|{name}", 10 + i, kind) for i, (name, kind) in enumerate(_VALUES)],
        ("|bytes_value", 16, "bytes"), ("|dataset_value", 17, "Payload.DataSet"),
        ("|template_value", 18, "Payload.Template"),
        ("|extension_value", 19, "Payload.Metric.MetricValueExtension")]),
    "Payload.Metric.MetricValueExtension": (1, []),
}


def file_descriptor() -> Any:
    """``sparkplug_b.proto`` as a protobuf ``FileDescriptorProto`` (proto2, package
    ``org.eclipse.tahu.protobuf``): the ``DataType`` enum and the ``Payload`` message."""
    from google.protobuf import descriptor_pb2

    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="sparkplug_b.proto", package=_PACKAGE, syntax="proto2")
    file.enum_type.add(name="DataType").value.extend(
        descriptor_pb2.EnumValueDescriptorProto(name=d.name, number=d.value) for d in DataType)
    built: dict[str, Any] = {}
    for path, (extensions, fields) in _MESSAGES.items():
        parent, _, name = path.rpartition(".")
        message = (built[parent].nested_type if parent else file.message_type).add(name=name)
        built[path] = message
        if extensions is not None:
            message.extension_range.add(start=extensions, end=_MAX)
        for spec, number, kind in fields:
            flag, name = (spec[0], spec[1:]) if spec[0] in "*|" else ("", spec)
            out = message.field.add(name=name, number=number, label=field.LABEL_REPEATED if flag == "*"
                                    else field.LABEL_OPTIONAL)
            if kind in _MESSAGES:
                out.type, out.type_name = field.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
            else:
                out.type = field.Type.Value(f"TYPE_{kind.upper()}")
            if flag == "|":
                if not message.oneof_decl:
                    message.oneof_decl.add(name="value")
                out.oneof_index = 0
    return file


def _payload_class() -> Any:
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()  # private: no clash with another copy of the schema
    pool.Add(file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Payload"))


#: The protobuf class of a Sparkplug B payload: ``Payload.FromString(raw)``,
#: ``Payload(timestamp=…, seq=…)``, ``payload.metrics.add(name=…, alias=…, datatype=…)``.
Payload: Any = _payload_class()

#: Signed integer datatype -> its width in bits (two's complement in its own width, 6.4.16).
_BITS = {1: 8, 2: 16, 3: 32, 4: 64}
#: Scalar datatype -> the Metric field its value goes in.
_FIELDS = {1: "int_value", 2: "int_value", 3: "int_value", 4: "long_value", 5: "int_value", 6: "int_value",
           7: "int_value", 8: "long_value", 9: "float_value", 10: "double_value", 11: "boolean_value",
           12: "string_value", 13: "long_value", 14: "string_value", 15: "string_value", 17: "bytes_value",
           18: "bytes_value"}
#: Array datatype -> the ``struct`` code of its elements (little-endian).
_ARRAYS = {22: "b", 23: "h", 24: "i", 25: "q", 26: "B", 27: "H", 28: "I", 29: "Q", 30: "f", 31: "d", 34: "q"}


def encode_array(datatype: int, values: Iterable[Any]) -> bytes:
    """The ``bytes_value`` of an array metric (Sparkplug 3.0 section 6.4.17): ``values`` are
    ints, floats, bools or strs; DateTimeArray takes milliseconds since the epoch (UTC).

    :raises ValueError: ``datatype`` is not an array datatype.
    :raises struct.error: a value does not fit its element type.
    """
    values = list(values)
    code = _ARRAYS.get(datatype)
    if code is not None:
        return struct.pack(f"<{len(values)}{code}", *values)
    if datatype == DataType.BooleanArray:
        bits = bytearray((len(values) + 7) // 8)
        for i, value in enumerate(values):
            if value:
                bits[i // 8] |= 0x80 >> (i % 8)
        return len(values).to_bytes(4, "little") + bytes(bits)
    if datatype == DataType.StringArray:
        return b"".join(str(value).encode() + b"\0" for value in values)
    raise ValueError(f"datatype {datatype} is not an array datatype")


def set_value(metric: Any, datatype: int, value: Any) -> None:
    """Set ``metric``'s value field for ``datatype``: None as ``is_null``; signed integers as
    two's complement in their own width (section 6.4.16); DateTime as milliseconds since the
    epoch (UTC); arrays packed by :func:`encode_array`.

    :raises ValueError: ``datatype`` has no value of its own (DataSet, Template, PropertySet…).
    """
    if value is None:
        metric.is_null = True
        return
    bits = _BITS.get(datatype)
    if bits is not None and value < 0:
        value += 1 << bits
    field = _FIELDS.get(datatype)
    if field is not None:
        setattr(metric, field, value)
    else:
        metric.bytes_value = encode_array(datatype, value)
