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
  was paused under.

One SQLite file in WAL mode under ``$FACTORYFLOW_HOME/state/``, shared by every worker
and process on the machine. A :class:`Ledger` object holds one connection: create one
per partition or thread; never use one from two threads at once.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec

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
"""


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


def ledger_path(home: Path) -> Path:
    """Where the ledger of the installation at ``home`` lives."""
    return home / "state" / "ledger.sqlite"


class Ledger:
    """A connection to the delivery ledger at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def record_delivery(self, transmit: str, stream: str, records: int,
                        last_timestamp: str | None) -> int:
        """Add ``records`` to the count of ``transmit`` for ``stream``; returns the new total."""
        now = _now()
        row = self._db.execute(
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

    def ack(self, receiver: str, stream: str, ack_key: str, transmit: str) -> None:
        """Record that ``transmit`` durably delivered the batch ``ack_key``."""
        self._db.execute("INSERT OR IGNORE INTO acks VALUES (?, ?, ?, ?)",
                         (receiver, stream, ack_key, transmit))

    def acked_by(self, receiver: str, stream: str, ack_key: str) -> set[str]:
        """Names of the transmits that acknowledged ``ack_key``."""
        rows = self._db.execute("SELECT transmit FROM acks WHERE receiver = ? AND stream = ? "
                                "AND ack_key = ?", (receiver, stream, ack_key))
        return {r[0] for r in rows}

    def forget(self, receiver: str, stream: str, ack_key: str) -> None:
        """Drop the acknowledgements of ``ack_key`` once the receiver has acted on them."""
        self._db.execute("DELETE FROM acks WHERE receiver = ? AND stream = ? AND ack_key = ?",
                         (receiver, stream, ack_key))

    def _status(self, transmit: str, **values: object) -> None:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{c} = excluded.{c}" for c in values)
        self._db.execute(f"INSERT INTO transmit_status (transmit, {columns}) VALUES (?, {marks}) "
                         f"ON CONFLICT (transmit) DO UPDATE SET {updates}",
                         (transmit, *values.values()))

    def mark_success(self, transmit: str) -> None:
        """``transmit`` just delivered: stamp the time and clear its last error."""
        self._status(transmit, last_success_at=_now(), last_error=None, last_error_at=None)

    def mark_error(self, transmit: str, message: str) -> None:
        """Record ``message`` as the last error of ``transmit``."""
        self._status(transmit, last_error=message, last_error_at=_now())

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
