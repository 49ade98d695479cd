"""Sparkplug B payloads (Eclipse Tahu's protobuf, Sparkplug 3.0) for the ``mqtt`` receiver's
``payload_format: sparkplug_b``: parsed with the protobuf runtime (the ``Payload`` message of
``connectors._sparkplug_proto``), values decoded here.

:class:`Sparkplug` keeps what births told (each metric's alias and datatype, from the last
NBIRTH or DBIRTH) and each edge node's last ``seq`` and ``bdSeq``, as plain values the
stream's state holds, so an alias still resolves after a restart. NBIRTH, DBIRTH, NDATA and
DDATA give one record per metric timestamp.

Decoding is tolerant of both reference encoders: a signed Int8/Int16/Int32/Int64 arrives
either as its two's complement in its own width (Tahu's Python, pysparkplug, the
``sparkplug_b`` transmit, Sparkplug 3.0 section 6.4.16) or sign-extended to the 32 or 64
bits of ``int_value``/``long_value`` (Tahu's Java: Int8 -5 as 4294967291); a value is read
from whichever value field the encoder set (Tahu's Java writes UInt32 into ``long_value``).
A metric whose value does not fit its datatype becomes a null, and ``warn`` names it; its
siblings are kept.

Column naming (``docs/sparkplug.md``): a metric's value is under its name; a DataSet metric
``m`` gives one list column per DataSet column, ``m/<column>``; a Template instance ``m``
gives its member metrics as ``m/<member>`` (nested templates ``m/<member>/<member>``);
a metric's properties (``engUnit``, ``Quality`` …) are ``m:<property>``; a File's name is
``m:file_name``; a historical metric (``is_historical``) is in its own record with
``is_historical`` true; a transient metric (``is_transient``, "not to be stored") is
left out, as is ``bdSeq``.

Implements Sparkplug B 3.0: topic namespace ``spBv1.0`` (section 4.1), payloads and
datatypes (chapter 6), ``seq`` and ``bdSeq`` (sections 5.2, 5.4).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors._sparkplug_proto import DataType, Payload

__all__ = ["KINDS", "SPARKPLUG_NAMESPACE", "BadMessage", "NoBirth", "Sparkplug", "parse_payload"]

#: The Sparkplug B topic namespace (Sparkplug 3.0, section 4.1).
SPARKPLUG_NAMESPACE = "spBv1.0"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The message types of an edge node (section 4.1.2).
KINDS = ("NBIRTH", "DBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH")


class BadMessage(ValueError):
    """A message that cannot be decoded; the stream is marked and the message skipped."""


class NoBirth(BadMessage):
    """Data whose metrics no birth named (no birth seen, or an alias the last birth lacks):
    the edge node ``node`` must be asked for a rebirth before the message can be read."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node


class _BadValue(ValueError):
    """A metric's value that does not fit its datatype."""


def parse_payload(payload: bytes) -> Any:
    """The protobuf ``Payload`` of Tahu's ``sparkplug_b.proto`` parsed from ``payload``.

    :raises BadMessage: not a Sparkplug B payload.
    """
    try:
        return Payload.FromString(payload)
    except Exception as exc:  # protobuf's DecodeError and its C implementation's errors
        raise BadMessage(f"not a Sparkplug B payload: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- values


def _signed(bits: int) -> Callable[[int], int]:
    half, full = 1 << (bits - 1), 1 << bits

    def decode(raw: int) -> int:
        if raw < half:
            return raw
        if raw < full:  # two's complement in its own width (Sparkplug 3.0, Tahu Python)
            return raw - full
        for width in (32, 64):  # sign-extended into int_value or long_value (Tahu Java)
            if (1 << width) - half <= raw < 1 << width:
                return raw - (1 << width)
        raise _BadValue(f"{raw} does not fit Int{bits}")
    return decode


def _unsigned(bits: int) -> Callable[[int], int]:
    full = 1 << bits

    def decode(raw: int) -> int:
        if raw < full:
            return raw
        raise _BadValue(f"{raw} does not fit UInt{bits}")
    return decode


def _datetime(raw: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=raw)


def _text(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    raise _BadValue(f"{type(raw).__name__} is not text")


def _array(code: str) -> Callable[[bytes], list[Any]]:
    size = struct.calcsize(code)

    def decode(raw: bytes) -> list[Any]:
        if len(raw) % size:
            raise _BadValue(f"{len(raw)} bytes is not a whole number of {size}-byte elements")
        return list(struct.unpack(f"<{len(raw) // size}{code}", raw))
    return decode


def _booleans(raw: bytes) -> list[bool]:
    if len(raw) < 4:
        raise _BadValue("a Boolean array without its 4-byte count")
    count = int.from_bytes(raw[:4], "little")
    if (len(raw) - 4) * 8 < count:
        raise _BadValue(f"{count} booleans in {len(raw) - 4} bytes")
    return [bool(raw[4 + i // 8] & (0x80 >> (i % 8))) for i in range(count)]


def _strings(raw: bytes) -> list[str]:
    if raw and not raw.endswith(b"\0"):
        raise _BadValue("a String array not ending in NUL")
    return [s.decode() for s in raw.split(b"\0")[:-1]]


def _datetimes(raw: bytes) -> list[datetime]:
    return [_datetime(ms) for ms in _array("q")(raw)]


#: Sparkplug 3.0 datatype (section 6.4.16) -> the value fields it may arrive in, and its decoder.
_DATATYPES: dict[int, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    1: (("int_value", "long_value"), _signed(8)), 2: (("int_value", "long_value"), _signed(16)),
    3: (("int_value", "long_value"), _signed(32)), 4: (("long_value", "int_value"), _signed(64)),
    5: (("int_value", "long_value"), _unsigned(8)), 6: (("int_value", "long_value"), _unsigned(16)),
    7: (("int_value", "long_value"), _unsigned(32)), 8: (("long_value", "int_value"), _unsigned(64)),
    9: (("float_value", "double_value"), float), 10: (("double_value", "float_value"), float),
    11: (("boolean_value",), bool), 12: (("string_value",), _text),
    13: (("long_value", "int_value"), _datetime), 14: (("string_value",), _text),
    15: (("string_value",), _text), 17: (("bytes_value",), bytes), 18: (("bytes_value",), bytes),
    22: (("bytes_value",), _array("b")), 23: (("bytes_value",), _array("h")),
    24: (("bytes_value",), _array("i")), 25: (("bytes_value",), _array("q")),
    26: (("bytes_value",), _array("B")), 27: (("bytes_value",), _array("H")),
    28: (("bytes_value",), _array("I")), 29: (("bytes_value",), _array("Q")),
    30: (("bytes_value",), _array("f")), 31: (("bytes_value",), _array("d")),
    32: (("bytes_value",), _booleans), 33: (("bytes_value",), _strings),
    34: (("bytes_value",), _datetimes),
}
_DATASET, _TEMPLATE = 16, 19
#: The datatypes whose value is the field's as it is (no range to check): Float and Double from
#: either float field, Boolean, String, Text, UUID.
_DIRECT = {9: ("float_value", "double_value"), 10: ("double_value", "float_value"), 11: ("boolean_value",),
           12: ("string_value",), 14: ("string_value",), 15: ("string_value",)}
_LISTS = {22: 1, 23: 2, 24: 3, 25: 4, 26: 5, 27: 6, 28: 7, 29: 8, 30: 9, 31: 10, 32: 11, 33: 12, 34: 13}


def polars_dtype(datatype: int) -> Any:
    """The polars type of a Sparkplug ``datatype``'s values (None: not a value's datatype):
    Int8…UInt64 as themselves, Float as Float32, DateTime as Datetime(ms, UTC), Bytes and
    File as Binary, arrays as lists."""
    import polars as pl

    if datatype in _LISTS:
        inner = polars_dtype(_LISTS[datatype])
        return pl.List(inner)
    return {1: pl.Int8, 2: pl.Int16, 3: pl.Int32, 4: pl.Int64, 5: pl.UInt8, 6: pl.UInt16, 7: pl.UInt32,
            8: pl.UInt64, 9: pl.Float32, 10: pl.Float64, 11: pl.Boolean, 12: pl.String,
            13: pl.Datetime("ms", "UTC"), 14: pl.String, 15: pl.String, 17: pl.Binary,
            18: pl.Binary}.get(datatype)
#: Datatype number -> its Sparkplug name, for messages.
_NAMES = {datatype.value: datatype.name for datatype in DataType if datatype}


def _value(message: Any, datatype: int) -> Any:
    """The value of a Metric, DataSetValue or PropertyValue ``message`` of ``datatype``.

    :raises _BadValue: a datatype not known, a value field it cannot arrive in, a value
        that does not fit it.
    """
    spec = _DATATYPES.get(datatype)
    if spec is None:
        raise _BadValue(f"datatype {_NAMES.get(datatype, datatype)} is not a value's datatype"
                        if datatype in _NAMES else f"unknown datatype {datatype}")
    fields, decode = spec
    present = message.WhichOneof("value")
    if present is None:
        return None
    if present not in fields:
        raise _BadValue(f"a {_NAMES[datatype]} value in {present}")
    try:
        return decode(getattr(message, present))
    except (ValueError, OverflowError, struct.error, UnicodeDecodeError) as exc:
        raise _BadValue(str(exc)) from exc


def _dataset(name: str, dataset: Any) -> dict[str, list[Any]]:
    """A DataSet as one list column per DataSet column, ``name/<column>``."""
    columns = list(dataset.columns)
    types = list(dataset.types)
    if len(types) != len(columns):
        raise _BadValue(f"a DataSet of {len(columns)} columns with {len(types)} types")
    out: dict[str, list[Any]] = {f"{name}/{column}": [] for column in columns}
    lists = list(out.values())
    for number, row in enumerate(dataset.rows):
        if len(row.elements) != len(columns):
            raise _BadValue(f"DataSet row {number} has {len(row.elements)} of {len(columns)} values")
        for values, element, datatype in zip(lists, row.elements, types, strict=True):
            values.append(_value(element, datatype))
    return out


def _properties(name: str, properties: Any, out: dict[str, Any], warn: Callable[[str], None],
                nested: bool = False) -> None:
    """A metric's PropertySet as ``name:<key>`` (nested sets ``name:<key>/<key>``); a value
    that does not fit its type is a null, and ``warn`` names it."""
    for key, value in zip(properties.keys, properties.values, strict=False):
        column = f"{name}/{key}" if nested else f"{name}:{key}"
        if value.is_null:
            out[column] = None
        elif value.type == 20:
            _properties(column, value.propertyset_value, out, warn, nested=True)
        elif value.type == 21:
            out[column] = [list(s.keys) for s in value.propertysets_value.propertyset]
        else:
            try:
                out[column] = _value(value, value.type)
            except _BadValue as exc:
                out[column] = None
                warn(f"property {column!r} ({_NAMES.get(value.type, value.type)}): {exc}; stored as null")


# --------------------------------------------------------------------------- the host's view


@dataclass
class Sparkplug:
    """Decodes Sparkplug B messages, keeping what births told and each edge node's ``seq``
    and ``bdSeq``.

    :ivar births: for ``group/node`` or ``group/node/device``, its metrics' ``[name, alias
        or None, datatype]`` from the last NBIRTH or DBIRTH (Template members under their
        ``m/<member>`` names).
    :ivar seq: for ``group/node``, the ``seq`` of its last message.
    :ivar bdseq: for ``group/node``, the ``bdSeq`` of its last NBIRTH.
    """

    births: dict[str, list[list[Any]]] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    bdseq: dict[str, int] = field(default_factory=dict)
    #: The edge nodes and devices whose last word was a death (their next birth is reported).
    offline: set[str] = field(default_factory=set)
    #: The edge nodes (``group/node``) whose ``seq`` skipped numbers, one entry per gap.
    gaps: list[str] = field(default_factory=list, repr=False)
    #: Each value column's Sparkplug datatype (DataSet columns: ``(16, datatype)``), as decoded.
    datatypes: dict[str, Any] = field(default_factory=dict, repr=False)
    _tables: dict[str, tuple[dict[int, str], dict[str, int]]] = field(default_factory=dict, repr=False)

    def schema(self, columns: list[str]) -> dict[str, Any]:
        """The polars types of those of ``columns`` whose Sparkplug datatype is known."""
        import polars as pl

        out = {}
        for column in columns:
            datatype = self.datatypes.get(column)
            if isinstance(datatype, tuple):
                inner = polars_dtype(datatype[1])
                dtype = pl.List(inner) if inner is not None else None
            else:
                dtype = polars_dtype(datatype) if datatype is not None else None
            if dtype is not None:
                out[column] = dtype
        return out

    def state(self) -> dict[str, Any]:
        """What :meth:`from_state` takes (plain, picklable)."""
        return {"births": dict(self.births), "seq": dict(self.seq), "bdseq": dict(self.bdseq),
                "offline": sorted(self.offline)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Sparkplug:
        """The decoder whose :meth:`state` gave ``state`` (a new one for None)."""
        state = state or {}
        return cls(births=dict(state.get("births", {})), seq=dict(state.get("seq", {})),
                   bdseq=dict(state.get("bdseq", {})), offline=set(state.get("offline", ())))

    def records(self, topic: str, payload: bytes, warn: Callable[[str], None], *,
                check_seq: bool = True) -> list[dict[str, Any]]:
        """The records of the message ``payload`` on ``topic`` (none for deaths, commands
        and STATE): one per metric timestamp (UTC), with ``group_id``, ``edge_node_id``,
        ``device_id`` and ``message_type``; ``warn`` takes a ``seq`` gap (also noted in
        :attr:`gaps`), a death and a metric stored as null (naming it). ``check_seq``
        false: a message read late (held) leaves the ``seq`` count alone.

        :raises NoBirth: data whose metrics no birth named (ask the edge node for a rebirth).
        :raises BadMessage: not a Sparkplug B topic or payload.
        """
        levels = topic.split("/")
        if levels[0] != SPARKPLUG_NAMESPACE or len(levels) < 3:
            raise BadMessage(f"not a Sparkplug B topic ({SPARKPLUG_NAMESPACE}/group/type/node[/device])")
        if levels[1] == "STATE" or levels[2] in ("NCMD", "DCMD"):
            return []  # host application state, commands to edge nodes
        if len(levels) not in (4, 5):
            raise BadMessage(f"not a Sparkplug B topic ({SPARKPLUG_NAMESPACE}/group/type/node[/device])")
        group, kind, node = levels[1], levels[2], levels[3]
        device = levels[4] if len(levels) == 5 else None
        if kind not in KINDS or (device is None) != (kind[0] == "N"):
            raise BadMessage(f"unknown Sparkplug B message type {kind!r} for this topic")
        node_key = f"{group}/{node}"
        key = f"{node_key}/{device}" if device is not None else node_key
        message = parse_payload(payload)
        if kind == "NDEATH":
            return self._ndeath(node_key, message, topic, warn)
        if kind in ("NBIRTH", "DBIRTH"):
            self._birth(key, node_key, kind, message)
            if key in self.offline:  # the stream's marker says what holds now
                self.offline.discard(key)
                warn(f"{'edge node' if device is None else 'device'} {key} back online ({kind} on {topic!r}"
                     + (f", bdSeq {self.bdseq.get(node_key)})" if device is None else ")"))
        elif key not in self.births:
            raise NoBirth(f"metrics named by alias only, and no {'D' if device else 'N'}BIRTH of {key} "
                          "seen yet", node_key)
        if check_seq:
            self._check_seq(node_key, kind, message, topic, warn)
        if kind == "DDEATH":
            self.offline.add(key)
            warn(f"device {key} went offline (DDEATH on {topic!r})")
            return []
        return self._records(key, node_key, message, {"group_id": group, "edge_node_id": node, "device_id": device,
                                            "message_type": kind}, topic, warn)

    def _ndeath(self, node_key: str, message: Any, topic: str, warn: Callable[[str], None]) -> list[Any]:
        """An NDEATH ends the node's session unless its ``bdSeq`` is not its last NBIRTH's
        (a stale Will of an earlier session, Sparkplug 3.0 section 5.4)."""
        bdseq = next((m.long_value or m.int_value for m in message.metrics if m.name == "bdSeq"), None)
        born = self.bdseq.get(node_key)
        if bdseq is not None and born is not None and bdseq != born:
            warn(f"an NDEATH of edge node {node_key} with bdSeq {bdseq}, not its NBIRTH's {born}: a stale "
                 f"Will of an earlier session, ignored ({topic!r})")
            return []
        self.seq.pop(node_key, None)
        self.offline.add(node_key)
        warn(f"edge node {node_key} went offline (NDEATH on {topic!r}, bdSeq {bdseq})")
        return []

    def _birth(self, key: str, node_key: str, kind: str, message: Any) -> None:
        named: list[list[Any]] = []
        for metric in message.metrics:
            if not metric.name:
                raise BadMessage(f"a metric of the {kind} of {key} has no name")
            named.append([metric.name, metric.alias if metric.HasField("alias") else None, metric.datatype])
            if metric.datatype == _TEMPLATE and metric.WhichOneof("value") == "template_value":
                named += [[f"{metric.name}/{member.name}", None, member.datatype]
                          for member in metric.template_value.metrics if member.name]
            if kind == "NBIRTH" and metric.name == "bdSeq":
                self.bdseq[node_key] = metric.long_value or metric.int_value
        self.births[key] = named
        self._tables.pop(key, None)
        if kind == "NBIRTH":  # a new session of the node: its devices are born again
            for stale in [k for k in self.births if k.startswith(f"{node_key}/")]:
                del self.births[stale]
                self._tables.pop(stale, None)

    def _table(self, key: str) -> tuple[dict[int, str], dict[str, int]]:
        """The birth of ``key`` as alias -> name and name -> datatype."""
        table = self._tables.get(key)
        if table is None:
            births = self.births.get(key, [])
            table = self._tables[key] = ({alias: name for name, alias, _ in births if alias is not None},
                                         {name: datatype for name, _, datatype in births})
        return table

    def _records(self, key: str, node_key: str, message: Any, fields: dict[str, Any], topic: str,
                 warn: Callable[[str], None]) -> list[dict[str, Any]]:
        """One record per metric timestamp (milliseconds since the epoch; the payload's when
        a metric has none), in the order the message first names each; a metric met again
        at a timestamp its record already holds starts the next record of that timestamp
        (two rows of one time, as the ``sparkplug_b`` transmit sends them)."""
        aliases, types = self._table(key)
        known = self.datatypes
        sent = message.timestamp
        by_time: dict[Any, dict[str, Any]] = {}
        out: list[dict[str, Any]] = []
        for metric in message.metrics:
            name = metric.name
            if not name:
                name = aliases.get(metric.alias)
                if name is None:
                    raise NoBirth(f"metric alias {metric.alias} is not in the last "
                                  f"{'D' if fields['device_id'] else 'N'}BIRTH of {key}", node_key)
            if name == "bdSeq" or metric.is_transient:
                continue
            datatype = metric.datatype or types.get(name, 0)
            if datatype == _TEMPLATE and metric.template_value.is_definition:
                continue  # a Template definition (in an NBIRTH) holds no value
            at = metric.timestamp or sent
            historical = metric.is_historical
            slot = (at, True) if historical else at
            record = by_time.get(slot)
            if record is None or name in record:
                record = by_time[slot] = {"timestamp": _datetime(at), **fields}
                out.append(record)
                if historical:
                    record["is_historical"] = True
            if metric.is_null:
                record[name] = None
                continue
            try:
                direct = _DIRECT.get(datatype)
                present = metric.WhichOneof("value")
                if direct is not None and present in direct:  # the common case, without calls
                    record[name] = getattr(metric, present)
                    known[name] = datatype
                elif datatype == _DATASET:
                    record.update(self._dataset(name, metric.dataset_value))
                elif datatype == _TEMPLATE:
                    self._template(name, metric.template_value, types, record)
                else:
                    record[name] = _value(metric, datatype)
                    known[name] = datatype
                if metric.HasField("properties"):
                    _properties(name, metric.properties, record, lambda text: warn(f"{topic}: {text}"))
                if datatype == 18 and metric.metadata.file_name:
                    record[f"{name}:file_name"] = metric.metadata.file_name
            except _BadValue as exc:
                record[name] = None
                warn(f"{topic}: metric {name!r} ({_NAMES.get(datatype, datatype)}): {exc}; stored as null")
        return out

    def _template(self, name: str, template: Any, types: dict[str, int], record: dict[str, Any]) -> None:
        """A Template instance's members as ``name/<member>``."""
        for member in template.metrics:
            column = f"{name}/{member.name}"
            datatype = member.datatype or types.get(column, 0)
            if member.is_null:
                record[column] = None
            elif datatype == _TEMPLATE:
                self._template(column, member.template_value, types, record)
            elif datatype == _DATASET:
                record.update(self._dataset(column, member.dataset_value))
            else:
                record[column] = _value(member, datatype)
                self.datatypes[column] = datatype

    def _dataset(self, name: str, dataset: Any) -> dict[str, list[Any]]:
        columns = _dataset(name, dataset)
        for column, datatype in zip(columns, dataset.types, strict=True):
            self.datatypes[column] = (_DATASET, datatype)
        return columns

    def _check_seq(self, node_key: str, kind: str, message: Any, topic: str,
                   warn: Callable[[str], None]) -> None:
        if not message.HasField("seq"):
            return
        seq = message.seq
        last = self.seq.get(node_key)
        self.seq[node_key] = seq
        if kind == "NBIRTH" or last is None:
            return
        expected = (last + 1) % 256
        if seq != expected:
            missing = (seq - expected) % 256
            self.gaps.append(node_key)
            warn(f"{topic}: seq {seq} after {last}: {missing} message(s) of edge node {node_key} missing")

