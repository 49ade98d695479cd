"""The ``sql`` receiver's stream reader: a poll runs the stream's query (as Arrow through
ADBC on PostgreSQL, else through SQLAlchemy), hands the result on in ``chunk_size`` chunks
and advances the state; with ``lag`` it reads the window behind the newest timestamp again
and drops the rows delivered already, with ``commit_fence`` it holds back the rows of
transactions newer than the oldest still open (``docs/sql.md``)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from connectors.receivers import _sql_cursor
from connectors.receivers._sql_cursor import (
    FENCE_QUERY,
    LAG_WINDOW,
    OLDEST_OPEN_QUERY,
    Deadline,
    PollTally,
    QueryError,
    QueryTimeout,
    as_datetime,
    like,
    sockets_to,
)
from connectors.receivers._sql_text import as_text, limit, with_literals
from dataflows.sdk import Batch, Position, StreamReader

if TYPE_CHECKING:
    import sqlalchemy as sa

    from connectors.receivers.sql import SqlReceiver, SqlStream


class ArrowDriverError(RuntimeError):
    """A PostgreSQL error from ADBC, worded as SQLAlchemy words a DBAPI error (and as
    FactoryTX's markers show it): ``(adbc_driver_manager.OperationalError) message``."""

    @classmethod
    def of(cls, exc: Exception) -> ArrowDriverError:
        """The error for an ``adbc_driver_manager.Error``."""
        return cls(f"({type(exc).__module__}.{type(exc).__qualname__}) {exc}")


def _plain_arrow(data_type: Any) -> bool:
    """Whether a column of this Arrow type reads into polars as the SQLAlchemy path reads
    it (after :func:`_as_sqlalchemy_types`)."""
    import pyarrow as pa

    return (pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
            or pa.types.is_boolean(data_type) or pa.types.is_string(data_type)
            or pa.types.is_large_string(data_type) or pa.types.is_binary(data_type)
            or pa.types.is_large_binary(data_type) or pa.types.is_timestamp(data_type)
            or pa.types.is_date32(data_type) or pa.types.is_time64(data_type))


def _as_sqlalchemy_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Integers as Int64 and floats as Float64, as polars infers them from Python values."""
    casts = {name: pl.Int64 for name, dtype in frame.schema.items() if dtype.is_integer() and dtype != pl.Int64}
    casts |= {name: pl.Float64 for name, dtype in frame.schema.items() if dtype == pl.Float32}
    return frame.cast(casts) if casts else frame  # type: ignore[arg-type]


def _arrow_chunks(reader: Any, chunk_size: int) -> Iterator[pl.DataFrame]:
    """The record batches of ``reader`` (a ``pyarrow.RecordBatchReader``) as frames of
    ``chunk_size`` rows (the last one shorter)."""
    import pyarrow as pa

    pending: list[Any] = []
    rows = 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows >= chunk_size:
            table = pa.Table.from_batches(pending, schema=reader.schema)
            yield _as_sqlalchemy_types(pl.from_arrow(table.slice(0, chunk_size)))  # type: ignore[arg-type]
            rest = table.slice(chunk_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield _as_sqlalchemy_types(pl.from_arrow(pa.Table.from_batches(pending, schema=reader.schema)))  # type: ignore[arg-type]


def _utc(column: pl.Series) -> pl.Series | None:
    """A timestamp column as UTC without a zone (text parsed as ISO-8601; naive values taken
    as UTC), or None when it holds no timestamps."""
    if column.dtype == pl.String:
        column = column.str.to_datetime(strict=False, time_unit="us")
    if column.dtype == pl.Date:
        column = column.cast(pl.Datetime("us"))
    if not isinstance(column.dtype, pl.Datetime):
        return None
    if column.dtype.time_zone is not None:
        column = column.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return column.cast(pl.Datetime("us"))


class SqlStreamReader(StreamReader):
    """One ``sql`` stream's reads (:class:`~dataflows.sdk.StreamReader`): each :meth:`read`
    hands on one chunk of at most ``chunk_size`` rows as a batch. Its state (snapshot) is a
    dict of the state fields' values as the database returns them, plus, with ``lag``, the
    keys delivered within it under :data:`~connectors.receivers._sql_cursor.LAG_WINDOW`.
    Failures it retries raise SQLAlchemy's errors, ``OSError``, :class:`QueryError`,
    :class:`QueryTimeout` or :class:`ArrowDriverError`."""

    marker_category = "query"
    failure_text = "Query failed"

    def __init__(self, receiver: SqlReceiver, stream: SqlStream, engine: sa.Engine,
                 resume_state: dict[str, Any] | None, sqlite_file: str | None = None,
                 arrow_url: str | None = None) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.retryable = (sa.exc.SQLAlchemyError, OSError, QueryError, QueryTimeout)
        self._arrow_url = arrow_url
        self._arrow_close: Callable[[], None] | None = None
        self._arrow_fd: int | None = None  # the socket of ADBC's connection, when known
        if arrow_url is not None:
            self.retryable += (ArrowDriverError,)
        self._receiver = receiver
        self._stream = stream
        self._engine = engine
        self._fields = {f.column_name: f for f in stream.state_fields}
        self._settings = receiver.incremental(stream)
        self._lag = timedelta(seconds=self._settings.lag) if self._settings.lag else None
        timestamps = [f.column_name for f in stream.state_fields if f.data_type == "timestamp"]
        self._ts = timestamps[0] if self._lag is not None and timestamps else None
        self._window: pl.DataFrame | None = None  # primary key + timestamp delivered within lag
        self._state = self._reconcile(resume_state)
        self._sqlite_file = sqlite_file if sqlite_file not in (None, "", ":memory:") else None
        self._conn: sa.Connection | None = None
        self._chunks: Iterator[pl.DataFrame] | None = None
        self._fence: int | None = None  # this poll's commit fence
        self._held_since: datetime | None = None  # when the fence began holding rows back
        self._held_reported = False
        self._poll = PollTally()
        self._limit_reported = False
        grace = receiver.query_timeout + _sql_cursor.CLIENT_GRACE if receiver.query_timeout else 0
        postgres = engine.dialect.name == "postgresql"
        self._deadline = Deadline(grace if postgres else 0, self._socket, _sql_cursor.CLIENT_GRACE)

    def _socket(self) -> int | None:
        """The socket of the connection in use (ADBC's or psycopg's), or None."""
        if self._arrow_fd is not None:
            return self._arrow_fd
        conn = self._conn
        if conn is None or conn.closed:
            return None
        with contextlib.suppress(Exception):
            return int(conn.connection.dbapi_connection.fileno())  # type: ignore[union-attr]
        return None

    def _reconcile(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """The state to start from: the saved values of the configured ``state_fields``; a
        field added since the state was saved starts at its ``initial_value``, one removed
        from the config is dropped (both logged). The keys delivered within ``lag`` come
        back too, when ``lag`` is still set."""
        fields = self._fields
        if saved is None:
            return {name: f.initial() for name, f in fields.items()}
        saved = dict(saved)
        window = saved.pop(LAG_WINDOW, None)
        if self._lag is not None and isinstance(window, pl.DataFrame) \
                and set(window.columns) == {*self._settings.primary_key, self._ts}:
            self._window = window
        log = logging.getLogger(f"receiver.{self._receiver.data_receiver_name}")
        state = {}
        for name, state_field in fields.items():
            if name in saved:
                state[name] = saved[name]
            else:
                state[name] = state_field.initial()
                log.info("%s: state field %r is new since the state was saved: it starts at %r",
                         self._stream.key, name, state[name])
        for name in saved.keys() - fields.keys():
            log.info("%s: state field %r is no longer configured: its saved value %r is dropped",
                     self._stream.key, name, saved[name])
        return state

    def _binds(self) -> dict[str, Any]:
        """The query's bind values: the state; with ``lag``, the timestamp ``lag`` seconds
        behind the newest delivered (not before its ``initial_value``) and every other state
        field at its ``initial_value``, so the poll reads the whole window again."""
        if self._lag is None:
            return dict(self._state)
        assert self._ts is not None
        binds = {name: f.initial() for name, f in self._fields.items()}
        newest = self._state[self._ts]
        behind = as_datetime(newest) - self._lag
        binds[self._ts] = like(max(behind, as_datetime(binds[self._ts])), newest)
        return binds

    def read(self) -> tuple[list[Batch], bool]:
        if self._chunks is None:
            if self._sqlite_file is not None and not os.path.exists(self._sqlite_file):
                # sqlite3 would create an empty database there and fail with "no such table"
                raise FileNotFoundError(f"the SQLite database file {self._sqlite_file!r} does not exist")
            self._poll = PollTally()
            if self._settings.commit_fence:
                self._fence = self._read_fence()
            if self._arrow_url is not None:
                self._chunks = self._arrow_result()
            if self._chunks is None:  # not PostgreSQL, or a column without a plain Arrow type
                with self._deadline.guard("connecting"):
                    self._conn = self._engine.connect().execution_options(
                        stream_results=True, max_row_buffer=self._receiver.chunk_size)
                with self._deadline.guard("running the query"):
                    self._chunks = pl.read_database(
                        self._sa.text(as_text(self._stream.query)), self._conn, iter_batches=True,
                        batch_size=self._receiver.chunk_size,
                        execute_options={"parameters": self._binds()})
        frame = self._next_chunk()
        if frame is None or frame.height == 0:
            self._end_of_poll()
            self.abandon()
            return [], False
        held = False
        if self._fence is not None:
            frame, held = self._settled(frame)
        if self._lag is not None:
            frame = self._new_rows(frame)
        elif frame.height:
            self._state = self._advance(frame)
        if held:  # the rest of the result waits for older transactions: read it next poll
            self.abandon()
        if frame.height == 0:
            return [], not held
        batch = Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._stream.query,
                      position=self._position(frame))
        return [batch], not held

    def _position(self, frame: pl.DataFrame) -> Position | None:
        """Each row's position, which tells a transmit which rows it stored before a crash
        (``docs/delivery.md``): its cursor values (the state fields, in their order); with
        ``lag``, its timestamp (UTC) and ``primary_key``, known within ``lag`` seconds of
        the newest. None when the timestamp column cannot be read as one."""
        if self._lag is None:
            return Position("", frame.select([pl.col(self._column(frame, name)).alias(name) for name in self._state]))
        assert self._ts is not None
        stamp = _utc(frame.get_column(self._column(frame, self._ts)))
        if stamp is None:
            return None
        keys = [pl.col(self._column(frame, name)).alias(name) for name in self._settings.primary_key]
        return Position("", frame.select(stamp.alias(self._ts), *keys), lag=self._lag.total_seconds())

    def _next_chunk(self) -> pl.DataFrame | None:
        assert self._chunks is not None
        with self._deadline.guard("reading the result"):
            if self._arrow_close is None:
                return next(self._chunks, None)
            import adbc_driver_manager

            try:
                return next(self._chunks, None)
            except adbc_driver_manager.Error as exc:
                raise ArrowDriverError.of(exc) from exc

    def _first_row(self, query: str, what: str) -> Any:
        """The first row of ``query`` (None if none), on a connection of its own, bounded
        like the stream's query (``what``: the bound's words)."""
        with self._deadline.guard(what):
            self._conn = self._engine.connect()
            try:
                return self._conn.execute(self._sa.text(query)).first()
            finally:
                conn, self._conn = self._conn, None
                conn.close()

    def _read_fence(self) -> int:
        """PostgreSQL's commit fence now: every transaction with a lower id has ended, so no
        row with a lower inserting-transaction id can appear any more."""
        return int(self._first_row(FENCE_QUERY, "reading the commit fence")[0])

    def _settled(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
        """The rows of ``frame`` below this poll's commit fence, and whether any were held
        back (they belong to transactions that ended while an older one is still open). A
        fence held back for ``FENCE_WARN`` seconds gets a warning naming the oldest open
        transaction, and a line in the log when it moves on."""
        assert self._fence is not None
        column = self._column(frame, self._stream.state_fields[0].column_name)
        settled = frame.filter(pl.col(column) < self._fence)
        if settled.height == frame.height:
            if self._held_reported:  # the warning's episode ends
                logging.getLogger(f"receiver.{self._receiver.data_receiver_name}").info(
                    "%s: the commit fence moved past %d: the rows held back are delivered",
                    self._stream.key, self._fence)
            self._held_since, self._held_reported = None, False
            return frame, False
        now = datetime.now(UTC)
        self._held_since = self._held_since or now
        if not self._held_reported and (now - self._held_since).total_seconds() >= _sql_cursor.FENCE_WARN:
            self._held_reported = True
            self.report_warning(
                f"the commit fence has held rows back for {(now - self._held_since).total_seconds():.0f} s: "
                f"{frame.height - settled.height} rows of transactions from id {self._fence} on wait until "
                f"every older transaction ends ({self._oldest_open()}); they are delivered then")
        return settled, True

    def _oldest_open(self) -> str:
        """The oldest transaction still open, in words (what the server lets this user see)."""
        try:
            row = self._first_row(OLDEST_OPEN_QUERY, "looking at pg_stat_activity")
        except (self._sa.exc.SQLAlchemyError, QueryTimeout, OSError) as exc:
            return f"pg_stat_activity could not be read: {exc}"
        if row is None:
            return "none open now"
        pid, xid, started, state, query = row
        since = f"since {started.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, " if started else ""
        return f"the oldest is transaction {xid}, server process {pid}, {since}{state or 'state hidden'}: " \
               f"{query!r}" if query else f"the oldest is transaction {xid}, server process {pid}"

    def _column(self, frame: pl.DataFrame, name: str) -> str:
        """The result column of a state or key column: the same name, else one that differs
        only in case (PostgreSQL folds names to lower case).

        :raises QueryError: no such column.
        """
        if name in frame.columns:
            return name
        for column in frame.columns:
            if column.lower() == name.lower():
                return column
        raise QueryError(f"column {name!r} is not in the query result (columns: {', '.join(frame.columns)})")

    def _new_rows(self, frame: pl.DataFrame) -> pl.DataFrame:
        """With ``lag``: the rows of ``frame`` not delivered yet (by ``primary_key``, against
        the window of keys delivered within ``lag``), which join the window; the state moves
        to the newest timestamp read, and the window keeps only keys not older than ``lag``
        behind it."""
        assert self._ts is not None
        keys = {name: self._column(frame, name) for name in self._settings.primary_key}
        ts = self._column(frame, self._ts)
        window = self._window
        fresh = frame
        if window is not None and window.height:
            seen = window.select([pl.col(name).cast(frame.schema[column], strict=False).alias(column)
                                  for name, column in keys.items()])
            fresh = frame.join(seen, on=list(keys.values()), how="anti", maintain_order="left")
        self._poll.read(frame.height, fresh.height)
        state = self._advance(frame)
        if as_datetime(state[self._ts]) >= as_datetime(self._state[self._ts]):
            self._state = state
        if fresh.height:
            added = fresh.select([pl.col(column).alias(name) for name, column in keys.items()]
                                 + [pl.col(ts).alias(self._ts)])
            window = added if window is None or not window.height else pl.concat(
                [window.cast(dict(added.schema), strict=False), added], how="vertical")  # type: ignore[arg-type]
        if window is not None:
            newest = self._state[self._ts]
            bound = like(as_datetime(newest) - self._lag, newest)
            column = window[self._ts]
            if column.dtype == pl.String or isinstance(bound, datetime) and column.dtype.is_temporal():
                window = window.filter(pl.col(self._ts).is_null() | (pl.col(self._ts) >= bound))
            self._window = window
        return fresh

    def _end_of_poll(self) -> None:
        """With ``lag``: a result as long as the query's ``LIMIT`` that held no new row means
        the rows within ``lag`` fill the ``LIMIT``: the stream cannot advance, which gets a
        warning (once until a row is new again)."""
        if self._lag is None or self._poll.new or not self._poll.rows:
            self._limit_reported = self._limit_reported and not self._poll.new
            return
        rows = limit(self._stream.query)
        if rows is not None and self._poll.rows >= rows and not self._limit_reported:
            self._limit_reported = True
            self.report_warning(
                f"the query's LIMIT {rows} is filled by rows delivered already within lag "
                f"({self._settings.lag:g} s), so the stream cannot advance past {self._state[self._ts]!r}: "  # type: ignore[index]
                "raise the LIMIT above the rows written within lag, or lower lag")

    def _arrow_result(self) -> Iterator[pl.DataFrame] | None:
        """Run the query through ADBC: its result in chunks, or None when a column has no
        plain Arrow type (the stream then reads through SQLAlchemy from now on).

        :raises ArrowDriverError: the connection or the query failed (retried).
        """
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        assert self._arrow_url is not None
        port = self._engine.url.port or 5432
        before = sockets_to(port)
        try:
            connection = adbc.connect(self._arrow_url)
        except adbc_driver_manager.Error as exc:
            raise ArrowDriverError.of(exc) from exc
        new = sockets_to(port) - before  # libpq's socket, unless another thread connected meanwhile
        self._arrow_fd = next(iter(new)) if len(new) == 1 else None
        try:
            with self._deadline.guard("running the query"):
                cursor = connection.cursor()
                cursor.execute(with_literals(self._stream.query, self._binds(), self._engine.dialect))
                reader = cursor.fetch_record_batch()
        except BaseException as exc:
            self._arrow_fd = None
            connection.close()
            if isinstance(exc, adbc_driver_manager.Error):
                raise ArrowDriverError.of(exc) from exc
            raise
        def close() -> None:
            self._arrow_fd = None
            reader.close()
            cursor.close()
            connection.close()

        other = [f"{f.name!r} ({f.metadata.get(b'POSTGRESQL:type', b'?').decode()})" if f.metadata
                 else repr(f.name) for f in reader.schema if not _plain_arrow(f.type)]
        if other:
            close()
            self._arrow_url = None
            logging.getLogger(f"receiver.{self._receiver.data_receiver_name}").info(
                "%s: read through SQLAlchemy, not as Arrow: the result has %s", self._stream.key,
                ", ".join(other))
            return None
        self._arrow_close = close
        return _arrow_chunks(reader, self._receiver.chunk_size)

    def _advance(self, frame: pl.DataFrame) -> dict[str, Any]:
        """The state after ``frame``: the state columns' values in its last row where none is
        NULL. The cursor never moves to NULL: rows with NULL in a state column are handed on,
        reported as bad input (the count per column), and the state stays at the last
        non-NULL values (see ``docs/sql.md`` for query shapes that need no NULL handling).

        :raises QueryError: a state column is not in the result.
        """
        lowered = {name.lower(): name for name in frame.columns}
        names = {}
        for column in self._state:
            name = column if column in frame.columns else lowered.get(column.lower())
            if name is None:
                raise QueryError(f"state column {column!r} is not in the query result "
                                 f"(columns: {', '.join(frame.columns)})")
            names[column] = name
        nulls = {column: frame[name].null_count() for column, name in names.items()}
        if not any(nulls.values()):
            last = frame.row(-1, named=True)
            return {column: last[name] for column, name in names.items()}
        complete = frame.filter(pl.all_horizontal(pl.col(n).is_not_null() for n in names.values()))
        state = dict(self._state)
        if complete.height:
            last = complete.row(-1, named=True)
            state = {column: last[name] for column, name in names.items()}
        counts = ", ".join(f"{count} in {column!r}" for column, count in nulls.items() if count)
        self.report_bad_input(f"rows with NULL in a state column ({counts}) were delivered; the "
                              f"cursor stays at the last non-NULL values {state!r} (see docs/sql.md)")
        return state

    def snapshot(self) -> dict[str, Any]:
        if self._lag is not None and self._window is not None:
            return {**self._state, LAG_WINDOW: self._window}
        return dict(self._state)

    def describe(self) -> str:
        if self._lag is not None and self._window is not None:
            return f"{self._state!r} ({self._window.height} keys delivered within lag)"
        return repr(self._state)

    def abandon(self) -> None:
        self._chunks = None
        if self._arrow_close is not None:
            close, self._arrow_close = self._arrow_close, None
            import adbc_driver_manager

            with contextlib.suppress(adbc_driver_manager.Error, OSError):  # broken: gone with it
                close()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(self._sa.exc.SQLAlchemyError):  # broken: the pool discards it
                conn.close()

    def close(self) -> None:
        self.abandon()
