"""The ``opcua`` receiver's stream reader: what the session engine (:mod:`connectors._opcua`)
gathered for one stream, as typed polars frames with positions, and the stream's state.
The records and guarantees are documented in :mod:`connectors.receivers.opcua` and
``docs/opcua.md``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from connectors import _opcua_feed
from connectors._opcua import Engine, OpcUaError, Session
from connectors._opcua_feed import Feed, ResolvedTag, dtype_of, python_value, status_name, utc
from dataflows.sdk import Backoff, Batch, Position, RunContext, StreamReader

if TYPE_CHECKING:
    from connectors.receivers.opcua import OpcUaReceiver, OpcUaStream

__all__ = ["OpcUaReader"]


class OpcUaReader(StreamReader):
    """One stream of the ``opcua`` receiver: what its :class:`Feed` gathered, as frames
    (poll mode: a record per Read; subscribe mode and backfills: records of data changes)."""

    marker_category = "opcua"
    failure_text = "OPC UA read failed"
    retryable = (OpcUaError,)

    def __init__(self, receiver: OpcUaReceiver, stream: OpcUaStream, engine: Engine, ctx: RunContext,
                 state: Any) -> None:
        self._receiver = receiver
        self._stream = stream
        self._engine = engine
        self._ctx = ctx
        self._index = receiver.connection_for(stream)
        self._url = receiver.connections[self._index].url
        self._feed = Feed(stream, [ResolvedTag(t) for t in stream.opcua_tags])
        self._session: Session | None = None
        self._dtypes: dict[str, pl.DataType] = {}
        self._bad: dict[str, str] = {}  # export -> the problem last reported (reported once)
        self._fast: dict[str, Any] = {}  # export -> VariantType of good scalars already typed (_change_frame)
        state = state if isinstance(state, dict) else {}
        self._last: dict[str, Any] | None = state.get("last")
        # each tag's last source timestamp sent (UTC); the state holds them as text
        self._sent: dict[str, datetime] = {export: datetime.fromisoformat(stamp).astimezone(UTC)
                                           for export, stamp in (state.get("source_timestamps") or {}).items()}
        self._feed.last_source.update(self._sent)  # where a backfill from history starts
        self._sent_iso = {export: stamp.isoformat() for export, stamp in self._sent.items()}
        self._dirty: set[str] = set()  # exports whose _sent changed since the last snapshot
        engine.attach()
        # the runtime looks again every retry_interval (doubled, at most 5 s) while the
        # connection is down: reconnecting is the session's job, the reader only reports it
        retry = receiver.retry_seconds
        self.retry_policy = Backoff(initial=retry, maximum=max(retry, 5.0), jitter=0.1 * retry)

    def read(self) -> tuple[list[Batch], bool]:
        if self._session is None:
            self._session = self._engine.session(self._index, self._feed)
        feed = self._feed
        with feed.lock:
            changes, feed.changes = feed.changes, []
            polls, feed.polls = feed.polls, []
            reports, feed.reports = feed.reports, []
            poll_error, feed.poll_error = feed.poll_error, None
            dropped, feed.dropped = feed.dropped, 0
        if dropped:
            message = (f"{dropped} data changes dropped: more than {_opcua_feed.MAX_BUFFERED_CHANGES} waited for "
                       "the dataflow")
            reports.append(("warning", message))
        for level, message in reports:
            (self.report_bad_input if level == "error" else self.report_warning)(message)
        batches: list[Batch] = []
        frame, position = self._change_frame(changes)  # subscribe mode, and backfills in both
        if frame is not None:
            batches.append(Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._url,
                                 position=position))
        if self._receiver.mode == "poll":
            if feed.backfill is None:  # a backfill's values come before the next poll's
                self._next_poll()
            frame = self._poll_frame(polls)
            if frame is not None:
                batches.append(Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._url))
        if batches:
            return batches, False
        outage = self._session.outage()
        if outage is not None:
            raise OpcUaError(outage)
        if poll_error is not None:
            raise OpcUaError(poll_error)
        return [], False

    def _next_poll(self) -> None:
        feed, session = self._feed, self._session
        assert session is not None
        if feed.poll_pending or not session.connected:
            return
        feed.poll_pending = True
        self._engine.submit(session.poll(feed))

    # ------------------------------------------------------------------ records

    def _value(self, tag_export: str, where: str, data_value: Any) -> Any:
        """The column value of one DataValue (None when bad), reporting problems once."""
        status = data_value.StatusCode
        variant = data_value.Value
        problem = None
        value = None
        if status is not None and status.is_bad():
            resolving = next((t.problem for t in self._feed.tags if t.export == tag_export), None)
            # a node not found: what resolving it found out (a numeric NodeId it may mean)
            problem = f"{where}: {resolving if resolving and 'NodeId' in status.name else status.name}"
        elif variant is None or variant.Value is None:
            value = None
        else:
            dtype = dtype_of(variant)
            known = self._dtypes.get(tag_export)
            if dtype is None:
                problem = f"{where}: values of type {variant.VariantType.name} have no column type; sent as null"
            elif known is not None and known is not dtype and known != dtype:
                problem = f"{where}: a {variant.VariantType.name} value, not {known}; sent as null"
            else:
                self._dtypes[tag_export] = dtype
                value = python_value(variant.Value)
            if problem is None and status is not None and status.is_uncertain():
                self._note(tag_export, f"{where}: {status.name}", warn=True)
                return value
        if problem is None:
            self._bad.pop(tag_export, None)
        else:
            self._note(tag_export, problem)
        return value

    def _note(self, export: str, problem: str, warn: bool = False) -> None:
        if self._bad.get(export) == problem:
            return
        self._bad[export] = problem
        (self.report_warning if warn else self.report_bad_input)(problem)

    def _schema(self) -> dict[str, pl.DataType]:
        return {t.exportname: self._dtypes.get(t.exportname, pl.Null()) for t in self._stream.opcua_tags}

    def _poll_frame(self, polls: list[list[tuple[ResolvedTag, Any]]]) -> pl.DataFrame | None:
        rows: list[dict[str, Any]] = []
        for answer in polls:
            values: dict[str, Any] = {t.exportname: None for t in self._stream.opcua_tags}
            statuses: dict[str, str] = {}
            newest: datetime | None = None
            for tag, data_value in answer:
                values[tag.export] = self._value(tag.export, tag.where, data_value)
                statuses[tag.export] = status_name(data_value)
                stamp = utc(data_value.SourceTimestamp) or utc(data_value.ServerTimestamp)
                if data_value.SourceTimestamp is not None:  # where a backfill starts after a gap
                    self._sent[tag.export] = utc(data_value.SourceTimestamp)
                    self._dirty.add(tag.export)
                if stamp is not None and (newest is None or stamp > newest):
                    newest = stamp
            if self._receiver.on_change:
                last = {k: [_jsonable(values[k]), statuses.get(k)] for k in values}
                if last == self._last:
                    continue
                self._last = last
            rows.append({"timestamp": newest or self._ctx.now(), **values})
        if not rows:
            return None
        return pl.DataFrame(rows, schema={"timestamp": pl.Datetime("us", "UTC"), **self._schema()},
                            orient="row")

    def _change_frame(self, changes: list[tuple[str, Any, bool]]) -> tuple[pl.DataFrame | None, Position | None]:
        """One row per data change not sent already; changes of different tags with the
        same source timestamp, status and ``backfill`` (one scan of a PLC) share a row (the
        first one's place), whose ``server_timestamp`` is the newest of theirs. Each row's position is its
        first tag and the source timestamp, so a change sent again after a restart (a new
        subscription's first notification) is known (``docs/delivery.md``). Rows hold only
        their own tags' values (the other columns are null), built without a dict of every
        tag per row, so a stream of thousands of tags stays cheap."""
        rows: list[dict[str, Any]] = []
        tags: list[str] = []
        sources: list[datetime | None] = []  # UTC
        where = {t.export: t.where for t in self._feed.tags}
        open_rows: dict[tuple[Any, ...], dict[str, Any]] = {}  # (source, status, backfilled) -> its last row
        fast = self._fast  # export -> the VariantType of its good scalar values, checked once
        for export, data_value, backfilled in changes:
            source = utc(data_value.SourceTimestamp)
            server = utc(data_value.ServerTimestamp)
            stamp = source or server or self._ctx.now()
            if source is not None and source == self._sent.get(export):
                continue  # this sample was sent (a new subscription's first notification)
            variant, code = data_value.Value, data_value.StatusCode
            if (code is None or code.value == 0) and variant is not None and not variant.is_array and \
                    fast.get(export) is variant.VariantType:
                value, status = variant.Value, "Good"  # the common case: a good scalar of the tag's known type
            else:
                value, status = self._value(export, where[export], data_value), status_name(data_value)
                if status == "Good" and variant is not None and not variant.is_array and export not in self._bad \
                        and variant.Value is not None and type(variant.Value) in (float, int, str, bool):
                    fast[export] = variant.VariantType
                else:
                    fast.pop(export, None)
            if source is not None:
                self._sent[export] = source
                self._dirty.add(export)
            key = (source, status, backfilled)
            row = open_rows.get(key) if source is not None else None
            if row is not None and export not in row:
                row[export] = value
                if server is not None and (row["server_timestamp"] is None or server > row["server_timestamp"]):
                    row["server_timestamp"] = server
                continue
            row = {"timestamp": stamp, "server_timestamp": server, "status_code": status, "backfill": backfilled,
                   export: value}
            open_rows[key] = row
            rows.append(row)
            tags.append(export)
            sources.append(source)
        if not rows:
            return None, None
        frame = pl.DataFrame(rows, schema={"timestamp": pl.Datetime("us", "UTC"),
                                           "server_timestamp": pl.Datetime("us", "UTC"),
                                           "status_code": pl.String(), "backfill": pl.Boolean(),
                                           **self._schema()})
        naive = [None if t is None else t.astimezone(UTC).replace(tzinfo=None) for t in sources]
        ordinals = pl.DataFrame({"tag": tags, "source": naive},
                                schema={"tag": pl.String, "source": pl.Datetime("us")})
        return frame, Position("", ordinals, scoped=True)

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any] | None:
        if self._receiver.mode == "subscribe":
            return {"source_timestamps": self._sent_text()}
        state: dict[str, Any] = {"last": self._last} if self._receiver.on_change else {}
        if self._receiver.history_backfill and self._sent:
            state["source_timestamps"] = self._sent_text()
        return state or None

    def _sent_text(self) -> dict[str, str]:
        """``_sent`` as the state holds it (text), formatting only what changed."""
        for export in self._dirty:
            self._sent_iso[export] = self._sent[export].isoformat()
        self._dirty.clear()
        return dict(self._sent_iso)

    def describe(self) -> str:
        what = f"{len(self._stream.opcua_tags)} tags on {self._url} ({self._receiver.mode})"
        if self._sent:
            what += f", last change {max(self._sent.values()).isoformat()}"
        return what

    def close(self) -> None:
        self._engine.detach(self._feed, self._session)
        self._session = None


def _jsonable(value: Any) -> Any:
    """``value`` as state can hold it (datetimes and bytes as text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
