"""The delivery ledger: what each transmit has durably delivered, kept in SQLite.

Transmits write to it only after a durable write (fsync, broker ack, outbox commit):

- ``progress``: records delivered and the last record timestamp per transmit and stream,
  for progress lines and (later) the control API's status;
- ``acks``: acknowledgements of batches whose receiver waits for delivery, e.g. a file
  receiver with ``delete_completed`` deletes a file once every transmit its stream
  reaches has acknowledged the file's last batch.

One SQLite file in WAL mode under ``$FACTORYFLOW_HOME/state/``, shared by every worker
and process on the machine. A :class:`Ledger` object holds one connection: create one
per partition (thread), never share it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    transmit TEXT NOT NULL, stream TEXT NOT NULL, records INTEGER NOT NULL,
    last_timestamp TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (transmit, stream));
CREATE TABLE IF NOT EXISTS acks (
    receiver TEXT NOT NULL, stream TEXT NOT NULL, ack_key TEXT NOT NULL, transmit TEXT NOT NULL,
    PRIMARY KEY (receiver, stream, ack_key, transmit));
"""


def ledger_path(home: Path) -> Path:
    """Where the ledger of the installation at ``home`` lives."""
    return home / "state" / "ledger.sqlite"


class Ledger:
    """A connection to the delivery ledger at ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def record_delivery(self, transmit: str, stream: str, records: int,
                        last_timestamp: str | None) -> int:
        """Add ``records`` to the count of ``transmit`` for ``stream``; returns the new total."""
        now = datetime.now(UTC).isoformat()
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

    def close(self) -> None:
        """Close the connection."""
        self._db.close()
