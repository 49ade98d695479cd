"""What the ``opcua`` receiver's session engine (:mod:`connectors._opcua`) hands a stream's
reader: OPC UA values as polars values (:func:`dtype_of`, :func:`python_value`; OPC UA
Part 3 §8 and Part 6 §5 data types), each tag as resolved on the server, and the
:class:`Feed` the two threads share.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:  # asyncua loads when a stream runs, not when the config does
    from asyncua import ua

    from connectors.receivers.opcua import OpcUaStream, OpcUaTag

__all__ = ["MAX_BUFFERED_CHANGES", "Feed", "consume", "ResolvedTag", "dtype_of", "python_value",
           "source_of", "status_name", "utc"]

_log = logging.getLogger("receiver.opcua")

#: Data changes a subscribing stream holds for the dataflow at most (memory stays bounded
#: when the dataflow stops taking them).
MAX_BUFFERED_CHANGES = 100_000


def source_of(data_value: Any) -> datetime | None:
    """A DataValue's source timestamp (else its server timestamp) in UTC."""
    stamp = data_value.SourceTimestamp or data_value.ServerTimestamp
    if stamp is None:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


_DTYPES: dict[Any, pl.DataType] = {}  # VariantType -> column type, filled on first use


def dtype_of(variant: ua.Variant) -> pl.DataType | None:
    """The polars type of ``variant``'s values, or None for a type without one (structures)."""
    if not _DTYPES:
        from asyncua import ua

        kinds = ua.VariantType
        _DTYPES.update({
            kinds.Boolean: pl.Boolean(), kinds.SByte: pl.Int8(), kinds.Byte: pl.UInt8(), kinds.Int16: pl.Int16(),
            kinds.UInt16: pl.UInt16(), kinds.Int32: pl.Int32(), kinds.UInt32: pl.UInt32(), kinds.Int64: pl.Int64(),
            kinds.UInt64: pl.UInt64(), kinds.Float: pl.Float32(), kinds.Double: pl.Float64(),
            kinds.String: pl.String(), kinds.XmlElement: pl.String(), kinds.Guid: pl.String(),
            kinds.NodeId: pl.String(), kinds.ExpandedNodeId: pl.String(), kinds.QualifiedName: pl.String(),
            kinds.LocalizedText: pl.String(), kinds.StatusCode: pl.String(),
            kinds.DateTime: pl.Datetime("us", "UTC"), kinds.ByteString: pl.Binary()})
    base = _DTYPES.get(variant.VariantType)
    if base is None or not variant.is_array:
        return base
    depth = len(variant.Dimensions) if variant.Dimensions else 1
    for _ in range(depth):
        base = pl.List(base)
    return base


def python_value(value: Any) -> Any:
    """A decoded OPC UA value as a plain Python value of its column (lists kept as lists)."""
    if value is None or type(value) in (float, int, str, bool, bytes):  # most values: as they are
        return value
    from asyncua import ua

    if isinstance(value, list):
        return [python_value(v) for v in value]
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, ua.XmlElement):
        return value.Value
    if isinstance(value, ua.StatusCode):
        return value.name
    if isinstance(value, ua.NodeId | ua.QualifiedName):
        return value.to_string()
    if isinstance(value, bytes | str | bool | int | float):
        return value
    return str(value)  # Guid


def status_name(data_value: ua.DataValue) -> str:
    """The name of a DataValue's status code (``Good`` when it has none)."""
    return data_value.StatusCode.name if data_value.StatusCode is not None else "Good"


def utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class ResolvedTag:
    """One tag of a stream as resolved on the server."""

    config: OpcUaTag
    node_id: Any = None  # ua.NodeId once resolved
    historizing: bool = False  # the node's Historizing attribute: the server keeps its history
    problem: str | None = None
    reported: str | None = None  # the problem last reported (each is reported once)

    @property
    def export(self) -> str:
        return self.config.exportname

    @property
    def where(self) -> str:
        """The tag in messages: ``'export' (ns=2;s=Name)``."""
        node = self.node_id.to_string() if self.node_id is not None else self.config.name
        return f"tag {self.export!r} ({node})"


@dataclass
class Feed:
    """What the event loop hands one stream's reader; shared by two threads under ``lock``.

    :ivar changes: subscribe mode: ``(export, DataValue, backfilled)`` per data change,
        oldest first; ``backfilled`` is True for a value read from the server's history.
    :ivar polls: poll mode: the answers to Read calls not yet taken: (tags, DataValues).
    :ivar reports: ``(level, message)`` for the stream's markers (``error``: bad input).
    :ivar last_source: per export, the newest source timestamp (UTC) put in ``changes``
        (at start: the stream's state): where a backfill from history starts.
    :ivar holding: while a backfill runs, the live changes that wait for it; None otherwise.
    :ivar seam: per historized export, the newest source timestamp the last backfill handed
        on, until a newer live change of it arrives (see :meth:`release`).
    """

    stream: OpcUaStream
    tags: list[ResolvedTag]
    lock: threading.Lock = field(default_factory=threading.Lock)
    changes: list[tuple[str, Any, bool]] = field(default_factory=list)
    polls: list[list[tuple[ResolvedTag, Any]]] = field(default_factory=list)
    reports: list[tuple[str, str]] = field(default_factory=list)
    last_source: dict[str, datetime] = field(default_factory=dict)
    holding: list[tuple[str, Any]] | None = None
    seam: dict[str, datetime] = field(default_factory=dict)  # export -> newest source a backfill handed on
    dropped: int = 0  # data changes dropped since the reader last looked
    poll_pending: bool = False
    poll_error: str | None = None
    resolved: bool = False
    subscription: Any = None  # asyncua Subscription
    consumer: asyncio.Task[None] | None = None  # takes the subscription's events
    backfill: asyncio.Task[None] | None = None

    def report(self, level: str, message: str) -> None:
        with self.lock:
            self.reports.append((level, message))

    def put(self, exports: list[str], value: Any, backfilled: bool = False) -> int:
        """One data change for each of ``exports``: into ``changes``, or ``holding`` while a
        backfill runs (live changes only). A live change no newer than the seam a backfill
        left for its tag was read from history already and is left out. Beyond
        :data:`MAX_BUFFERED_CHANGES` the oldest are dropped and counted. Returns how many
        were left out at the seam."""
        seamed = 0
        with self.lock:
            if self.holding is not None and not backfilled:
                self.holding += [(export, value) for export in exports]
                waiting = self.holding
            else:
                stamp = source_of(value)
                for export in exports:
                    if not backfilled and export in self.seam:
                        if stamp is not None and stamp <= self.seam[export]:
                            seamed += 1
                            continue
                        del self.seam[export]  # past the seam: live changes go on as they come
                    self.changes.append((export, value, backfilled))
                    self.advance(export, stamp)
                waiting = self.changes
            if len(waiting) > MAX_BUFFERED_CHANGES:
                dropped = len(waiting) - MAX_BUFFERED_CHANGES
                del waiting[:dropped]
                self.dropped += dropped
        return seamed

    def advance(self, export: str, stamp: datetime | None) -> None:
        """``export``'s newest source timestamp sent is ``stamp`` (UTC) if newer (the
        caller holds :attr:`lock`)."""
        if stamp is not None and (export not in self.last_source or stamp > self.last_source[export]):
            self.last_source[export] = stamp

    def backfillable(self) -> bool:
        """Whether a historizing tag has a change sent (a backfill has a start)."""
        return any(t.historizing and t.export in self.last_source for t in self.tags)

    def hold(self) -> None:
        """Live changes wait in ``holding`` until :meth:`release` (a backfill starts)."""
        with self.lock:
            if self.holding is None:
                self.holding = []

    def release(self, historized: set[str]) -> int:
        """The live changes held, into ``changes`` after the backfilled ones. Each historized
        tag gets a seam at the newest source timestamp handed on: its live changes no newer,
        held or still to come (a new subscription's first notifications may arrive after
        the backfill ended), were read from history already and are left out. Returns how
        many held changes were left out."""
        with self.lock:
            held, self.holding = self.holding or [], None
            for export in historized:
                if export in self.last_source:
                    self.seam[export] = self.last_source[export]
        return sum(self.put([export], value) for export, value in held)

    def waiting(self) -> int:
        """Changes the reader has not taken yet."""
        with self.lock:
            return len(self.changes)


async def consume(feed: Feed, subscription: Any) -> None:
    """Take ``subscription``'s events (asyncua's iterator API: a queue, no task per data
    change) into ``feed``: each data change under each export name of its node
    (:meth:`Feed.put` bounds what waits there). Ends when the subscription is deleted."""
    from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent

    exports: dict[Any, list[str]] = {}
    for tag in feed.tags:
        exports.setdefault(tag.node_id, []).append(tag.export)
    async for event in subscription:
        if isinstance(event, DataChangeEvent):
            feed.put(exports.get(event.node.nodeid, []), event.data.monitored_item.Value)
        elif isinstance(event, StatusChangeEvent):
            _log.warning("%s: subscription status %s", feed.stream.key, event.notification.Status)
