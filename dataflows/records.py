"""The record model: streams, ``filter_stream`` patterns and batches of records.

A stream is ``asset:stream_type``. Records travel through the dataflow as
:class:`Batch` objects, each a polars DataFrame of one stream (one row per
record) plus where it came from. Implements "Streams and records" of
``shared/specs/factorytx-digest.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC
from fnmatch import fnmatchcase
from typing import Any

import msgspec
import polars as pl


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """One stream: an ``asset`` and its ``stream_type``; ``str()`` gives ``asset:stream_type``."""

    asset: str
    stream_type: str

    def __str__(self) -> str:
        return f"{self.asset}:{self.stream_type}"

    @classmethod
    def parse(cls, text: str) -> StreamKey:
        """Split ``asset:stream_type`` at its last colon.

        :raises ValueError: ``text`` has no colon.
        """
        asset, colon, stream_type = text.rpartition(":")
        if not colon:
            raise ValueError(f"stream {text!r} is not of the form asset:stream_type")
        return cls(asset, stream_type)


_GLOB_CHARS = re.compile(r"[*?\[]")


def pattern_problem(pattern: str) -> str | None:
    """Why a ``filter_stream`` pattern is malformed, or ``None`` when it is valid.

    A pattern is ``*`` (every stream) or ``ASSET:STREAM_TYPE`` where each side is a
    non-empty glob (``*``, ``?``, ``[...]``), e.g. ``lase*:*``.
    """
    if pattern == "*":
        return None
    if pattern.count(":") != 1:
        return f"filter_stream pattern {pattern!r} must be '*' or 'asset:stream_type'"
    for side in pattern.split(":"):
        if not side:
            return f"filter_stream pattern {pattern!r} has an empty side"
        if side.count("[") != side.count("]"):
            return f"filter_stream pattern {pattern!r} has an unbalanced '['"
    return None


def stream_matches(patterns: Iterable[str], stream: StreamKey) -> bool:
    """True when any ``filter_stream`` pattern matches ``stream`` (globs on each side of the colon).

    Malformed patterns match nothing; :func:`pattern_problem` reports them.
    """
    for pattern in patterns:
        if pattern == "*":
            return True
        if pattern_problem(pattern) is not None:
            continue
        asset_glob, type_glob = pattern.split(":")
        if fnmatchcase(stream.asset, asset_glob) and fnmatchcase(stream.stream_type, type_glob):
            return True
    return False


def is_glob(text: str) -> bool:
    """True when ``text`` holds a glob character."""
    return bool(_GLOB_CHARS.search(text))


@dataclass(frozen=True, slots=True)
class Position:
    """Where the records of a batch sit in their source (see :mod:`dataflows.positions`).

    :ivar scope: what the ordinals count within: a file's path; ``""`` for one sequence.
    :ivar ordinals: one row per record of the batch, in its order; the columns are compared
        left to right (a file's record number; an SQL row's cursor values).
    :ivar identity: the scope's version (a file's modification time when first read).
    :ivar generation: the stream's restream request id (set by the runtime).
    :ivar lag: for records that come out of order within ``lag`` seconds of the newest (an
        SQL cursor with ``lag``): the ordinals are then a timestamp (UTC, no zone) followed
        by the record's key, and a record is known by its key within that window; one older
        than the window behind the newest stored is taken as stored.
    :ivar scoped: each record names its own scope in the first ordinal column (an OPC UA
        tag; ``scope`` is then ``""``), and a record is known when the rest equals the last
        stored of its scope: a live source sends only its current value again after a
        restart, and its clocks may go back, so no order is assumed.
    """

    scope: str
    ordinals: pl.DataFrame
    identity: str = ""
    generation: int = 0
    lag: float | None = None
    scoped: bool = False

    @classmethod
    def records(cls, scope: str, first: int, count: int, identity: str = "") -> Position:
        """Records numbered ``first`` to ``first + count - 1`` within ``scope`` (a file's
        records, counted from 0 at its first line)."""
        return cls(scope, pl.DataFrame({"record": pl.int_range(first, first + count, eager=True)}), identity)

    def filter(self, mask: pl.Series) -> Position:
        """The position of the records ``mask`` keeps."""
        return replace(self, ordinals=self.ordinals.filter(mask))


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one stream read in one go.

    :ivar receiver: ``data_receiver_name`` of the receiver that read them.
    :ivar stream: the records' stream.
    :ivar frame: one row per record; timestamp columns are timezone-aware UTC once
        ``convert_timestamps`` has run.
    :ivar source: where the records came from: a file path or a query text.
    :ivar ack_key: set when the receiver waits for delivery of this batch (e.g. to
        delete a completed file); transmits acknowledge it in the delivery ledger
        after a durable write.
    :ivar origin: the stream the receiver read, when a transform (``replicate``) moved the
        records to another stream; acknowledgements go to it.
    :ivar position: where each record sits in the source (:mod:`dataflows.positions`), so
        a transmit never stores a record read again after a crash twice; None: unknown.
    """

    receiver: str
    stream: StreamKey
    frame: pl.DataFrame
    source: str
    ack_key: str | None = field(default=None)
    origin: StreamKey | None = field(default=None)
    position: Position | None = field(default=None)

    def ack_stream(self) -> StreamKey:
        """The stream the receiver waits on for this batch's acknowledgement."""
        return self.origin or self.stream

    def ack_name(self, transmit: str) -> str:
        """How ``transmit`` signs this batch's acknowledgement (:func:`ack_name`)."""
        return ack_name(transmit, self.stream, self.ack_stream())

    def with_frame(self, frame: pl.DataFrame) -> Batch:
        """A copy holding ``frame`` instead. Its records keep their positions when it has as
        many rows (a transform that changes values); otherwise the positions are dropped,
        since they no longer say which record is which."""
        position = self.position if self.position is not None and frame.height == self.frame.height else None
        return replace(self, frame=frame, position=position)

    def __len__(self) -> int:
        return self.frame.height


def ack_name(transmit: str, stream: StreamKey, origin: StreamKey) -> str:
    """How ``transmit`` signs the acknowledgement of a batch of ``stream`` read on
    ``origin``: its name, or, for a copy a transform moved to another stream,
    ``<transmit>@<stream>`` (one acknowledgement per copy)."""
    return transmit if stream == origin else f"{transmit}@{stream}"


#: How records leave factoryflow: ISO-8601 UTC with a ``Z`` (polars/chrono format).
ISO_UTC = "%Y-%m-%dT%H:%M:%S%.fZ"


def records_frame(batch: Batch, time_format: str = ISO_UTC) -> pl.DataFrame:
    """The batch's flat records as transmits write them: ``asset``, ``stream_type`` first, then
    the fields; datetimes as UTC text in ``time_format`` (polars/chrono; default ISO-8601 ending
    in ``Z``; naive values are taken as UTC), dates, times and durations as text, binary values
    (Sparkplug B Bytes and File metrics) as base64 text."""
    frame = batch.frame.drop(["asset", "stream_type"], strict=False)
    text = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Datetime):
            column = pl.col(name) if dtype.time_zone else pl.col(name).dt.replace_time_zone("UTC")
            text.append(column.dt.convert_time_zone("UTC").dt.strftime(time_format).alias(name))
        elif dtype in (pl.Date, pl.Time) or isinstance(dtype, pl.Duration):
            text.append(pl.col(name).cast(pl.String))
        elif dtype == pl.Binary:  # JSON has no bytes (polars' JSON writer panics on them)
            text.append(pl.col(name).bin.encode("base64"))
    return frame.with_columns(text).select(
        pl.lit(batch.stream.asset).alias("asset"), pl.lit(batch.stream.stream_type).alias("stream_type"),
        pl.all())


def last_timestamp(frame: pl.DataFrame) -> str | None:
    """The latest ``timestamp`` of a batch, ISO UTC, when it has such a column: a datetime
    column, or text that reads as ISO-8601 (naive text is taken as UTC)."""
    if "timestamp" not in frame.columns:
        return None
    column = pl.col("timestamp")
    if frame.schema["timestamp"] == pl.String:
        column = column.str.to_datetime(strict=False, time_zone="UTC")
    elif not isinstance(frame.schema["timestamp"], pl.Datetime):
        return None
    try:
        latest = frame.select(column.max()).item()
    except pl.exceptions.PolarsError:  # text that is not a timestamp
        return None
    if latest is None:
        return None
    if latest.tzinfo is None:
        latest = latest.replace(tzinfo=UTC)
    return latest.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_values(records: pl.DataFrame) -> list[bytes]:
    """One compact JSON object per row of ``records`` (e.g. :func:`records_frame`), keys in
    column order; NaN and infinities become ``null``.

    Frames of text, numbers, booleans and nulls (and lists and structs of them: what
    :func:`records_frame` gives) are encoded by polars, with no Python per row; others
    (binary, objects, temporal values) by msgspec, one row at a time. Both write the same
    JSON values (a float's exponent may be spelled ``1e+20`` or ``1e20``; a Float32 is
    written in its shortest form, ``0.1``, not widened to ``0.10000000149011612``).
    """
    if records.height and records.width and all(_json_native(dtype) for dtype in records.dtypes):
        return records.select(pl.struct(pl.all()).struct.json_encode().cast(pl.Binary)).to_series().to_list()
    names = records.columns
    row = msgspec.defstruct("Record", [(f"f{i}", Any) for i in range(len(names))],
                            rename={f"f{i}": name for i, name in enumerate(names)})
    encode = msgspec.json.Encoder().encode
    columns = [records.get_column(name).to_list() for name in names]
    return [encode(row(*values)) for values in zip(*columns, strict=True)]


def _json_native(dtype: pl.DataType) -> bool:
    """Whether polars' JSON encoder writes ``dtype`` as msgspec would."""
    if dtype.is_numeric() or isinstance(dtype, (pl.String, pl.Boolean, pl.Null, pl.Categorical, pl.Enum)):
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return _json_native(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return all(_json_native(f.dtype) for f in dtype.fields)
    return False
