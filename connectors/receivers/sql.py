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
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
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

#: Seconds past ``query_timeout`` after which a PostgreSQL connection read through SQLAlchemy
#: that has not answered is closed from this side (the server's own ``statement_timeout``
#: answers first when the server runs; a stopped or hung server never answers).
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
        ``statement_timeout``; PyMySQL's read and write timeouts, ``query_timeout`` plus
        :data:`CLIENT_GRACE`, as MariaDB's own ``max_statement_time`` is set on connect by
        :meth:`engine`); 0: no limit."""
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
                client = str(round(query_timeout + CLIENT_GRACE))
                query |= {"read_timeout": client, "write_timeout": client}
        if self.database_type == "postgresql" and self.ssl:
            query["sslmode"] = "require"
        if self.database_type == "mssql":
            query = {"driver": self.odbc_driver, "Encrypt": "yes" if self.ssl else "no"}
        if self.database_type == "sqlite":
            return URL.create("sqlite", database=self.database_name)
        return URL.create(DRIVERS[self.database_type], username=self.username, password=self.password,
                          host=self.host, port=self.port, database=self.database_name, query=query)

    def engine(self, query_timeout: float = 0) -> sa.Engine:
        """A SQLAlchemy engine for this connection with the driver's timeouts (:meth:`url`):
        PostgreSQL opens a connection per poll (``NullPool``: each poll's connect is bounded by
        its connect timeout, where a pooled connection's liveness check on a hung server has
        no bound); MySQL and MariaDB connections send TCP keepalives, and MariaDB's sessions
        cancel a statement after ``query_timeout`` seconds (``max_statement_time``); SQL
        Server's login times out after :data:`CONNECT_TIMEOUT` and its statements after
        ``query_timeout`` seconds (pyodbc's query timeout). Making it does no I/O."""
        import sqlalchemy as sa

        if self.database_type == "postgresql":
            return sa.create_engine(self.url(query_timeout), poolclass=sa.NullPool)
        options: dict[str, Any] = {"pool_pre_ping": True}
        if self.database_type == "mssql":
            options["connect_args"] = {"timeout": CONNECT_TIMEOUT}
        engine = sa.create_engine(self.url(query_timeout), **options)
        if self.database_type in ("mysql", "mariadb", "mssql"):
            database_type = self.database_type

            @sa.event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                if database_type == "mssql":
                    if query_timeout:
                        dbapi_connection.timeout = max(1, round(query_timeout))
                    return
                _keepalive(dbapi_connection._sock)
                if database_type == "mariadb" and query_timeout:
                    with dbapi_connection.cursor() as cursor:
                        cursor.execute(f"SET SESSION max_statement_time = {float(query_timeout)!r}")
        return engine

    def describe(self) -> str:
        """Where this connection goes, without secrets."""
        timeouts = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")
        return self.url().difference_update_query(timeouts).render_as_string(hide_password=True)


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalives on ``sock`` as libpq sends them for PostgreSQL (:data:`KEEPALIVE_IDLE`,
    :data:`KEEPALIVE_INTERVAL`, :data:`KEEPALIVE_COUNT`)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
                          ("TCP_KEEPCNT", KEEPALIVE_COUNT)):
        if hasattr(socket, option):  # Linux; macOS lacks some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


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


_LAG_TEXT = ("Seconds each poll reads again behind the newest timestamp delivered, for rows that "
             "commit late; needs primary_key. 0: none.")
_PRIMARY_KEY_TEXT = ("Columns that identify a row: with lag, rows of the window read again that were "
                     "delivered already are dropped.")
_FENCE_TEXT = ("PostgreSQL: deliver only rows of transactions older than every transaction still open "
               "(the first state field holds the inserting transaction's id, pg_current_xact_id()).")


class SqlStream(StreamConfig, kw_only=True):
    """A query over one database, advanced by its ``state_fields``; ``lag``,
    ``primary_key`` and ``commit_fence`` set here win over the receiver's."""

    query: Annotated[NonEmptyStr, describe("SQL with :name bind parameters, ordered by the state columns.")]
    state_fields: Annotated[list[StateField], describe("Cursor columns.")] = msgspec.field(
        default_factory=list)
    connection_name: Annotated[str | None, describe("Connection to use; the first by default.")] = None
    lag: Annotated[Annotated[float, msgspec.Meta(ge=0)] | None, describe(_LAG_TEXT)] = None
    primary_key: Annotated[list[NonEmptyStr] | None, describe(_PRIMARY_KEY_TEXT)] = None
    commit_fence: Annotated[bool | None, describe(_FENCE_TEXT)] = None


class Incremental(msgspec.Struct, frozen=True):
    """How a stream keeps up with rows that commit out of order (``docs/sql.md``): ``lag``
    seconds read again behind the newest delivered timestamp, deduplicated on
    ``primary_key``; or PostgreSQL's ``commit_fence``."""

    lag: float
    primary_key: tuple[str, ...]
    commit_fence: bool


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


def _limit(query: str) -> int | None:
    """The row limit of ``query``'s last ``LIMIT n``, ``TOP n`` or ``FETCH FIRST n``, if any."""
    from sqlparse import tokens

    words = [(ttype, value) for ttype, value in _tokens(query) if ttype not in tokens.Whitespace
             and ttype not in tokens.Newline]
    found = None
    for (ttype, value), (next_type, next_value) in zip(words, words[1:], strict=False):
        if (ttype in tokens.Keyword or ttype in tokens.Name) and value.upper() in ("LIMIT", "TOP", "FIRST", "NEXT") \
                and next_type in tokens.Literal.Number.Integer:
            found = int(next_value)
    return found


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
    lag: Annotated[float, describe(_LAG_TEXT, ge=0)] = 0
    primary_key: Annotated[list[NonEmptyStr], describe(_PRIMARY_KEY_TEXT)] = msgspec.field(default_factory=list)
    commit_fence: Annotated[bool, describe(_FENCE_TEXT)] = False

    def incremental(self, stream: SqlStream) -> Incremental:
        """``stream``'s ``lag``, ``primary_key`` and ``commit_fence``, its own or the receiver's."""
        return Incremental(
            self.lag if stream.lag is None else stream.lag,
            tuple(self.primary_key if stream.primary_key is None else stream.primary_key),
            self.commit_fence if stream.commit_fence is None else stream.commit_fence)

    def _incremental_violations(self, stream: SqlStream, path: JsonPath, s_path: JsonPath) -> list[Violation]:
        """What is wrong with ``stream``'s ``lag``, ``primary_key`` and ``commit_fence``."""
        out: list[Violation] = []
        settings = self.incremental(stream)
        lag_path = [*s_path, "lag"] if stream.lag is not None else [*path, "lag"]
        fence_path = [*s_path, "commit_fence"] if stream.commit_fence is not None else [*path, "commit_fence"]
        timestamps = [f.column_name for f in stream.state_fields if f.data_type == "timestamp"]
        if settings.lag and not settings.primary_key:
            out.append(error("lag needs primary_key: the columns that identify a row, so that rows read "
                             "again within the lag are not delivered twice", lag_path))
        if settings.lag and len(timestamps) != 1:
            out.append(error(f"lag needs exactly one state field of data_type timestamp (the cursor it "
                             f"reads behind); this stream has {len(timestamps)}", lag_path))
        if settings.commit_fence:
            database_type = self.connection_for(stream).database_type
            if database_type != "postgresql":
                out.append(error(f"commit_fence works on postgresql, not {database_type}: on SQL Server bound a "
                                 "rowversion cursor by MIN_ACTIVE_ROWVERSION() in the query; elsewhere use lag "
                                 "with primary_key (docs/sql.md)", fence_path))
            elif not stream.state_fields or stream.state_fields[0].data_type != "integer":
                out.append(error("commit_fence needs the first state field to be the integer id of the "
                                 "inserting transaction (a column with DEFAULT pg_current_xact_id(), selected "
                                 "as bigint), the first column of ORDER BY", fence_path))
            if settings.lag:
                out.append(error("commit_fence needs no lag: use one of them", fence_path))
        return out

    def violations(self, path: JsonPath) -> list[Violation]:
        out: list[Violation] = []
        names = {c.connection_name for c in self.connections}
        for c_index, conn in enumerate(self.connections):
            c_path = [*path, "connections", c_index]
            if conn.database_type == "sqlite" and not conn.database_name:
                out.append(error("sqlite needs database_name (the database file path)", c_path))
        for s_index, stream in enumerate(self.streams):
            s_path = [*path, "streams", s_index]
            out += self._incremental_violations(stream, path, s_path)
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
                self._engines[index] = conn.engine(self._receiver.query_timeout)
                logging.getLogger(f"receiver.{self._receiver.data_receiver_name}").info(
                    "database %s", conn.describe())
            return self._engines[index]


class QueryError(RuntimeError):
    """A query ran but its result cannot advance the stream's state."""


class QueryTimeout(RuntimeError):
    """The database did not answer within ``query_timeout`` plus :data:`CLIENT_GRACE`
    seconds, so this side closed the connection (retried)."""


class ArrowDriverError(RuntimeError):
    """A PostgreSQL error from ADBC, worded as SQLAlchemy words a DBAPI error (and as
    FactoryTX's markers show it): ``(adbc_driver_manager.OperationalError) message``."""

    @classmethod
    def of(cls, exc: Exception) -> ArrowDriverError:
        """The error for an ``adbc_driver_manager.Error``."""
        return cls(f"({type(exc).__module__}.{type(exc).__qualname__}) {exc}")


class _Deadline:
    """A bound on one blocking call of a stream's thread: after ``seconds`` a timer shuts
    down the socket ``fd_of()`` names, so a call waiting on a server that stopped answering
    (SIGSTOPped, hung; its kernel still acknowledges, so no keepalive fails) returns with
    an error, which :meth:`guard` turns into :class:`QueryTimeout`."""

    def __init__(self, seconds: float, fd_of: Callable[[], int | None]) -> None:
        self._seconds = seconds
        self._fd_of = fd_of
        self._lock = threading.Lock()  # the timer shuts down only while the call runs
        self._fired = False

    def _fire(self) -> None:
        with self._lock:
            fd = self._fd_of()
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
        timer = threading.Timer(self._seconds, self._fire)
        timer.daemon = True
        self._fired = False
        timer.start()
        try:
            yield
        except Exception as exc:
            if self._fired:
                raise QueryTimeout(f"no answer from the database for {self._seconds:g} s ({what}; "
                                   f"query_timeout plus {CLIENT_GRACE:g} s): the connection was closed") from exc
            raise
        finally:
            timer.cancel()
            with self._lock:  # a timer firing now waits for this, then finds no socket
                pass


def _sockets_to(port: int) -> set[int]:
    """The file descriptors of this process's TCP connections to ``port``: a connection made
    by a C library (ADBC's libpq) is found as the one that was not there before."""
    import psutil

    return {c.fd for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr[1] == port}


def _as_datetime(value: Any) -> datetime:
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


def _like(value: datetime, example: Any) -> Any:
    """``value`` in the form of ``example``: ISO text for text (the same separator, whole
    seconds unless ``example`` has a fraction: cut down, so a bound never passes a row),
    else a datetime with or without a zone as ``example`` has."""
    if isinstance(example, str):
        sep = "T" if "T" in example else " "
        return value.isoformat(sep=sep, timespec="microseconds" if "." in example else "seconds")
    if isinstance(example, datetime) and example.tzinfo is not None:
        return value.replace(tzinfo=UTC)
    return value


class _SqlStreamReader(StreamReader):
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
        self._poll = _PollTally()
        self._limit_reported = False
        grace = receiver.query_timeout + CLIENT_GRACE if receiver.query_timeout else 0
        postgres = engine.dialect.name == "postgresql"
        self._deadline = _Deadline(grace if postgres else 0, self._socket)

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
        behind = _as_datetime(newest) - self._lag
        binds[self._ts] = _like(max(behind, _as_datetime(binds[self._ts])), newest)
        return binds

    def read(self) -> tuple[list[Batch], bool]:
        if self._chunks is None:
            if self._sqlite_file is not None and not os.path.exists(self._sqlite_file):
                # sqlite3 would create an empty database there and fail with "no such table"
                raise FileNotFoundError(f"the SQLite database file {self._sqlite_file!r} does not exist")
            self._poll = _PollTally()
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
                        self._sa.text(_as_text(self._stream.query)), self._conn, iter_batches=True,
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
        batch = Batch(self._receiver.data_receiver_name, self._stream.key, frame, self._stream.query)
        return [batch], not held

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

    def _read_fence(self) -> int:
        """PostgreSQL's commit fence now: every transaction with a lower id has ended, so no
        row with a lower inserting-transaction id can appear any more."""
        with self._deadline.guard("reading the commit fence"):
            self._conn = self._engine.connect()
            try:
                return int(self._conn.execute(self._sa.text(FENCE_QUERY)).scalar_one())
            finally:
                conn, self._conn = self._conn, None
                conn.close()

    def _settled(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
        """The rows of ``frame`` below this poll's commit fence, and whether any were held
        back (they belong to transactions that ended while an older one is still open). A
        fence held back for :data:`FENCE_WARN` seconds gets a warning naming the oldest
        open transaction."""
        assert self._fence is not None
        column = self._column(frame, self._stream.state_fields[0].column_name)
        settled = frame.filter(pl.col(column) < self._fence)
        if settled.height == frame.height:
            if self._held_since is not None:
                logging.getLogger(f"receiver.{self._receiver.data_receiver_name}").info(
                    "%s: the commit fence moved past %d: the rows held back are delivered",
                    self._stream.key, self._fence)
            self._held_since, self._held_reported = None, False
            return frame, False
        now = datetime.now(UTC)
        self._held_since = self._held_since or now
        if not self._held_reported and (now - self._held_since).total_seconds() >= FENCE_WARN:
            self._held_reported = True
            self.report_warning(
                f"the commit fence has held rows back for {(now - self._held_since).total_seconds():.0f} s: "
                f"{frame.height - settled.height} rows of transactions from id {self._fence} on wait until "
                f"every older transaction ends ({self._oldest_open()}); they are delivered then")
        return settled, True

    def _oldest_open(self) -> str:
        """The oldest transaction still open, in words (what the server lets this user see)."""
        try:
            with self._deadline.guard("looking at pg_stat_activity"):
                self._conn = self._engine.connect()
                try:
                    row = self._conn.execute(self._sa.text(OLDEST_OPEN_QUERY)).first()
                finally:
                    conn, self._conn = self._conn, None
                    conn.close()
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
        if _as_datetime(state[self._ts]) >= _as_datetime(self._state[self._ts]):
            self._state = state
        if fresh.height:
            added = fresh.select([pl.col(column).alias(name) for name, column in keys.items()]
                                 + [pl.col(ts).alias(self._ts)])
            window = added if window is None or not window.height else pl.concat(
                [window.cast(dict(added.schema), strict=False), added], how="vertical")  # type: ignore[arg-type]
        if window is not None:
            newest = self._state[self._ts]
            bound = _like(_as_datetime(newest) - self._lag, newest)
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
        limit = _limit(self._stream.query)
        if limit is not None and self._poll.rows >= limit and not self._limit_reported:
            self._limit_reported = True
            self.report_warning(
                f"the query's LIMIT {limit} is filled by rows delivered already within lag "
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
        before = _sockets_to(port)
        try:
            connection = adbc.connect(self._arrow_url)
        except adbc_driver_manager.Error as exc:
            raise ArrowDriverError.of(exc) from exc
        new = _sockets_to(port) - before  # libpq's socket, unless another thread connected meanwhile
        self._arrow_fd = next(iter(new)) if len(new) == 1 else None
        try:
            with self._deadline.guard("running the query"):
                cursor = connection.cursor()
                cursor.execute(_with_literals(self._stream.query, self._binds(), self._engine.dialect))
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


class _PollTally:
    """What one poll's result held: rows read, and rows new (not delivered within lag)."""

    def __init__(self) -> None:
        self.rows = 0
        self.new = 0

    def read(self, rows: int, new: int) -> None:
        """Count one chunk."""
        self.rows += rows
        self.new += new
