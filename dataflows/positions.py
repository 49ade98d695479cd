"""Source positions: where each record sits in its source, so that a record read again is
known and never stored twice by a transmit.

After a crash the receivers resume from the last recovery snapshot and read again what they
had read since; a transmit whose spool or outbox already holds those records would send
them twice. So every batch a receiver reads carries a :class:`Position`, and each
store-and-forward transmit keeps, in the same SQLite transaction that stores the records
(its spool or outbox), the last position it stored per stream and scope
(:class:`PositionStore`). Records at or before it are dropped on the way in, whatever the
receiver reads again from its older snapshot.

A position is a *scope* (what the ordinals count within: a file's path, or ``""`` for a
stream that is one sequence, like an SQL cursor) with an *identity* (what tells versions of
a scope apart: a file's modification time when it was first read, so a file rewritten or
made anew under the same name starts over), one *ordinal* per record (a tuple of values
compared left to right: a file's record number, an SQL row's cursor values), and the
restream *generation* (a restream starts the stream's positions over, so its data is sent
again, once). Ordinals grow within a scope in the order the receiver hands records on; two
kinds of source compare otherwise (:class:`Position`): records out of order within a ``lag``
(an SQL cursor with ``lag``, known by key within the window) and records that each name
their own scope (OPC UA tags, known when equal to their tag's last).

A record whose ordinal holds a null is always kept. Batches without a position (sources
that have none yet) are kept whole: at-least-once, as before.

Implements "Delivered once" (``docs/delivery.md``).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING

import polars as pl

from dataflows.records import Batch, Position

if TYPE_CHECKING:
    from dataflows.storage import Storage

__all__ = ["NO_UPDATE", "SCHEMA", "Position", "PositionStore", "Update"]

#: The tables a spool or outbox keeps its positions in (``CREATE ... IF NOT EXISTS``).
SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    key TEXT NOT NULL, scope TEXT NOT NULL, identity TEXT NOT NULL, generation INTEGER NOT NULL,
    ordinal BLOB NOT NULL, updated REAL NOT NULL, PRIMARY KEY (key, scope));
CREATE TABLE IF NOT EXISTS positions_store (
    one INTEGER PRIMARY KEY CHECK (one = 1), recovery TEXT NOT NULL);
"""

#: Positions not written for this long before the newest one are forgotten, in seconds: a
#: receiver reads again only what it read since its last snapshot, taken every few seconds.
FORGET_SECONDS = 7 * 86400.0


@dataclass(slots=True)
class _Stored:
    identity: str
    generation: int
    last: pl.DataFrame  # one row: the last record's ordinal; with lag: the window; scoped: one row a scope


@dataclass(frozen=True, slots=True)
class Update:
    """What a transmit stores with a write: the last position per key and scope
    (:meth:`PositionStore.fresh`), and the keys a restream starts over."""

    last: dict[tuple[str, str], _Stored]
    reset: dict[str, int]  # key -> the restream generation it starts over at

    @property
    def empty(self) -> bool:
        """Whether it changes nothing."""
        return not self.last and not self.reset

    @staticmethod
    def merge(updates: list[Update]) -> Update:
        """One update doing what ``updates`` do, in their order."""
        last: dict[tuple[str, str], _Stored] = {}
        reset: dict[str, int] = {}
        for update in updates:
            for key, generation in update.reset.items():
                last = {k: v for k, v in last.items() if k[0] != key}
                reset[key] = generation
            last.update(update.last)
        return Update(last, reset)


#: The update of a batch without a position.
NO_UPDATE = Update({}, {})


def position_key(batch: Batch) -> str:
    """Whose positions a batch advances: its receiver, the stream it was read on and the
    stream it is on now (``replicate`` copies each keep their own)."""
    return f"{batch.receiver}|{batch.ack_stream()}|{batch.stream}"


def _later(columns: list[str], stored: list[pl.Expr]) -> pl.Expr:
    """Whether ``columns`` come after the ``stored`` values, left to right; a null: kept."""
    later = pl.lit(False)
    equal = pl.lit(True)
    for name, value in zip(columns, stored, strict=True):
        later = later | (equal & (pl.col(name) > value))
        equal = equal & (pl.col(name) == value)
    return later.fill_null(False) | pl.any_horizontal(pl.col(c).is_null() for c in columns)


def _after(ordinals: pl.DataFrame, last: pl.DataFrame) -> pl.Series:
    """Which rows of ``ordinals`` come after ``last`` (one row)."""
    stored = [pl.lit(last.get_column(name)).first() for name in ordinals.columns]
    return ordinals.select(_later(ordinals.columns, stored).alias("after")).to_series()


def _last(ordinals: pl.DataFrame) -> pl.DataFrame | None:
    """The greatest ordinal of ``ordinals`` (left to right; nulls left out), one row."""
    present = ordinals.drop_nulls()
    if not present.height:
        return None
    return present.sort(present.columns).tail(1)


def _after_in_scope(ordinals: pl.DataFrame, lasts: pl.DataFrame) -> pl.Series:
    """Which rows of ``ordinals`` (scope, ordinal...) differ from their scope's last stored
    (``lasts``); a scope with none stored, or a null: kept."""
    scope, rest = ordinals.columns[0], ordinals.columns[1:]
    joined = ordinals.join(lasts, on=scope, how="left", suffix="_stored", maintain_order="left")
    new = pl.col(f"{rest[0]}_stored").is_null() | pl.any_horizontal(
        pl.col(c).is_null() | (pl.col(c) != pl.col(f"{c}_stored")) for c in rest)
    return joined.select(new.fill_null(True).alias("after")).to_series()


def _last_in_scope(lasts: pl.DataFrame | None, ordinals: pl.DataFrame) -> pl.DataFrame | None:
    """The last ordinal of each scope (in the order stored) among ``lasts`` and ``ordinals``."""
    both = ordinals.drop_nulls() if lasts is None else pl.concat([lasts, ordinals.drop_nulls()])
    if not both.height:
        return lasts
    return both.group_by(both.columns[0], maintain_order=True).last()


def _unseen(ordinals: pl.DataFrame, window: pl.DataFrame, lag: float) -> pl.Series:
    """Which rows of ``ordinals`` (timestamp, key...) are new against the ``window`` of
    those stored: not older than ``lag`` seconds behind the newest stored, and of a key not
    in the window. A null timestamp or key: kept."""
    ts, keys = ordinals.columns[0], ordinals.columns[1:]
    bound = window.get_column(ts).max() - timedelta(seconds=lag)  # type: ignore[operator]
    fresh = ordinals.with_row_index("_row").join(window.select(keys), on=keys, how="anti")
    fresh = fresh.filter(pl.col(ts).is_null() | (pl.col(ts) >= bound) | pl.any_horizontal(
        pl.col(k).is_null() for k in keys))
    return pl.Series("after", [False] * ordinals.height).scatter(fresh.get_column("_row"), True)


def _window(window: pl.DataFrame | None, added: pl.DataFrame, lag: float) -> pl.DataFrame | None:
    """The keys stored within ``lag`` seconds of the newest timestamp, ``added`` joined."""
    joined = added.drop_nulls() if window is None else pl.concat([window, added.drop_nulls()])
    if not joined.height:
        return window
    ts = joined.columns[0]
    newest = joined.get_column(ts).max()
    return joined.filter(pl.col(ts) >= newest - timedelta(seconds=lag))  # type: ignore[operator]


def _fresh_rows(position: Position, stored: pl.DataFrame) -> pl.Series:
    """Which records of ``position`` are not among those ``stored`` stands for."""
    if position.lag is not None:
        return _unseen(position.ordinals, stored, position.lag)
    if position.scoped:
        return _after_in_scope(position.ordinals, stored)
    return _after(position.ordinals, stored)


def _advanced(position: Position, stored: pl.DataFrame | None) -> pl.DataFrame | None:
    """What stands for the records stored once those of ``position`` are (None: nothing)."""
    if position.lag is not None:
        return _window(stored, position.ordinals, position.lag)
    if position.scoped:
        return _last_in_scope(stored, position.ordinals)
    return _last(position.ordinals)


def _encode(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    return buffer.getvalue()


class PositionStore:
    """The positions a spool or outbox stored, in its SQLite file (``db``, tables
    :data:`SCHEMA`), per :func:`position_key` and scope. One object per writer (worker); a stream is written by
    one worker, so what it caches stays true.

    :param recovery: the recovery store's generation
        (:meth:`~dataflows.context.RunContext.recovery_generation`): positions stored under
        another (a start over with fresh state) are forgotten; None (no state kept, every
        start reads everything again): positions are neither kept nor compared.
    """

    def __init__(self, db: Storage, recovery: str | None) -> None:
        self._db = db
        self.enabled = recovery is not None
        self._cache: dict[tuple[str, str], _Stored | None] = {}
        self._generations: dict[str, int] = {}
        if recovery is None:
            return
        with db.transaction():
            row = db.execute("SELECT recovery FROM positions_store").fetchone()
            if row is None or row[0] != recovery:
                db.execute("DELETE FROM positions")
                db.execute("INSERT OR REPLACE INTO positions_store VALUES (1, ?)", (recovery,))
            db.execute("DELETE FROM positions WHERE updated < (SELECT max(updated) FROM positions) - ?",
                       (FORGET_SECONDS,))

    def _stored(self, key: str, scope: str) -> _Stored | None:
        if (key, scope) not in self._cache:
            row = self._db.execute("SELECT identity, generation, ordinal FROM positions WHERE key = ? AND scope = ?",
                                   (key, scope)).fetchone()
            self._cache[(key, scope)] = None if row is None else _Stored(
                row[0], row[1], pl.read_ipc(io.BytesIO(row[2])))
        return self._cache[(key, scope)]

    def _generation(self, key: str) -> int:
        if key not in self._generations:
            row = self._db.execute("SELECT max(generation) FROM positions WHERE key = ?", (key,)).fetchone()
            self._generations[key] = row[0] if row and row[0] is not None else 0
        return self._generations[key]

    def fresh(self, batches: list[Batch]) -> list[tuple[Batch, Update]]:
        """``batches`` without the records stored already (a batch left empty is left out;
        one without a position is kept whole), each with the update that stores its
        position (:meth:`store`, in the transaction that stores its records;
        :meth:`Update.merge` joins those of batches stored together)."""
        if not self.enabled:
            return [(batch, NO_UPDATE) for batch in batches]
        kept: list[tuple[Batch, Update]] = []
        last: dict[tuple[str, str], _Stored] = {}
        reset: dict[str, int] = {}
        for batch in batches:
            position = batch.position
            if position is None or not batch.frame.height or position.ordinals.height != batch.frame.height:
                kept.append((batch, NO_UPDATE))
                continue
            key = position_key(batch)
            generation = reset.get(key, self._generation(key))
            if position.generation < generation:
                continue  # read before a restream that is applied already: stored then
            starts_over = position.generation > generation
            if starts_over:  # a restream: the stream starts over
                reset[key] = position.generation
                last = {k: v for k, v in last.items() if k[0] != key}
            scoped = (key, position.scope)
            stored = last.get(scoped) or (None if key in reset else self._stored(*scoped))
            if stored is not None and (stored.identity != position.identity
                                       or stored.last.schema != position.ordinals.schema):
                stored = None  # another version of the scope, or another cursor: it starts over
            if stored is not None:
                mask = _fresh_rows(position, stored.last)
                if not mask.any():
                    continue
                if not mask.all():
                    position = position.filter(mask)
                    batch = replace(batch, frame=batch.frame.filter(mask), position=position)
            newest = _advanced(position, None if stored is None else stored.last)
            advanced = {} if newest is None else {scoped: _Stored(position.identity, position.generation, newest)}
            last.update(advanced)
            kept.append((batch, Update(advanced, {key: position.generation} if starts_over else {})))
        return kept

    def store(self, update: Update) -> None:
        """Write ``update``; call it inside the transaction that stores the records."""
        if update.empty:
            return
        for key in update.reset:
            self._db.execute("DELETE FROM positions WHERE key = ?", (key,))
        now = time.time()
        self._db.executemany(
            "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?, ?, ?)",
            [(key, scope, s.identity, s.generation, _encode(s.last), now) for (key, scope), s in update.last.items()])

    def stored(self, update: Update) -> None:
        """Take ``update`` as written (after its transaction committed)."""
        for key, generation in update.reset.items():
            self._cache = {k: v for k, v in self._cache.items() if k[0] != key}
            self._generations[key] = generation
        self._cache.update(update.last)
