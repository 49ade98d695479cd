"""The control store: requests from the control API to the running dataflow.

One SQLite file in WAL mode at ``$FACTORYFLOW_HOME/state/control.sqlite``, written by
the API (``POST /v1/restream``) and read by the dataflow's receiver partitions:

- ``restream``: one row per (request, receiver, stream). Request ids grow; a stream's
  pending request is the highest id naming it.
- ``applied``: per (receiver, stream), the highest request id the stream has applied.

A partition keeps the id of the last request it applied in its own recoverable state
(:class:`~dataflows.runtime.PartitionState`). At each poll it compares that id with the
stream's pending one; when a newer request is waiting it resets the stream to its
first-run state, stores the new id in its state and marks it applied here. A crash
before the next snapshot restores the old id, so the reset is applied again to the
restored state: never lost, and never applied twice to the same state.

Implements ``POST /v1/restream`` of ``shared/specs/factorytx-rest-api.txt`` (the
request/acknowledgement half; the endpoint is in :mod:`api.app`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dataflows.home import control_path
from dataflows.storage import SharedStorage, Storage

__all__ = ["ControlStore", "SharedControl", "control_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS restream (
    request_id INTEGER NOT NULL, receiver TEXT NOT NULL, stream TEXT NOT NULL,
    requested_at TEXT NOT NULL, PRIMARY KEY (request_id, receiver, stream));
CREATE TABLE IF NOT EXISTS applied (
    receiver TEXT NOT NULL, stream TEXT NOT NULL, request_id INTEGER NOT NULL,
    applied_at TEXT NOT NULL, PRIMARY KEY (receiver, stream));
"""


class ControlStore:
    """A connection to the control store at ``path`` (created on first use).

    One connection per thread or partition; SQLite serialises writers across processes.
    """

    def __init__(self, path: Path) -> None:
        self._db = Storage(path, _SCHEMA)

    def request_restream(self, streams: Iterable[tuple[str, str]]) -> int:
        """Record one restream request for ``(receiver name, "asset:stream_type")`` pairs.

        :returns: the request id, higher than every earlier one.
        """
        now = datetime.now(UTC).isoformat()
        with self._db.transaction():
            (last,) = self._db.execute("SELECT coalesce(max(request_id), 0) FROM restream").fetchone()
            request_id = int(last) + 1
            self._db.executemany("INSERT OR IGNORE INTO restream VALUES (?, ?, ?, ?)",
                                 [(request_id, r, s, now) for r, s in streams])
        return request_id

    def pending(self, receiver: str, stream: str) -> int:
        """The highest restream request id naming the stream (0: never requested)."""
        row = self._db.execute("SELECT max(request_id) FROM restream WHERE receiver = ? AND stream = ?",
                               (receiver, stream)).fetchone()
        return int(row[0] or 0)

    def all_pending(self) -> dict[tuple[str, str], int]:
        """:meth:`pending` of every stream ever named, by ``(receiver, stream)``."""
        rows = self._db.execute("SELECT receiver, stream, max(request_id) FROM restream "
                                "GROUP BY receiver, stream").fetchall()
        return {(receiver, stream): int(request_id) for receiver, stream, request_id in rows}

    def version(self) -> int:
        """A number that changes when another connection wrote the store (SQLite's
        ``PRAGMA data_version``): what was read before it changed is still true."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def mark_applied(self, receiver: str, stream: str, request_id: int) -> None:
        """The stream has applied every request up to ``request_id``."""
        self._db.execute(
            "INSERT INTO applied VALUES (?, ?, ?, ?) ON CONFLICT (receiver, stream) DO UPDATE "
            "SET request_id = max(request_id, excluded.request_id), applied_at = excluded.applied_at",
            (receiver, stream, request_id, datetime.now(UTC).isoformat()))

    def applied(self, receiver: str, stream: str) -> int:
        """The highest request id the stream has applied (0: none)."""
        row = self._db.execute("SELECT request_id FROM applied WHERE receiver = ? AND stream = ?",
                               (receiver, stream)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


#: How old (seconds) a look at the control store may be and still answer
#: :meth:`SharedControl.pending`.
FRESH = timedelta(seconds=0.05)


class SharedControl:
    """One connection to the control store at ``path`` for the receiver partitions of a
    process (thread-safe), so 1,000 streams looking for restream requests every second
    cost one cheap check each, not a query each: the pending requests are read again only
    when another connection (the API) wrote the store.

    Opened by the first :meth:`acquire`, closed when the last user :meth:`release` s it.
    """

    def __init__(self, path: Path) -> None:
        self._stores = SharedStorage(lambda: ControlStore(path))
        self._lock = threading.Lock()
        self._store: ControlStore | None = None
        self._version: int | None = None
        self._checked: datetime | None = None
        self._pending: dict[tuple[str, str], int] = {}

    def acquire(self) -> None:
        """One more user (a partition); the first opens the store.

        :raises sqlite3.Error: the store cannot be opened.
        """
        store = self._stores.acquire()
        with self._lock:
            if store is not self._store:  # opened again after its last user left: look afresh
                self._store, self._version, self._checked = store, None, None

    def release(self) -> None:
        """One user less; the last closes the store."""
        self._stores.release()

    def pending(self, receiver: str, stream: str, now: datetime) -> int:
        """:meth:`ControlStore.pending`, as the store held it at most :data:`FRESH` seconds
        before ``now`` (the caller's clock, UTC): the partitions that wake together share
        one look."""
        with self._lock:
            assert self._store is not None, "acquire() first"
            if self._checked is None or not self._checked <= now < self._checked + FRESH:
                self._checked = now
                version = self._store.version()
                if version != self._version:
                    self._pending, self._version = self._store.all_pending(), version
            return self._pending.get((receiver, stream), 0)

    def mark_applied(self, receiver: str, stream: str, request_id: int) -> None:
        """:meth:`ControlStore.mark_applied`."""
        with self._lock:
            assert self._store is not None, "acquire() first"
            self._store.mark_applied(receiver, stream, request_id)
