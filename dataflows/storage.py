"""Durable SQLite files: what the ledger, the control store, the outboxes and connectors'
buffers (the MQTT receiver's) are kept in.

A :class:`Storage` is one connection to one file: WAL, ``synchronous=FULL`` (a commit is
on disk when it returns), autocommit, with :meth:`Storage.transaction` for the statements
that must land together. Several connections (threads, processes) may share a file; one
connection is used by one thread at a time.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["SharedStorage", "Storage", "open_durable"]

S = TypeVar("S", bound="Storage")


def open_durable(path: Path, schema: str, timeout: float = 30) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` (directories and tables created):
    autocommit, WAL, ``synchronous=FULL`` (a commit is on disk when it returns), shareable
    across threads one at a time; ``timeout`` seconds of waiting for another writer.

    :raises sqlite3.OperationalError: the file stayed locked for ``timeout`` seconds, or
        cannot be opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    # Switching a brand-new file to WAL, while another connection creates it too, fails
    # with "database is locked" without waiting out the busy timeout: wait here instead.
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                db.close()
                raise
            time.sleep(0.01)
    db.execute("PRAGMA synchronous=FULL")
    # keep the write-ahead log small (checkpoints every 1 MB, truncated back to 1 MB): on a
    # volume near full, a delete must not need the log to grow by what the last append took
    db.execute("PRAGMA wal_autocheckpoint=256")
    db.execute("PRAGMA journal_size_limit=1048576")
    db.executescript(schema)
    return db


class Storage:
    """A durable SQLite file at ``path``, its directories and ``schema`` (SQL script, run on
    every open: use ``CREATE TABLE IF NOT EXISTS``) created on first use.

    Each statement commits on its own unless it runs inside :meth:`transaction`.

    :param timeout: seconds to wait for another connection's write.
    :raises sqlite3.OperationalError: the file cannot be opened, or stayed locked.
    :raises sqlite3.DatabaseError: the file is not an SQLite database.
    """

    def __init__(self, path: Path, schema: str, timeout: float = 30) -> None:
        self.path = path
        self.db = open_durable(path, schema, timeout)

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        """Run one statement (committed at once outside a transaction)."""
        return self.db.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Any]) -> sqlite3.Cursor:
        """Run one statement per row of ``rows``."""
        return self.db.executemany(sql, rows)

    def create_function(self, name: str, arity: int, function: Any) -> None:
        """Make ``function`` callable from SQL on this connection, as ``name``."""
        self.db.create_function(name, arity, function, deterministic=True)

    @contextmanager
    def transaction(self) -> Iterator[Storage]:
        """``with storage.transaction():`` the statements inside commit together, on disk
        when the block ends, or not at all when it raises (rolled back, re-raised). It
        takes the write lock at once (``BEGIN IMMEDIATE``), so it never fails half-way for
        another writer."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:  # a full disk: the transaction stays open unless rolled back
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


class SharedStorage(Generic[S]):
    """Connections shared by many users (a process's receiver partitions), one per key (a
    worker thread, or ``None`` for one per process): opened by ``open()`` for a key's first
    :meth:`acquire`, closed with its last :meth:`release`, so 10,000 streams hold a few
    connections, not 10,000. Thread-safe; a connection is still used by one thread at a time.
    """

    def __init__(self, open: Callable[[], S]) -> None:  # noqa: A002 - what it does
        self._open_one = open
        self._lock = threading.Lock()
        self._held: dict[Hashable, tuple[S, int]] = {}  # key -> the connection, its users

    def acquire(self, key: Hashable = None) -> S:
        """``key``'s connection, opened if it has no user yet.

        :raises sqlite3.Error: the connection cannot be opened (nothing is held then).
        """
        with self._lock:
            storage, users = self._held.get(key) or (self._open_one(), 0)
            self._held[key] = (storage, users + 1)
            return storage

    def release(self, key: Hashable = None) -> None:
        """One user of ``key``'s connection less; the last closes it."""
        with self._lock:
            storage, users = self._held.pop(key)
            if users > 1:
                self._held[key] = (storage, users - 1)
            else:
                storage.close()
