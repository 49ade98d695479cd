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

Rows that commit out of order (a transaction that takes its timestamp or id and commits
after a later one) are lost by every plain cursor. ``lag`` (seconds) with ``primary_key``
reads the window behind the newest delivered timestamp again at every poll and drops the
rows delivered already (their keys live in the state); PostgreSQL's ``commit_fence``
delivers only rows of transactions older than every transaction still open, with a
cursor on the inserting transaction's id (``docs/sql.md`` says which to use where).

Bounds: connects time out after :data:`CONNECT_TIMEOUT` seconds, statements after
``query_timeout`` (the server's own limit), and a server that stops answering is cut off
by the client ``query_timeout`` plus ``CLIENT_GRACE`` seconds later; TCP keepalives on
PostgreSQL, MySQL and MariaDB.

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

import logging
import socket
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from connectors.receivers import _sql_cursor
from connectors.receivers._sql_reader import SqlStreamReader
from connectors.receivers._sql_text import params
from dataflows.sdk import (
    JsonPath,
    NonEmptyStr,
    Port,
    ReceiverConfig,
    RunContext,
    StreamConfig,
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
        ``statement_timeout``; PyMySQL's read and write timeouts, ``query_timeout`` plus
        ``CLIENT_GRACE``, as MariaDB's own ``max_statement_time`` is set on connect by
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
                client = str(round(query_timeout + _sql_cursor.CLIENT_GRACE))
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
            @sa.event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                if self.database_type == "mssql":
                    if query_timeout:
                        dbapi_connection.timeout = max(1, round(query_timeout))
                    return
                _keepalive(dbapi_connection._sock)
                if self.database_type == "mariadb" and query_timeout:
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
        "state (PostgreSQL, MySQL, MariaDB, SQL Server); a server that does not answer at all is cut "
        "off 10 s later; 0: no limit.", ge=0)] = 600
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
            used = frozenset() if is_placeholder(stream.query) else params(stream.query)
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
                    worker: SqlEngines) -> SqlStreamReader:
        conn = self.connection_for(stream)
        sqlite_file = conn.database_name if conn.database_type == "sqlite" else None
        arrow_url = None
        if conn.database_type == "postgresql":  # libpq's URI, for ADBC
            arrow_url = conn.url(self.query_timeout).set(drivername="postgresql").render_as_string(
                hide_password=False)
        return SqlStreamReader(self, stream, worker.engine(conn), resume_state, sqlite_file, arrow_url)


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


