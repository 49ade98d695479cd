"""A durable outbox for store-and-forward transmits: encoded records in SQLite (WAL).

Implements "Operation" (store-and-forward) of ``shared/specs/factorytx-digest.md``: the
transmit's ``write_batch`` appends records and commits before it returns; a sender reads
them oldest first, posts them and deletes them only after the endpoint acknowledged
them. The file survives restarts and SIGKILL (``synchronous=FULL``).

One row per record: the stream (``asset:stream_type``), the record's timestamp (ISO UTC,
for progress lines) and its encoded body (one BSON sslog or one JSON object); in a
transmit's spool (:mod:`dataflows.spool`), one row per batch. A one-row
``depth`` table keeps the record count and byte total in the same transactions, so the
depth costs nothing to read. Several connections (threads, processes) may share a file;
each :class:`Outbox` object is one connection, used by one thread at a time. Once drained,
the sender gives the disk space back (:meth:`Outbox.reclaim`). The writer and the sender
thread are in :mod:`dataflows.outbox_sender`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from dataflows import positions
from dataflows.diskspace import WaitNotice, floor_of
from dataflows.positions import NO_UPDATE, PositionStore, Update
from dataflows.storage import Storage

if TYPE_CHECKING:
    from dataflows.records import Batch

#: Disk use of a drained outbox above which :meth:`Outbox.reclaim` gives the space back.
RECLAIM_BYTES = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, timestamp TEXT,
    body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS depth (
    one INTEGER PRIMARY KEY CHECK (one = 1), records INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO depth VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS identity (one INTEGER PRIMARY KEY CHECK (one = 1), id TEXT NOT NULL);
INSERT OR IGNORE INTO identity VALUES (1, lower(hex(randomblob(16))));
""" + positions.SCHEMA


class Entry(NamedTuple):
    """One stored record: its row id, stream, timestamp (ISO UTC or None) and encoded body."""

    id: int
    stream: str
    timestamp: str | None
    body: bytes


class Outbox:
    """A connection to the outbox file at ``path`` (created on first use).

    :raises sqlite3.DatabaseError: the file exists but is not an outbox.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Storage(path, _SCHEMA, timeout=60)
        self._positions: PositionStore | None = None

    def keep_positions(self, recovery: str | None) -> None:
        """Keep the source positions of what this connection stores, so records read again
        after a crash are not stored twice (:meth:`fresh`); ``recovery`` is the recovery
        store's generation (:class:`~dataflows.positions.PositionStore`)."""
        self._positions = PositionStore(self._db, recovery)

    def fresh(self, batches: list[Batch]) -> list[tuple[Batch, Update]]:
        """``batches`` without the records this outbox stored before (by their positions,
        once :meth:`keep_positions` was called), each with the update to store with its
        records (:meth:`append`; :meth:`~dataflows.positions.Update.merge` joins several)."""
        if self._positions is None:
            return [(batch, NO_UPDATE) for batch in batches]
        return self._positions.fresh(batches)

    def append(self, records: Sequence[tuple[str, str | None, bytes]], update: Update | None = None) -> None:
        """Store ``(stream, timestamp, body)`` records, and the positions they reach
        (:meth:`fresh`), in one transaction; durable on return."""
        if not records and (update is None or update.empty):
            return
        size = sum(len(body) for _, _, body in records)
        with self._db.transaction():
            if records:
                self._db.executemany("INSERT INTO outbox (stream, timestamp, body) VALUES (?, ?, ?)",
                                     records)
                self._db.execute("UPDATE depth SET records = records + ?, bytes = bytes + ?",
                                 (len(records), size))
            if update is not None and self._positions is not None:
                self._positions.store(update)
        if update is not None and self._positions is not None:
            self._positions.stored(update)

    def peek(self, max_records: int, max_bytes: int, mine: Callable[[str], bool] | None = None) -> list[Entry]:
        """The oldest records, at most ``max_records`` and ``max_bytes`` of bodies in all, but
        always at least one when any is stored (a record larger than ``max_bytes`` goes alone).

        :param mine: only the records of the streams (``asset:stream_type``) it is true of,
            so several senders share an outbox, each stream with one of them.
        """
        out: list[Entry] = []
        size = 0
        if mine is None:
            rows = self._db.execute("SELECT id, stream, timestamp, body FROM outbox ORDER BY id LIMIT ?",
                                    (max_records,))
        else:
            self._db.create_function("mine", 1, mine)
            rows = self._db.execute("SELECT id, stream, timestamp, body FROM outbox WHERE mine(stream) "
                                    "ORDER BY id LIMIT ?", (max_records,))
        for row in rows:
            if out and size + len(row[3]) > max_bytes:
                break
            out.append(Entry(*row))
            size += len(row[3])
        return out

    def delete(self, entries: Sequence[Entry]) -> None:
        """Remove delivered records (as returned by :meth:`peek`)."""
        if not entries:
            return
        with self._db.transaction():
            if entries[-1].id - entries[0].id + 1 == len(entries):  # every id between is one of them
                removed = self._db.execute(
                    "DELETE FROM outbox WHERE id >= ? AND id <= ? RETURNING length(body)",
                    (entries[0].id, entries[-1].id)).fetchall()
            else:  # a shard's records, with other shards' between them
                removed = self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?)) RETURNING length(body)",
                    (json.dumps([entry.id for entry in entries]),)).fetchall()
            self._db.execute("UPDATE depth SET records = records - ?, bytes = bytes - ?",
                             (len(removed), sum(r[0] for r in removed)))

    def through(self, marks: dict[str, int]) -> list[Entry]:
        """Each stream's records up to its mark (the record id, included), oldest first: what
        an endpoint that commits with the ids (Kafka transactions) holds already."""
        out: list[Entry] = []
        for stream, last in marks.items():
            out += [Entry(*row) for row in self._db.execute(
                "SELECT id, stream, timestamp, body FROM outbox WHERE stream = ? AND id <= ? ORDER BY id",
                (stream, last))]
        return sorted(out)

    def identity(self) -> str:
        """This outbox file's own id (random, made with the file): record ids are only
        comparable within one file."""
        return str(self._db.execute("SELECT id FROM identity").fetchone()[0])

    def disk_bytes(self) -> int:
        """Bytes the outbox takes on disk: the database file and its write-ahead log."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())

    def reclaim(self, threshold: int = RECLAIM_BYTES) -> int | None:
        """Give disk space back once the outbox is drained: ``VACUUM`` and truncate the
        write-ahead log, when the files take more than ``threshold`` bytes and no record
        is stored. Cheap when it runs: an empty database is copied in no time.

        :returns: the bytes on disk before, or None when nothing was done.
        """
        before = self.disk_bytes()
        if before <= threshold or self.depth()[0]:
            return None
        self._db.execute("VACUUM")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before

    def wait_for_room(self, size: int, budget: int, stopping: threading.Event, log: logging.Logger,
                      full: Callable[[str | None], None] | None = None) -> None:
        """Wait until ``size`` more bytes fit ``budget`` and leave the volume over its free-space
        floor (:func:`~dataflows.diskspace.floor_of`; an empty outbox takes anything that
        leaves the floor),
        warning every 30 s. When ``stopping`` is set meanwhile, return anyway: the bytes are
        then stored over the budget, since a graceful stop must not wait for an endpoint
        that may be down or refusing for good, and nothing may be dropped. ``full`` is told
        when the wait starts (the warning's text) and when it ends (``None``)."""
        notice = WaitNotice(log, full)
        while True:
            records, stored = self.depth()
            usage = shutil.disk_usage(self.path.parent)
            free, floor = usage.free, floor_of(usage.total)
            low = free - 2 * size < floor  # SQLite writes it twice: to the WAL, then the database
            if (records == 0 or stored + size <= budget) and not low:  # the floor holds even when empty:
                break  # it leaves room to delete what is delivered
            if stopping.is_set():
                log.warning("stopping with %s full (%d of %d bytes, %.1f MB free on its volume): storing %d "
                            "more bytes", self.path.name, stored, budget, free / 1e6, size)
                break
            if low:
                notice.tick(f"disk full: {free / 1e6:.1f} MB free on {self.path.parent} (min_free_bytes "
                            f"{floor / 1e6:.1f} MB): {self.path.name} ({records} entries) waits for the "
                            f"endpoint before storing {size} more bytes")
            else:
                notice.tick(f"{self.path.name} full ({records} entries, {stored} of {budget} bytes): waiting "
                            f"for the endpoint before storing {size} more bytes")
        notice.end()

    def depth(self) -> tuple[int, int]:
        """(records, bytes of bodies) stored now."""
        records, size = self._db.execute("SELECT records, bytes FROM depth").fetchone()
        return int(records), int(size)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def shard_of(stream: str, streams: Sequence[str], shards: int) -> int:
    """The shard (``0`` to ``shards - 1``) of a stream ``asset:stream_type`` among the
    ``streams`` a config sends: the known streams in turns, in sorted order, so each shard
    gets its share; another (left in an outbox by an earlier config) by its hash
    (BLAKE2b), the same in every process and run."""
    known = sorted(streams)
    if stream in known:
        return known.index(stream) % shards
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "big") % shards


def take_drainer_lock(lock_path: Path) -> IO[bytes] | None:
    """The lock on ``lock_path`` (``flock``) that makes its holder an outbox's one drainer,
    or None when another worker or process holds it. Closing the file releases it."""
    lock: IO[bytes] = open(lock_path, "wb")  # noqa: SIM115 - closed by the caller, or below
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def start_drainer(lock_path: Path, target: Callable[[], None],
                  name: str) -> tuple[IO[bytes] | None, threading.Thread | None]:
    """Run ``target`` (the loop that drains an outbox) in a daemon thread, unless another
    worker or process already drains it: one drainer per outbox, held by a lock on
    ``lock_path`` (``flock``).

    :returns: (the lock file, to close after the thread ends; the thread), or
        ``(None, None)`` when another holds the lock.
    """
    lock = take_drainer_lock(lock_path)
    if lock is None:
        return None, None
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return lock, thread
