"""The ``sql`` receiver's cursor tools: the client's bound on a database that stopped
answering, timestamps for ``lag``, and the constants of the commit fence (``docs/sql.md``)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

#: Seconds past ``query_timeout`` after which a connection that has not answered is closed
#: from this side: PostgreSQL's (ADBC's or psycopg's) by :class:`Deadline`, MySQL's and
#: MariaDB's by PyMySQL's read timeout. The server's own limit (``statement_timeout``,
#: ``max_statement_time``) answers first while the server runs; a stopped one never answers.
CLIENT_GRACE = 10
#: Seconds the commit fence may hold rows back before the stream gets a warning naming the
#: transaction that holds it.
FENCE_WARN = 60.0
#: The state key of the primary keys (and cursor timestamps) delivered within ``lag``.
LAG_WINDOW = "factoryflow.lag_window"
#: PostgreSQL's commit fence: every transaction id below it has ended (committed or not).
FENCE_QUERY = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
#: The oldest transaction still open that holds an id: what holds the fence back.
OLDEST_OPEN_QUERY = (
    "SELECT pid, backend_xid::text, xact_start, state, left(query, 120) FROM pg_stat_activity "
    "WHERE backend_xid IS NOT NULL ORDER BY xact_start NULLS LAST LIMIT 1")


class QueryError(RuntimeError):
    """A query ran but its result cannot advance the stream's state."""


class QueryTimeout(RuntimeError):
    """The database did not answer within ``query_timeout`` plus :data:`CLIENT_GRACE`
    seconds, so this side closed the connection (retried)."""


class _Watchdog:
    """One daemon thread that runs callbacks at their time (``time.monotonic()``), for every
    :class:`Deadline` of the process: arming one costs a heap push, not a thread."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []  # a heap; cancelled ones stay
        self._armed: set[int] = set()
        self._count = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, delay: float, callback: Callable[[], None]) -> int:
        """Run ``callback`` in ``delay`` seconds unless :meth:`disarm` is called first."""
        with self._wake:
            token = next(self._count)
            heapq.heappush(self._due, (time.monotonic() + delay, token, callback))
            self._armed.add(token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sql-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()
            return token

    def disarm(self, token: int) -> None:
        """Cancel the callback of ``token`` (nothing if it ran)."""
        with self._wake:
            self._armed.discard(token)
            if len(self._due) > 2 * len(self._armed) + 64:  # mostly cancelled: keep the heap small
                self._due = [entry for entry in self._due if entry[1] in self._armed]
                heapq.heapify(self._due)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._due and self._due[0][1] not in self._armed:
                    heapq.heappop(self._due)
                if not self._due:
                    self._wake.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                _, token, callback = heapq.heappop(self._due)
                self._armed.discard(token)
            callback()


_WATCHDOG = _Watchdog()


class Deadline:
    """A bound on one blocking call of a stream's thread: after ``seconds`` (``grace`` of
    them past ``query_timeout``, for the message; 0: no bound) the socket ``fd_of()``
    names is shut down, so a call waiting on a server that stopped answering (SIGSTOPped,
    hung; its kernel still acknowledges, so no keepalive fails) returns with an error,
    which :meth:`guard` turns into :class:`QueryTimeout`."""

    def __init__(self, seconds: float, fd_of: Callable[[], int | None], grace: float = 0) -> None:
        self._seconds = seconds
        self._grace = grace
        self._fd_of = fd_of
        self._lock = threading.Lock()  # the socket is shut down only while the call runs
        self._running = False
        self._fired = False

    def _fire(self) -> None:
        with self._lock:
            fd = self._fd_of() if self._running else None
            if fd is None or fd < 0:
                return
            self._fired = True
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Bound the calls in the ``with`` block.

        :raises QueryTimeout: the bound passed and the call failed for it.
        """
        if not self._seconds:
            yield
            return
        with self._lock:
            self._running, self._fired = True, False
        token = _WATCHDOG.arm(self._seconds, self._fire)
        try:
            yield
        except Exception as exc:
            if self._fired:
                raise QueryTimeout(f"no answer from the database for {self._seconds:g} s ({what}; "
                                   f"query_timeout plus {self._grace:g} s): the connection was closed") from exc
            raise
        finally:
            _WATCHDOG.disarm(token)
            with self._lock:  # a callback running now waits for this, then does nothing
                self._running = False


def sockets_to(port: int) -> set[int]:
    """The file descriptors of this process's TCP connections to ``port``: a connection made
    by a C library (ADBC's libpq) is found as the one that was not there before."""
    import psutil

    return {c.fd for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr[1] == port}


def as_datetime(value: Any) -> datetime:
    """A cursor timestamp as a datetime without a zone (one with a zone in UTC), so any two
    compare (SQLite keeps timestamps as ISO text; ``timestamptz`` comes with a zone).

    :raises QueryError: the value is no timestamp.
    """
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            raise QueryError(f"the timestamp state column holds {value!r}, which is no timestamp, so lag "
                             "cannot read behind it") from None
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def like(value: datetime, example: Any) -> Any:
    """``value`` in the form of ``example``: ISO text for text (the same separator, whole
    seconds unless ``example`` has a fraction: cut down, so a bound never passes a row),
    else a datetime with or without a zone as ``example`` has."""
    if isinstance(example, str):
        sep = "T" if "T" in example else " "
        return value.isoformat(sep=sep, timespec="microseconds" if "." in example else "seconds")
    if isinstance(example, datetime) and example.tzinfo is not None:
        return value.replace(tzinfo=UTC)
    return value


class PollTally:
    """What one poll's result held: rows read, and rows new (not delivered within lag)."""

    def __init__(self) -> None:
        self.rows = 0
        self.new = 0

    def read(self, rows: int, new: int) -> None:
        """Count one chunk."""
        self.rows += rows
        self.new += new
