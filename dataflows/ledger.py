"""The delivery ledger: what each transmit has durably delivered, kept in SQLite.

Transmits write to it only after a durable write (fsync, broker ack, outbox commit):

- ``progress``: records delivered and the last record timestamp per transmit and stream,
  for progress lines and (later) the control API's status;
- ``acks``: acknowledgements of batches whose receiver waits for delivery, e.g. a file
  receiver with ``delete_completed`` deletes a file once every transmit its stream
  reaches has acknowledged the file's last batch;
- ``transmit_status``: each transmit's markers, for the control API: last successful
  delivery (ISO UTC), outbox depth (records, bytes), last error and when, and whether the
  transmit is paused (e.g. credentials refused) with the fingerprint of the settings it
  was paused under;
- ``markers``: the warning and error markers of ``GET /v1/streams``, one per
  (component, asset, stream_type, category), replaced by the next marker of the same
  kind and cleared when the condition ends;
- ``received`` and ``errors``: records received per receiver and stream, and errors per
  component, for the control API's Prometheus metrics.

One SQLite file in WAL mode under ``$FACTORYFLOW_HOME/state/``, shared by every worker
and process on the machine. A :class:`Ledger` object holds one connection: create one
per partition or thread; never use one from two threads at once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from dataflows.diskspace import wait_for_space
from dataflows.home import ledger_path
from dataflows.storage import open_durable

__all__ = ["Ledger", "Marker", "TransmitStatus", "ledger_path", "marker_time", "open_durable"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    transmit TEXT NOT NULL, stream TEXT NOT NULL, records INTEGER NOT NULL,
    last_timestamp TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (transmit, stream));
CREATE TABLE IF NOT EXISTS acks (
    receiver TEXT NOT NULL, stream TEXT NOT NULL, ack_key TEXT NOT NULL, transmit TEXT NOT NULL,
    PRIMARY KEY (receiver, stream, ack_key, transmit));
CREATE TABLE IF NOT EXISTS transmit_status (
    transmit TEXT PRIMARY KEY, last_success_at TEXT, outbox_records INTEGER, outbox_bytes INTEGER,
    last_error TEXT, last_error_at TEXT, paused_fingerprint TEXT);
CREATE TABLE IF NOT EXISTS markers (
    component TEXT NOT NULL, component_type TEXT NOT NULL, asset TEXT NOT NULL,
    stream_type TEXT NOT NULL, category TEXT NOT NULL, timestamp TEXT NOT NULL, level TEXT NOT NULL,
    message TEXT NOT NULL, PRIMARY KEY (component, asset, stream_type, category));
CREATE TABLE IF NOT EXISTS received (
    receiver TEXT NOT NULL, stream TEXT NOT NULL, records INTEGER NOT NULL,
    PRIMARY KEY (receiver, stream));
CREATE TABLE IF NOT EXISTS errors (
    component TEXT NOT NULL, component_type TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (component, component_type));
"""

#: Marker timestamps: UTC, as FactoryTX writes them (``2018-05-09 21:39:22.000000``).
MARKER_TIME = "%Y-%m-%d %H:%M:%S.%f"


class Marker(msgspec.Struct, frozen=True, kw_only=True):
    """A warning or error about one stream, as ``GET /v1/streams`` lists it.

    :ivar component: name of the receiver, transform or transmit.
    :ivar component_type: ``"Receiver"``, ``"Transform"`` or ``"Transmit"``.
    :ivar category: what went wrong, e.g. ``"query"`` (a SQL stream's query failed).
    :ivar timestamp: when, UTC, ``%Y-%m-%d %H:%M:%S.%f``.
    :ivar level: ``"error"`` or ``"warning"``.
    """

    component: str
    component_type: str
    asset: str
    stream_type: str
    category: str
    timestamp: str
    level: str
    message: str


class TransmitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The markers of one transmit, as the control API reports them.

    :ivar records_delivered: records delivered in all, every stream (from ``progress``).
    :ivar last_success_at: ISO-8601 UTC time of the last acknowledged delivery, or None.
    :ivar outbox_records: records waiting in the outbox (None: the transmit has none).
    :ivar outbox_bytes: their encoded size in bytes (None: no outbox).
    :ivar last_error: the last delivery error, cleared by the next success.
    :ivar last_error_at: ISO-8601 UTC time of ``last_error``.
    :ivar paused: delivery is stopped until the config changes (e.g. HTTP 401/403).
    """

    transmit: str
    records_delivered: int = 0
    last_success_at: str | None = None
    outbox_records: int | None = None
    outbox_bytes: int | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    paused: bool = False


_log = logging.getLogger("factoryflow.ledger")
#: A ledger write waits out a full disk whatever stops: what it counts is small.
_NEVER = threading.Event()


class Ledger:
    """A connection to the delivery ledger at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self._db = open_durable(path, _SCHEMA)
        self._path = path

    def _write(self, sql: str, params: tuple[object, ...]) -> sqlite3.Cursor:
        """Run a writing statement; while the disk is full, wait and try again (a warning
        every 30 s): the ledger's rows are small, and space comes back as the job's
        receivers wait and its senders deliver (:mod:`dataflows.diskspace`)."""
        return wait_for_space(lambda: self._db.execute(sql, params), self._path.parent, _NEVER, _log)

    def record_delivery(self, transmit: str, stream: str, records: int,
                        last_timestamp: str | None) -> int:
        """Add ``records`` to the count of ``transmit`` for ``stream``; returns the new total."""
        now = _now()
        row = self._write(
            "INSERT INTO progress VALUES (?, ?, ?, ?, ?) ON CONFLICT (transmit, stream) DO UPDATE "
            "SET records = records + excluded.records, "
            "last_timestamp = coalesce(excluded.last_timestamp, last_timestamp), "
            "updated_at = excluded.updated_at RETURNING records",
            (transmit, stream, records, last_timestamp, now)).fetchone()
        return int(row[0])

    def progress(self, transmit: str, stream: str) -> tuple[int, str | None]:
        """(records delivered, last timestamp) of ``transmit`` for ``stream``."""
        row = self._db.execute("SELECT records, last_timestamp FROM progress WHERE transmit = ? "
                               "AND stream = ?", (transmit, stream)).fetchone()
        return (int(row[0]), row[1]) if row else (0, None)

    def all_progress(self) -> dict[tuple[str, str], tuple[int, str | None]]:
        """(records delivered, last timestamp) per ``(transmit, stream)``, in one query."""
        return {(r[0], r[1]): (int(r[2]), r[3]) for r in
                self._db.execute("SELECT transmit, stream, records, last_timestamp FROM progress")}

    def ack(self, receiver: str, stream: str, ack_key: str, transmit: str) -> None:
        """Record that ``transmit`` durably delivered the batch ``ack_key``."""
        self._write("INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?)",
                         (receiver, stream, ack_key, transmit))

    def acked_by(self, receiver: str, stream: str, ack_key: str) -> set[str]:
        """Names of the transmits that acknowledged ``ack_key``."""
        rows = self._db.execute("SELECT transmit FROM acks WHERE receiver = ? AND stream = ? "
                                "AND ack_key = ?", (receiver, stream, ack_key))
        return {r[0] for r in rows}

    def forget(self, receiver: str, stream: str, ack_key: str) -> None:
        """Drop the acknowledgements of ``ack_key`` once the receiver has acted on them."""
        self._write("DELETE FROM acks WHERE receiver = ? AND stream = ? AND ack_key = ?",
                         (receiver, stream, ack_key))

    def _status(self, transmit: str, **values: object) -> None:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        self._write(f"INSERT INTO transmit_status (transmit, {columns}) VALUES (?, {marks}) "
                         f"ON CONFLICT (transmit) DO UPDATE SET {updates}",
                         (transmit, *values.values()))

    def mark_success(self, transmit: str) -> None:
        """``transmit`` just delivered: stamp the time and clear its last error."""
        self._status(transmit, last_success_at=_now(), last_error=None, last_error_at=None)

    def mark_error(self, transmit: str, message: str) -> None:
        """Record ``message`` as the last error of ``transmit`` (and count it)."""
        self._status(transmit, last_error=message, last_error_at=_now())
        self.count_error(transmit, "Transmit")

    def count_error(self, component: str, component_type: str) -> None:
        """Add one to the error count of ``component``."""
        self._write("INSERT INTO errors VALUES (?, ?, 1) ON CONFLICT (component, component_type) "
                         "DO UPDATE SET count = count + 1", (component, component_type))

    def error_counts(self) -> dict[tuple[str, str], int]:
        """Errors so far per ``(component, component_type)``."""
        return {(r[0], r[1]): int(r[2]) for r in self._db.execute("SELECT * FROM errors")}

    def set_marker(self, marker: Marker) -> None:
        """Store ``marker``, replacing the one of the same component, stream and category;
        an error-level marker also counts as an error of its component."""
        self._write("INSERT OR REPLACE INTO markers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (marker.component, marker.component_type, marker.asset, marker.stream_type,
                          marker.category, marker.timestamp, marker.level, marker.message))
        if marker.level == "error":
            self.count_error(marker.component, marker.component_type)

    def clear_marker(self, component: str, asset: str, stream_type: str, category: str) -> None:
        """The condition behind a marker has ended: drop it."""
        self._write("DELETE FROM markers WHERE component = ? AND asset = ? AND stream_type = ? "
                         "AND category = ?", (component, asset, stream_type, category))

    def error_markers(self) -> dict[str, int]:
        """Error-level markers per component (one aggregate query, no marker read)."""
        return {r[0]: int(r[1]) for r in self._db.execute(
            "SELECT component, count(*) FROM markers WHERE level = 'error' GROUP BY component")}

    def markers(self) -> list[Marker]:
        """Every stored marker, oldest first."""
        rows = self._db.execute("SELECT component, component_type, asset, stream_type, category, "
                                "timestamp, level, message FROM markers ORDER BY timestamp")
        return [Marker(component=r[0], component_type=r[1], asset=r[2], stream_type=r[3],
                       category=r[4], timestamp=r[5], level=r[6], message=r[7]) for r in rows]

    def record_received(self, receiver: str, stream: str, records: int) -> None:
        """Add ``records`` to the records ``receiver`` has read from ``stream``."""
        self._write("INSERT INTO received VALUES (?, ?, ?) ON CONFLICT (receiver, stream) "
                         "DO UPDATE SET records = records + excluded.records", (receiver, stream, records))

    def received(self) -> dict[tuple[str, str], int]:
        """Records read so far per ``(receiver, stream)``."""
        return {(r[0], r[1]): int(r[2]) for r in self._db.execute("SELECT * FROM received")}

    def delivered(self) -> dict[tuple[str, str], int]:
        """Records delivered so far per ``(transmit, stream)``."""
        return {(r[0], r[1]): int(r[2]) for r in
                self._db.execute("SELECT transmit, stream, records FROM progress")}

    def delivery_summary(self) -> str:
        """Records delivered so far per transmit and stream, in one line:
        ``local: lasercut:mssql 24, fusion:mssql 4; kafka: ...`` (``nothing delivered yet``)."""
        per_transmit: dict[str, list[str]] = {}
        for (transmit, stream), records in sorted(self.delivered().items()):
            per_transmit.setdefault(transmit, []).append(f"{stream} {records}")
        return "; ".join(f"{t}: {', '.join(s)}" for t, s in per_transmit.items()) or "nothing delivered yet"

    def mark_outbox(self, transmit: str, records: int, size: int) -> None:
        """The outbox of ``transmit`` now holds ``records`` records of ``size`` bytes."""
        self._status(transmit, outbox_records=records, outbox_bytes=size)

    def pause(self, transmit: str, fingerprint: str | None) -> None:
        """Pause ``transmit`` under the settings ``fingerprint``; ``None`` resumes it."""
        self._status(transmit, paused_fingerprint=fingerprint)

    def paused_fingerprint(self, transmit: str) -> str | None:
        """The settings fingerprint ``transmit`` was paused under, or None when not paused."""
        row = self._db.execute("SELECT paused_fingerprint FROM transmit_status WHERE transmit = ?",
                               (transmit,)).fetchone()
        return row[0] if row else None

    def transmits(self) -> list[str]:
        """Names of the transmits with stored markers."""
        return [r[0] for r in self._db.execute("SELECT transmit FROM transmit_status ORDER BY transmit")]

    def transmit_status(self, transmit: str) -> TransmitStatus:
        """The markers of ``transmit`` (defaults when it never ran)."""
        delivered = self._db.execute("SELECT coalesce(sum(records), 0) FROM progress WHERE transmit = ?",
                                     (transmit,)).fetchone()[0]
        row = self._db.execute(
            "SELECT last_success_at, outbox_records, outbox_bytes, last_error, last_error_at, "
            "paused_fingerprint FROM transmit_status WHERE transmit = ?", (transmit,)).fetchone()
        if row is None:
            return TransmitStatus(transmit=transmit, records_delivered=int(delivered))
        return TransmitStatus(transmit=transmit, records_delivered=int(delivered),
                              last_success_at=row[0], outbox_records=row[1], outbox_bytes=row[2],
                              last_error=row[3], last_error_at=row[4], paused=row[5] is not None)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def marker_time(moment: datetime | None = None) -> str:
    """``moment`` (default now) as a marker timestamp: UTC, :data:`MARKER_TIME`."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime(MARKER_TIME)
