"""The ``sql`` receiver: incremental queries over SQLAlchemy 2.

Each stream runs its ``query`` with named bind parameters (``:timestamp``) taken from
its state, reads the result in chunks of ``chunk_size`` rows through a server-side
cursor (so a first poll over millions of rows never holds them all), hands each chunk
on as one batch and advances its state to the state columns' values in the chunk's
last row. The query must ``ORDER BY`` the state columns.

Equal-timestamp hazard: with ``WHERE timestamp > :timestamp`` a restart, or a row
inserted later with a timestamp equal to the last one delivered, loses rows that share
that timestamp. A composite cursor is safe (``docs/sql.md``)::

    SELECT * FROM t
    WHERE timestamp > :timestamp OR (timestamp = :timestamp AND id > :id)
    ORDER BY timestamp, id

with ``state_fields`` for both ``timestamp`` and ``id``.

Drivers: ``mssql`` through pyodbc (``odbc_driver``, "ODBC Driver 18 for SQL Server" by
default; "FreeTDS" accepted), ``postgresql`` through psycopg 3, ``mysql`` and ``mariadb``
through PyMySQL, ``sqlite`` with ``database_name`` as the file path.

PostgreSQL results are fetched as Arrow through ADBC's PostgreSQL driver (a binary
``COPY`` streamed in batches, the state's values as literals; no Python object per
value), cut into ``chunk_size`` rows, with the same polars
types the SQLAlchemy path gives (integers as Int64, floats as Float64). A stream whose
result has a column of another type (NUMERIC, JSON, UUID, INTERVAL, arrays) is read
through SQLAlchemy instead, which says so once in the log.

Implements the SQL receiver of ``shared/specs/factorytx-digest.md`` and the quickstart's
``sql`` receiver in ``shared/specs/factorytx-demo-and-rest-api.txt``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
import polars as pl

from dataflows.sdk import (
    Batch,
    JsonPath,
    NonEmptyStr,
    Port,
    ReceiverConfig,
    RunContext,
    StreamConfig,
    StreamReader,
    Template,
    Violation,
    describe,
    error,
    is_placeholder,
    receivers,
    warning,
)

if TYPE_CHECKING:  # SQLAlchemy loads when a stream opens, not when the config does
    import sqlalchemy as sa
    from sqlalchemy.engine import URL

DRIVERS = {
    "mssql": "mssql+pyodbc",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "sqlite": "sqlite",
}
DATA_TYPES = ("timestamp", "integer", "float", "string")
#: Seconds a connection attempt may take before it fails (and is retried with backoff).
CONNECT_TIMEOUT = 10
#: TCP keepalive (libpq): a connection idle this many seconds is probed, every
#: ``KEEPALIVE_INTERVAL`` seconds, and dropped after ``KEEPALIVE_COUNT`` unanswered probes,
#: so a server that went away (power loss, a cut cable) fails the read instead of hanging it.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3

#: First-run values of state fields without an ``initial_value``: below any real value.
DEFAULT_INITIAL: dict[str, Any] = {
    "timestamp": datetime(1900, 1, 1),
    "integer": -(2**63),
    "float": -1.7976931348623157e308,
    "string": "",
}


class SqlConnection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How to reach one database."""

    database_type: Annotated[str, describe("The database.", choices=list(DRIVERS))]
    host: Annotated[str | None, describe("Hostname or IP address of the server.")] = None
    port: Annotated[Port | None, describe("TCP port of the server.")] = None
    username: Annotated[str | None, describe("User to log in as.")] = None
    password: Annotated[str | None, describe("Password of the user.", secret=True)] = None
    database_name: Annotated[str | None, describe("Database; for sqlite, the file path.")] = None
    ssl: Annotated[bool, describe("Encrypt the connection.")] = False
    connection_name: Annotated[str | None, describe("Name streams use to pick this connection.")] = None
    odbc_driver: Annotated[str, describe("ODBC driver name for mssql.")] = "ODBC Driver 18 for SQL Server"

    def url(self, query_timeout: float = 0) -> URL:
        """The SQLAlchemy URL (password included; never log it, log :meth:`describe` instead),
        with the driver's timeouts: a connect timeout (:data:`CONNECT_TIMEOUT`), TCP
        keepalives (PostgreSQL) and ``query_timeout`` seconds per statement (PostgreSQL's
        ``statement_timeout``; PyMySQL's read and write timeouts); 0: no limit."""
        from sqlalchemy.engine import URL

        query: dict[str, str] = {}
        if self.database_type == "postgresql":
            query |= {"connect_timeout": str(CONNECT_TIMEOUT), "keepalives": "1",
                      "keepalives_idle": str(KEEPALIVE_IDLE), "keepalives_interval": str(KEEPALIVE_INTERVAL),
                      "keepalives_count": str(KEEPALIVE_COUNT)}
            if query_timeout:
                query["options"] = f"-cstatement_timeout={round(query_timeout * 1000)}"  # no space: URIs
        if self.database_type in ("mysql", "mariadb"):
            query["connect_timeout"] = str(CONNECT_TIMEOUT)
            if query_timeout:
                query |= {"read_timeout": str(round(query_timeout)), "write_timeout": str(round(query_timeout))}
        if self.database_type == "postgresql" and self.ssl:
            query["sslmode"] = "require"
        if self.database_type == "mssql":
            query = {"driver": self.odbc_driver, "Encrypt": "yes" if self.ssl else "no"}
        if self.database_type == "sqlite":
            return URL.create("sqlite", database=self.database_name)
        return URL.create(DRIVERS[self.database_type], username=self.username, password=self.password,
                          host=self.host, port=self.port, database=self.database_name, query=query)

    def describe(self) -> str:
        """Where this connection goes, without secrets."""
        timeouts = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")
        return self.url().difference_update_query(timeouts).render_as_string(hide_password=True)


class StateField(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One column of a stream's cursor."""

    column_name: Annotated[NonEmptyStr, describe("Result column, also the bind parameter :name.")]
    data_type: Annotated[str, describe("Type of the column's values.", choices=DATA_TYPES)]
    initial_value: Annotated[str | int | float | None, describe("Value on the first run.")] = None

    def initial(self) -> Any:
        """The typed first-run value.

        :raises ValueError: ``initial_value`` does not parse as ``data_type``.
        """
        value = self.initial_value
        if value is None:
            return DEFAULT_INITIAL[self.data_type]
        if self.data_type == "timestamp":
            return datetime.fromisoformat(str(value))
        if self.data_type == "integer":
            if isinstance(value, float):
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if self.data_type == "float":
            return float(value)
        return str(value)


class SqlStream(StreamConfig, kw_only=True):
    """A query over one database, advanced by its ``state_fields``."""

    query: Annotated[NonEmptyStr, describe("SQL with :name bind parameters, ordered by the state columns.")]
    state_fields: Annotated[list[StateField], describe("Cursor columns.")] = msgspec.field(
        default_factory=list)
    connection_name: Annotated[str | None, describe("Connection to use; the first by default.")] = None


@functools.lru_cache(maxsize=256)  # a stream's query is the same at every poll
def _tokens(query: str) -> tuple[tuple[Any, str], ...]:
    """``query``'s lexical tokens (sqlparse's lexer): string literals, quoted names and
    comments come whole, so a ``:name`` inside them is not a bind parameter."""
    import sqlparse

    return tuple(sqlparse.lexer.tokenize(query))


def _params(query: str) -> frozenset[str]:
    """The names of ``query``'s ``:name`` bind parameters (not ``::type`` casts, nor a
    ``:name`` inside a string literal, a quoted name or a comment)."""
    from sqlparse import tokens

    return frozenset(value[1:] for ttype, value in _tokens(query)
                     if ttype in tokens.Name.Placeholder and value.startswith(":") and value[1:2] != ":")


def _as_text(query: str) -> str:
    """``query`` for SQLAlchemy's ``text()``: a colon inside a string literal, a quoted name
    or a comment is escaped (``\\:``), so ``text()`` binds only the real parameters."""
    from sqlparse import tokens

    return "".join(value.replace(":", "\\:") if ttype in tokens.Literal or ttype in tokens.Comment else value
                   for ttype, value in _tokens(query))


def _with_literals(query: str, values: dict[str, Any], dialect: Any = None) -> str:
    """``query`` with its ``:name`` bind parameters for ``values`` rendered as literals by
    SQLAlchemy's compiler for ``dialect`` (PostgreSQL's by default), and a trailing ``;``
    dropped, so ADBC can stream it with ``COPY (query) TO STDOUT`` (PostgreSQL takes no
    bind parameters there). A ``:name`` inside a string literal or a comment stays as it is.
    The literals are untyped (``'2024-01-01 00:00:00'``): PostgreSQL gives them the type of
    the column they are compared with, as the state's ``WHERE ts > :ts`` does."""
    import sqlalchemy as sa

    if dialect is None:
        from sqlalchemy.dialects import postgresql

        dialect = postgresql.dialect()
    used = _params(query)
    clause = sa.text(_as_text(query)).bindparams(**{k: v for k, v in values.items() if k in used})
    rendered = str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return rendered.strip().rstrip(";").rstrip()


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


@receivers.register
class SqlReceiver(ReceiverConfig[SqlStream, "SqlEngines"], tag="sql", kw_only=True):
    """Polls SQL databases (mssql, postgresql, mysql, mariadb, sqlite) with incremental queries."""

    title: ClassVar[str] = "SQL"
    template: ClassVar[Template] = Template(
        "SQL", "A template for collecting data from a SQL server", {
            "data_receiver_name": "receiver_0", "protocol": "sql", "poll_interval": 10,
            "connections": [{
                "host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
                "port": 5432,
                "username": "<Please input the username for login>",
                "password": "<Please input the password for login>",
                "database_type": "<Please specify the type of database (e.g. postgresql)>",
                "database_name": "<Please specify the name of the database to access>",
                "ssl": False,
            }],
            "streams": [{
                "asset": "<Please input the asset name (e.g. BoltMech)>",
                "stream_type": "<Please input the stream type (e.g. bolts)>",
                "query": "<Please input the SQL query (e.g. SELECT * FROM boltmech WHERE id > :id "
                         "ORDER BY id ASC LIMIT 100)>",
                "state_fields": [{
                    "column_name": "<Please input the column name (e.g. id)>",
                    "data_type": "<Please input the data type (e.g. integer)>",
                }],
            }],
        }, [{"transform_name": "transform_1", "transform_type": "convert_timestamps",
             "filter_stream": ["*"],
             "field_names": "<Please input the name of the timestamp field (e.g. \"datetime\")>"}])
    example: ClassVar[dict[str, Any]] = {
        "data_receiver_name": "SQL Plugin 1", "protocol": "sql", "poll_interval": 5,
        "connections": [{"database_type": "postgresql", "host": "db.plant.local", "port": 5432,
                         "username": "collector", "password": "${PG_PASSWORD}",
                         "database_name": "mes"}],
        "streams": [{"asset": "lasercut", "stream_type": "cycle",
                     "query": "SELECT * FROM lasercut WHERE timestamp > :timestamp "
                              "OR (timestamp = :timestamp AND id > :id) ORDER BY timestamp, id",
                     "state_fields": [
                         {"column_name": "timestamp", "data_type": "timestamp",
                          "initial_value": "2024-01-01 00:00:00"},
                         {"column_name": "id", "data_type": "integer", "initial_value": 0}]}]}

    connections: Annotated[list[SqlConnection], describe("Databases.", min_length=1)]
    streams: Annotated[list[SqlStream], describe("Queries.", min_length=1)]
    chunk_size: Annotated[int, describe("Rows per batch read from a result.", ge=1)] = 10_000
    query_timeout: Annotated[float, describe(
        "Seconds a query may run before the database cancels it and the stream retries from its "
        "state (PostgreSQL, MySQL, MariaDB); 0: no limit.", ge=0)] = 600

    def violations(self, path: JsonPath) -> list[Violation]:
        out: list[Violation] = []
        names = {c.connection_name for c in self.connections}
        for c_index, conn in enumerate(self.connections):
            c_path = [*path, "connections", c_index]
            if conn.database_type == "sqlite" and not conn.database_name:
                out.append(error("sqlite needs database_name (the database file path)", c_path))
        for s_index, stream in enumerate(self.streams):
            s_path = [*path, "streams", s_index]
            if stream.connection_name is not None and stream.connection_name not in names:
                out.append(error(f"no connection named {stream.connection_name!r}",
                                 [*s_path, "connection_name"]))
            columns = set()
            used = frozenset() if is_placeholder(stream.query) else _params(stream.query)
            for f_index, state_field in enumerate(stream.state_fields):
                f_path = [*s_path, "state_fields", f_index]
                columns.add(state_field.column_name)
                if is_placeholder(state_field.data_type) or is_placeholder(state_field.column_name):
                    continue
                if state_field.data_type in DATA_TYPES:
                    try:
                        state_field.initial()
                    except ValueError as exc:
                        out.append(error(f"initial_value does not parse as {state_field.data_type}: {exc}",
                                         [*f_path, "initial_value"]))
                if not is_placeholder(stream.query) and state_field.column_name not in used:
                    out.append(warning(f"state field {state_field.column_name!r} is never used as "
                                       f":{state_field.column_name} in the query, so the query "
                                       "re-reads rows on every poll", [*f_path, "column_name"]))
            if not is_placeholder(stream.query):
                for unknown in sorted(used - columns):
                    out.append(error(f"query uses :{unknown}, which is not a state_fields column",
                                     [*s_path, "query"]))
        return out

    def connection_for(self, stream: SqlStream) -> SqlConnection:
        """The connection a stream queries."""
        for conn in self.connections:
            if stream.connection_name is not None and conn.connection_name == stream.connection_name:
                return conn
        return self.connections[0]

    def open_worker(self, ctx: RunContext) -> SqlEngines:
        return SqlEngines(self)

    def open_stream(self, stream: SqlStream, resume_state: Any, ctx: RunContext,
                    worker: SqlEngines) -> _SqlStreamReader:
        conn = self.connection_for(stream)
        sqlite_file = conn.database_name if conn.database_type == "sqlite" else None
        arrow_url = None
        if conn.database_type == "postgresql":  # libpq's URI, for ADBC
            arrow_url = conn.url(self.query_timeout).set(drivername="postgresql").render_as_string(
                hide_password=False)
        return _SqlStreamReader(self, stream, worker.engine(conn), resume_state, sqlite_file, arrow_url)


class SqlEngines:
    """The SQLAlchemy engines of one receiver's connections, shared by its streams in one
    process (:meth:`SqlReceiver.open_worker`): one engine (and connection pool) per
    connection, made when its first stream opens. Making one does no I/O."""

    def __init__(self, receiver: SqlReceiver) -> None:
        self._receiver = receiver
        self._engines: dict[int, sa.Engine] = {}
        self._lock = threading.Lock()

    def engine(self, conn: SqlConnection) -> sa.Engine:
        """The engine of ``conn`` (one of the receiver's connections)."""
        index = self._receiver.connections.index(conn)
        with self._lock:
            if index not in self._engines:
                import sqlalchemy as sa

                self._engines[index] = sa.create_engine(conn.url(self._receiver.query_timeout),
                                                        pool_pre_ping=True)
                logging.getLogger(f"receiver.{self._receiver.data_receiver_name}").info(
                    "database %s", conn.describe())
            return self._engines[index]


class QueryError(RuntimeError):
    """A query ran but its result cannot advance the stream's state."""


class ArrowDriverError(RuntimeError):
    """A PostgreSQL error from ADBC, worded as SQLAlchemy words a DBAPI error (and as
    FactoryTX's markers show it): ``(adbc_driver_manager.OperationalError) message``."""

    @classmethod
    def of(cls, exc: Exception) -> ArrowDriverError:
        """The error for an ``adbc_driver_manager.Error``."""
        return cls(f"({type(exc).__module__}.{type(exc).__qualname__}) {exc}")


class _SqlStreamReader(StreamReader):
    marker_category = "query"
    failure_text = "Query failed"

    def __init__(self, receiver: SqlReceiver, stream: SqlStream, engine: sa.Engine,
                 resume_state: dict[str, Any] | None, sqlite_file: str | None = None,
                 arrow_url: str | None = None) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.retryable = (sa.exc.SQLAlchemyError, OSError, QueryError)
        self._arrow_url = arrow_url
        self._arrow_close: Callable[[], None] | None = None
        if arrow_url is not None:
            self.retryable += (ArrowDriverError,)
        self._receiver = receiver
        self._stream = stream
        self._engine = engine
        self._state = self._reconcile(resume_state)
        self._sqlite_file = sqlite_file if sqlite_file not in (None, "", ":memory:") else None
        self._conn: sa.Connection | None = None
        self._chunks: Iterator[pl.DataFrame] | None = None

    def _reconcile(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """The state to start from: the saved values of the configured ``state_fields``; a
        field added since the state was saved starts at its ``initial_value``, one removed
        from the config is dropped (both logged)."""
        fields = {f.column_name: f for f in self._stream.state_fields}
        if saved is None:
            return {name: f.initial() for name, f in fields.items()}
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

    def read(self) -> tuple[list[Batch], bool]:
        if self._chunks is None:
            if self._sqlite_file is not None and not os.path.exists(self._sqlite_file):
                # sqlite3 would create an empty database there and fail with "no such table"
                raise FileNotFoundError(f"the SQLite database file {self._sqlite_file!r} does not exist")
            if self._arrow_url is not None:
                self._chunks = self._arrow_result()
            if self._chunks is None:  # not PostgreSQL, or a column without a plain Arrow type
                self._conn = self._engine.connect().execution_options(
                    stream_results=True, max_row_buffer=self._receiver.chunk_size)
                self._chunks = pl.read_database(
                    self._sa.text(_as_text(self._stream.query)), self._conn, iter_batches=True,
                    batch_size=self._receiver.chunk_size,
                    execute_options={"parameters": dict(self._state)})
        frame = self._next_chunk()
        if frame is None or frame.height == 0:
            self.abandon()
            return [], False
        self._state = self._advance(frame)
        batch = Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._stream.query)
        return [batch], True

    def _next_chunk(self) -> pl.DataFrame | None:
        assert self._chunks is not None
        if self._arrow_close is None:
            return next(self._chunks, None)
        import adbc_driver_manager

        try:
            return next(self._chunks, None)
        except adbc_driver_manager.Error as exc:
            raise ArrowDriverError.of(exc) from exc

    def _arrow_result(self) -> Iterator[pl.DataFrame] | None:
        """Run the query through ADBC: its result in chunks, or None when a column has no
        plain Arrow type (the stream then reads through SQLAlchemy from now on).

        :raises ArrowDriverError: the connection or the query failed (retried).
        """
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        assert self._arrow_url is not None
        try:
            connection = adbc.connect(self._arrow_url)
        except adbc_driver_manager.Error as exc:
            raise ArrowDriverError.of(exc) from exc
        try:
            cursor = connection.cursor()
            cursor.execute(_with_literals(self._stream.query, self._state, self._engine.dialect))
            reader = cursor.fetch_record_batch()
        except BaseException as exc:
            connection.close()
            if isinstance(exc, adbc_driver_manager.Error):
                raise ArrowDriverError.of(exc) from exc
            raise
        def close() -> None:
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
        return dict(self._state)

    def describe(self) -> str:
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
