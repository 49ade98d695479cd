"""The sql receiver against a real PostgreSQL (started by the tests) and SQLite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from connectors.receivers._sql_text import limit, params, with_literals
from dataflows.config import load
from dataflows.ledger import Ledger, ledger_path
from dataflows.runtime import PartitionState, RunContext
from dataflows.testing import Clock, StreamDriver
from tests.connectors.conformance import ReceiverHarness, receiver_harness
from tests.flowrun import drain
from tests.services.mariadb import MariaDB
from tests.services.postgres import Postgres, postgres_server
from tests.services.process import free_port

SINGLE = "SELECT * FROM readings WHERE ts > :ts ORDER BY ts"
COMPOSITE = "SELECT * FROM readings WHERE ts > :ts OR (ts = :ts AND id > :id) ORDER BY ts, id"
TS = {"column_name": "ts", "data_type": "timestamp", "initial_value": "2000-01-01 00:00:00"}
ID = {"column_name": "id", "data_type": "integer", "initial_value": 0}


class Database:
    """A database under test: its factoryflow connection and an engine to fill it."""

    def __init__(self, connection: dict[str, Any], url: str) -> None:
        self.connection = connection
        self.engine = sa.create_engine(url)
        timestamp = "DATETIME(6)" if connection["database_type"] == "mariadb" else "TIMESTAMP"
        with self.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS readings"))
            conn.execute(sa.text(f"CREATE TABLE readings (id INTEGER PRIMARY KEY, ts {timestamp}, value FLOAT, "
                                 "note VARCHAR(200))"))

    def insert(self, rows: list[tuple[int, datetime, float]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO readings (id, ts, value) VALUES (:id, :ts, :value)"),
                         [{"id": i, "ts": t, "value": v} for i, t, v in rows])


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "postgresql":
        pg: Postgres = request.getfixturevalue("postgres")
        db = Database(pg.connection(), pg.url)
    elif request.param == "mariadb":
        maria: MariaDB = request.getfixturevalue("mariadb")
        db = Database(maria.connection(), maria.url)
    else:
        path = tmp_path / "plant.sqlite"
        db = Database({"database_type": "sqlite", "database_name": str(path)}, f"sqlite:///{path}")
    yield db
    db.engine.dispose()


def receiver(connection: dict[str, Any], query: str = SINGLE, state_fields: list | None = None,
             chunk_size: int = 10_000, **stream: Any):
    """A ``sql`` receiver of one stream (``stream``: more of its keys, e.g. ``lag``)."""
    doc = {"transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "localfile"}],
           "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "poll_interval": 3,
                              "chunk_size": chunk_size, "connections": [connection],
                              "streams": [{"asset": "line1", "stream_type": "readings", "query": query,
                                           "state_fields": state_fields or [TS], **stream}]}]}
    return load(doc).data_receiver[0]


def slow_stream(connection: dict[str, Any], query: str, home: Path, query_timeout: float) -> StreamDriver:
    """The partition of one stream ``line1:slow`` running ``query`` with ``query_timeout``."""
    doc = {"transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "localfile"}],
           "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "poll_interval": 1,
                              "query_timeout": query_timeout, "connections": [connection],
                              "streams": [{"asset": "line1", "stream_type": "slow", "query": query,
                                           "state_fields": [ID]}]}]}
    return StreamDriver(load(doc).data_receiver[0], RunContext(home=home))


def open_reader(rec, state: Any = None):
    ctx = RunContext(home=Path("/nonexistent"))
    return rec.open_stream(rec.streams[0], state, ctx, rec.open_worker(ctx))


def rows(start: int, count: int, per_timestamp: int = 1) -> list[tuple[int, datetime, float]]:
    base = datetime(2024, 1, 1)
    return [(i, base + timedelta(seconds=i // per_timestamp), float(i)) for i in range(start, start + count)]


def ids(batches: list) -> list[int]:
    return [i for b in batches for i in b.frame["id"].to_list()]


def test_first_poll_then_incremental_polls(database: Database) -> None:
    database.insert(rows(1, 10))
    reader = open_reader(receiver(database.connection))
    batches = drain(reader)
    assert ids(batches) == list(range(1, 11))
    assert batches[0].source == SINGLE and str(batches[0].stream) == "line1:readings"
    # the cursor keeps the value as the database returns it (SQLite keeps timestamps as text)
    expected = "2024-01-01 00:00:10" if database.connection["database_type"] == "sqlite" else \
        datetime(2024, 1, 1, 0, 0, 10)
    assert reader.snapshot() == {"ts": expected}
    assert drain(reader) == []
    database.insert(rows(11, 5))
    assert ids(drain(reader)) == list(range(11, 16))


def test_restart_resumes_from_saved_state(database: Database) -> None:
    database.insert(rows(1, 100))
    first = open_reader(receiver(database.connection, chunk_size=30))
    got = []
    for _ in range(2):
        batches, more = first.read()
        got += ids(batches)
        assert more
    first.close()
    second = open_reader(receiver(database.connection, chunk_size=30), state=first.snapshot())
    got += ids(drain(second))
    assert got == list(range(1, 101))  # every row once


def test_equal_timestamps_need_a_composite_cursor(database: Database) -> None:
    database.insert(rows(1, 1000, per_timestamp=100))  # 10 timestamps, 100 rows each

    def read_with_restarts(query: str, state_fields: list) -> list[int]:
        rec, state, got = receiver(database.connection, query, state_fields, chunk_size=30), None, []
        while True:  # a restart (new reader from the snapshot) after every chunk
            reader = open_reader(rec, state)
            batches, _ = reader.read()
            reader.close()
            if not batches:
                return got
            got += ids(batches)
            state = reader.snapshot()

    composite = read_with_restarts(COMPOSITE, [TS, ID])
    assert composite == list(range(1, 1001))
    single = read_with_restarts(SINGLE, [TS])
    assert len(single) == len(set(single)) < 1000  # the hazard: rows sharing a timestamp are lost


def test_large_first_poll_is_read_in_chunks(postgres: Postgres) -> None:
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS big"))
        conn.execute(sa.text("CREATE TABLE big AS SELECT g AS id, now() AS ts, md5(g::text) AS payload "
                             "FROM generate_series(1, 250000) g"))
    rec = receiver(postgres.connection(), "SELECT * FROM big WHERE id > :id ORDER BY id", [ID])
    reader = open_reader(rec)
    sizes, last = [], 0
    while True:
        batches, more = reader.read()
        for batch in batches:
            sizes.append(batch.frame.height)
            assert batch.frame["id"][0] == last + 1  # in order, nothing skipped
            last = batch.frame["id"][-1]
        if not more:
            break
    assert sizes == [10_000] * 25
    assert reader.snapshot() == {"id": 250_000}
    engine.dispose()


def test_state_columns_match_case_insensitively(postgres: Postgres) -> None:
    db = Database(postgres.connection(), postgres.url)
    db.insert(rows(1, 3))
    rec = receiver(postgres.connection(), "SELECT * FROM readings WHERE ID > :ID ORDER BY ID",
                   [{"column_name": "ID", "data_type": "integer"}])
    reader = open_reader(rec)
    assert ids(drain(reader)) == [1, 2, 3]
    assert reader.snapshot() == {"ID": 3}


def test_bad_query_is_logged_and_retried_with_state_kept(database: Database, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    rec = receiver(database.connection, "SELECT * FROM no_such_table WHERE ts > :ts")
    ctx = RunContext(home=tmp_path, now=Clock(datetime.now(UTC)))
    partition = StreamDriver(rec, ctx)
    with caplog.at_level(logging.ERROR):
        assert partition.next_batch() == []
    assert "line1:readings: read failed (attempt 1, retrying in 3." in caplog.text
    assert "no_such_table" in caplog.text
    assert "Current state: {'ts': datetime.datetime(2000, 1, 1, 0, 0)}" in caplog.text
    assert partition.snapshot() == PartitionState({"ts": datetime(2000, 1, 1)}, 0)
    (marker,) = Ledger(ledger_path(tmp_path)).markers()
    assert (marker.component, marker.component_type, marker.asset, marker.stream_type, marker.category,
            marker.level) == ("db", "Receiver", "line1", "readings", "query", "error")
    assert marker.message.startswith("Query failed: (") and "no_such_table" in marker.message
    assert marker.message.endswith("Current state: {'ts': datetime.datetime(2000, 1, 1, 0, 0)}")


def test_connection_refused_then_recovered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    connection = {"database_type": "postgresql", "host": "127.0.0.1", "port": port, "username": "postgres",
                  "database_name": "postgres"}
    rec = receiver(connection)
    clock = Clock(datetime.now(UTC))
    ctx = RunContext(home=tmp_path, now=clock)
    partition = StreamDriver(rec, ctx)
    caplog.set_level(logging.INFO)
    assert partition.next_batch() == []
    clock.now = partition.next_poll
    assert partition.next_batch() == []
    assert "Connection refused" in caplog.text
    assert partition.next_poll > clock.now + timedelta(seconds=5.9)  # 3 s, then 6 s
    watched = clock.now + timedelta(seconds=1)  # the control store is watched, on a 0.1 s tick
    assert watched <= partition.next_awake() < watched + timedelta(seconds=0.1)
    ledger = Ledger(ledger_path(tmp_path))
    assert [m.level for m in ledger.markers()] == ["error"]
    with postgres_server(port) as server:
        Database(server.connection(), server.url).insert(rows(1, 4))
        clock.now = partition.next_poll
        assert ids(partition.next_batch()) == [1, 2, 3, 4]
        partition.close()
    assert "line1:readings: recovered after 2 failed attempts" in caplog.text
    assert ledger.markers() == []  # cleared once the stream recovers
    assert ledger.received() == {("db", "line1:readings"): 4}
    assert ledger.error_counts() == {("db", "Receiver"): 2}


@pytest.mark.parametrize(("connection", "expected"), [
    ({"database_type": "mssql", "host": "10.0.0.5", "port": 1433, "username": "rexy", "password": "islaNublar93",
      "database_name": "Demo", "ssl": False},
     "mssql+pyodbc://rexy:***@10.0.0.5:1433/Demo?Encrypt=no&driver=ODBC+Driver+18+for+SQL+Server"),
    ({"database_type": "mssql", "host": "db", "username": "u", "password": "p", "database_name": "Demo",
      "ssl": True, "odbc_driver": "FreeTDS"}, "mssql+pyodbc://u:***@db/Demo?Encrypt=yes&driver=FreeTDS"),
    ({"database_type": "postgresql", "host": "db", "port": 5432, "username": "u", "password": "p",
      "database_name": "plant", "ssl": True}, "postgresql+psycopg://u:***@db:5432/plant?sslmode=require"),
    ({"database_type": "mariadb", "host": "db", "username": "u", "database_name": "plant"},
     "mariadb+pymysql://u@db/plant"),
    ({"database_type": "mysql", "host": "db", "username": "u", "database_name": "plant"},
     "mysql+pymysql://u@db/plant"),
])
def test_connection_urls_per_database_type(connection: dict[str, Any], expected: str) -> None:
    conn = receiver(connection).connections[0]
    assert conn.describe() == expected  # the password never appears in what is logged
    assert "islaNublar93" not in conn.describe()


@receiver_harness
class SqlHarness(ReceiverHarness):
    """A table in a SQLite file, read by ``seq``; bad input is the table gone (the query fails)."""

    protocol = "sql"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.path = tmp_path / "conformance.sqlite"
        self.engine = sa.create_engine(f"sqlite:///{self.path}")
        with self.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE readings (seq INTEGER PRIMARY KEY, value FLOAT)"))

    def receiver(self) -> dict[str, Any]:
        return {"data_receiver_name": "conformance", "protocol": "sql", "poll_interval": 1,
                "connections": [{"database_type": "sqlite", "database_name": str(self.path)}],
                "streams": [{"asset": "conformance", "stream_type": "test",
                             "query": "SELECT * FROM readings WHERE seq > :seq ORDER BY seq",
                             "state_fields": [{"column_name": "seq", "data_type": "integer",
                                               "initial_value": -1}]}]}

    def add(self, seqs: range) -> None:
        table = "readings_away" if self._broken() else "readings"
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (:seq, :value)"),
                         [{"seq": s, "value": s / 2} for s in seqs])

    def _broken(self) -> bool:
        return "readings_away" in sa.inspect(self.engine).get_table_names()

    def break_input(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE readings RENAME TO readings_away"))

    def heal(self) -> None:
        if self._broken():
            with self.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE readings_away RENAME TO readings"))

    def close(self) -> None:
        self.engine.dispose()


def test_state_fields_changed_in_the_config_are_reconciled_with_the_saved_state(
        database: Database, caplog: pytest.LogCaptureFixture) -> None:
    database.insert(rows(1, 6, per_timestamp=2))  # ts 0, 1, 1, 2, 2, 3 seconds past the base
    saved = {"ts": datetime(2024, 1, 1, 0, 0, 0), "gone": 7}  # saved under [ts, gone]; now [ts, id]
    caplog.set_level(logging.INFO)
    reader = open_reader(receiver(database.connection, COMPOSITE, [TS, ID]), saved)
    assert reader.snapshot() == {"ts": datetime(2024, 1, 1, 0, 0, 0), "id": 0}
    assert "line1:readings: state field 'id' is new since the state was saved: it starts at 0" in caplog.text
    assert "line1:readings: state field 'gone' is no longer configured: its saved value 7 is dropped" \
        in caplog.text
    assert ids(drain(reader)) == [1, 2, 3, 4, 5, 6]  # :id is bound, the query runs
    assert {k: str(v) for k, v in reader.snapshot().items()} == {"ts": "2024-01-01 00:00:03", "id": "6"}


def test_the_cursor_never_advances_to_null(database: Database) -> None:
    database.insert(rows(1, 4))
    with database.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO readings (id, ts, value) VALUES (5, NULL, 5.0), (6, NULL, 6.0)"))
    query = "SELECT * FROM readings WHERE ts > :ts OR ts IS NULL ORDER BY ts NULLS LAST, id"
    if database.connection["database_type"] == "mariadb":  # no NULLS LAST
        query = "SELECT * FROM readings WHERE ts > :ts OR ts IS NULL ORDER BY ts IS NULL, ts, id"
    reader = open_reader(receiver(database.connection, query))
    assert ids(drain(reader)) == [1, 2, 3, 4, 5, 6]  # the NULL rows are delivered, not lost
    assert str(reader.snapshot()["ts"]) == "2024-01-01 00:00:04"  # never None
    assert reader.take_bad_input() == [(
        "rows with NULL in a state column (2 in 'ts') were delivered; the cursor stays at the last "
        f"non-NULL values {reader.snapshot()!r} (see docs/sql.md)")]
    database.insert(rows(7, 1))
    assert ids(drain(reader)) == [7, 5, 6]  # this query shape re-reads NULL rows: docs/sql.md says why
    assert str(reader.snapshot()["ts"]) == "2024-01-01 00:00:07"


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "plant.sqlite"
    rec = receiver({"database_type": "sqlite", "database_name": str(path)})
    partition = StreamDriver(rec, RunContext(home=tmp_path / "home", now=Clock(datetime.now(UTC))))
    assert partition.next_batch() == []
    (marker,) = Ledger(ledger_path(tmp_path / "home")).markers()
    assert marker.message.startswith(f"Query failed: the SQLite database file {str(path)!r} does not exist")
    assert not path.exists()  # sqlite3 would have created an empty file
    partition.close()


def test_state_values_become_postgresql_literals_for_adbc() -> None:
    query = with_literals("SELECT x::int FROM t WHERE ts > :ts OR (ts = :ts AND id > :id) AND a = :a ;\n",
                           {"ts": datetime(2024, 1, 1, 0, 0, 0, 5), "id": -(2**63), "a": "it's \\"})
    assert query == ("SELECT x::int FROM t WHERE ts > '2024-01-01 00:00:00.000005' OR "
                     "(ts = '2024-01-01 00:00:00.000005' AND id > -9223372036854775808) "
                     "AND a = 'it''s \\'")


def test_a_name_inside_a_string_literal_or_a_comment_is_no_parameter(database: Database) -> None:
    """Only the real ``:ts`` takes the state's value, through ADBC (PostgreSQL) and through
    SQLAlchemy (SQLite): the ``':ts'`` string and the ``:ts`` of the comments stay as written."""
    query = ("SELECT id, ts, ':ts' AS said -- the cursor is :ts\n"
             "FROM readings /* :ts, and :nothing */ WHERE ts > :ts ORDER BY ts")
    assert params(query) == {"ts"}
    assert with_literals(query, {"ts": datetime(2024, 1, 1)}) == (
        "SELECT id, ts, ':ts' AS said -- the cursor is :ts\n"
        "FROM readings /* :ts, and :nothing */ WHERE ts > '2024-01-01 00:00:00' ORDER BY ts")
    rec = receiver(database.connection, query)
    assert rec.violations(["data_receiver", 0]) == []  # ':nothing' in a comment is no parameter
    database.insert(rows(1, 3))
    reader = open_reader(rec)
    batches = drain(reader)
    assert ids(batches) == [1, 2, 3]
    assert [v for b in batches for v in b.frame["said"].to_list()] == [":ts"] * 3
    database.insert(rows(4, 1))
    assert ids(drain(reader)) == [4]  # the cursor moved: the state's value went where :ts is
    reader.close()


PLAIN_TYPES = ("CREATE TABLE plain (id INTEGER PRIMARY KEY, s SMALLINT, b BIGINT, f4 REAL, f8 DOUBLE PRECISION, "
               "txt TEXT, vc VARCHAR(10), bo BOOLEAN, ts TIMESTAMP, tz TIMESTAMPTZ, d DATE, tm TIME, by BYTEA)")


def test_postgresql_reads_as_arrow_with_the_types_sqlalchemy_gives(postgres: Postgres,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS plain"))
        conn.execute(sa.text(PLAIN_TYPES))
        conn.execute(sa.text(
            "INSERT INTO plain SELECT i, i, i * 1000000000000, i / 4.0, i / 3.0, 'text ' || i, 'v' || i, i % 2 = 0, "
            "TIMESTAMP '2024-01-01' + i * INTERVAL '1.5 second', TIMESTAMPTZ '2024-01-01 00:00+02' + i * "
            "INTERVAL '1 hour', DATE '2024-01-01' + i, TIME '00:00' + i * INTERVAL '1 minute', "
            "decode(lpad(to_hex(i), 4, '0'), 'hex') FROM generate_series(1, 25) AS i"))
        conn.execute(sa.text("INSERT INTO plain (id, ts) VALUES (26, TIMESTAMP '2024-01-02')"))  # NULLs
    query = "SELECT * FROM plain WHERE ts > :ts ORDER BY ts"
    rec = receiver(postgres.connection(), query, chunk_size=7)
    reader = open_reader(rec)
    with caplog.at_level(logging.INFO):
        arrow = drain(reader)
    assert "not as Arrow" not in caplog.text
    assert reader._arrow_url is not None  # read through ADBC
    assert [b.frame.height for b in arrow] == [7, 7, 7, 5]
    assert reader.snapshot() == {"ts": datetime(2024, 1, 2)}
    with engine.connect() as conn:
        expected = pl.read_database(sa.text(query), conn, execute_options={"parameters": {"ts": datetime(2000, 1, 1)}})
    got = pl.concat([b.frame for b in arrow])
    assert got.schema == expected.schema | {"tz": got.schema["tz"]}  # a UTC zone by another name
    assert got.schema["tz"].time_zone in ("UTC", "Etc/UTC")
    assert got.to_dicts() == expected.to_dicts()
    engine.dispose()


def test_a_postgresql_result_with_other_types_reads_through_sqlalchemy(postgres: Postgres,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS other"))
        conn.execute(sa.text("CREATE TABLE other (id INTEGER, n NUMERIC(10, 2), j JSONB, u UUID, p INTERVAL)"))
        conn.execute(sa.text("INSERT INTO other VALUES (1, 3.25, '{\"a\": 1}', "
                             "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', INTERVAL '2 minutes')"))
    rec = receiver(postgres.connection(), "SELECT * FROM other WHERE id > :id ORDER BY id", [ID])
    reader = open_reader(rec)
    with caplog.at_level(logging.INFO):
        (batch,) = drain(reader)
    assert "line1:readings: read through SQLAlchemy, not as Arrow: the result has 'n' (numeric), " \
           "'j' (jsonb), 'u' (uuid), 'p' (interval)" in caplog.text
    row = batch.frame.row(0, named=True)
    assert row["n"] == Decimal("3.25") and row["j"] == {"a": 1} and str(row["u"]).startswith("a0eebc99")
    assert row["p"] == timedelta(minutes=2)
    assert reader.snapshot() == {"id": 1}
    engine.dispose()


def test_driver_timeouts_are_in_the_connection_url() -> None:
    rec = receiver({"database_type": "postgresql", "host": "db", "username": "u", "database_name": "plant"})
    query = rec.connections[0].url(rec.query_timeout).query
    assert rec.query_timeout == 600
    assert (query["connect_timeout"], query["keepalives"], query["options"]) == (
        "10", "1", "-cstatement_timeout=600000")
    maria = receiver({"database_type": "mariadb", "host": "db", "username": "u", "database_name": "plant"})
    assert dict(maria.connections[0].url(30).query) == {  # the server's max_statement_time answers first
        "connect_timeout": "10", "read_timeout": "40", "write_timeout": "40"}


@pytest.mark.parametrize("query", [
    "SELECT id FROM (SELECT 1 AS id FROM pg_sleep(3)) AS t WHERE id > :id ORDER BY id",  # Arrow (ADBC)
    "SELECT id, 1.5::numeric AS n FROM (SELECT 1 AS id FROM pg_sleep(3)) AS t WHERE id > :id ORDER BY id",
], ids=["arrow", "sqlalchemy"])
def test_a_query_running_past_query_timeout_is_cancelled_and_retried(
        postgres: Postgres, tmp_path: Path, query: str) -> None:
    partition = slow_stream(postgres.connection(), query, tmp_path, query_timeout=0.5)
    started = datetime.now(UTC)
    assert partition.next_batch() == []
    assert datetime.now(UTC) - started < timedelta(seconds=2.5)  # cancelled, not waited out
    (marker,) = Ledger(ledger_path(tmp_path)).markers()
    assert "canceling statement due to statement timeout" in marker.message, marker.message
    assert partition.snapshot().reader == {"id": 0}  # retried from where it was
    partition.close()


# --- rows that commit late: lag with primary_key, and PostgreSQL's commit fence (issue 26) ---

def violations_of(receiver_doc: dict[str, Any]) -> list[tuple[str, str]]:
    from dataflows.config import validate

    doc = {"transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "localfile"}],
           "data_receiver": [receiver_doc]}
    return [(".".join(map(str, v.json_path)), v.description) for v in validate(doc) if v.level == "error"]


def sql_doc(connection: dict[str, Any], state_fields: list, **keys: Any) -> dict[str, Any]:
    stream = {k: v for k, v in keys.items() if k.startswith("s_")}
    return {"data_receiver_name": "db", "protocol": "sql", "connections": [connection],
            **{k: v for k, v in keys.items() if not k.startswith("s_")},
            "streams": [{"asset": "a", "stream_type": "b", "query": COMPOSITE, "state_fields": state_fields,
                         **{k[2:]: v for k, v in stream.items()}}]}


def test_lag_and_commit_fence_are_refused_where_they_cannot_work() -> None:
    sqlite = {"database_type": "sqlite", "database_name": "/tmp/x.sqlite"}
    pg = {"database_type": "postgresql", "host": "db", "database_name": "mes"}
    no_key = violations_of(sql_doc(sqlite, [TS, ID], s_lag=10))
    assert [path for path, _ in no_key] == ["data_receiver.0.streams.0.lag"]
    assert "lag needs primary_key" in no_key[0][1]
    assert [p for p, _ in violations_of(sql_doc(sqlite, [TS, ID], lag=10))] == ["data_receiver.0.lag"]
    assert violations_of(sql_doc(sqlite, [TS, ID], lag=10, primary_key=["id"])) == []
    assert violations_of(sql_doc(sqlite, [TS, ID], s_lag=5, s_primary_key=["id"])) == []
    no_ts = violations_of(sql_doc(sqlite, [ID], s_lag=5, s_primary_key=["id"]))
    assert "exactly one state field of data_type timestamp" in no_ts[0][1]
    fence_sqlite = violations_of(sql_doc(sqlite, [ID], s_commit_fence=True))
    assert fence_sqlite[0][0] == "data_receiver.0.streams.0.commit_fence"
    assert "works on postgresql, not sqlite" in fence_sqlite[0][1]
    fence_ts = violations_of(sql_doc(pg, [TS, ID], commit_fence=True))
    assert fence_ts[0][0] == "data_receiver.0.commit_fence" and "first state field" in fence_ts[0][1]
    assert violations_of(sql_doc(pg, [ID, TS], commit_fence=True)) == []


LAGGED = {"lag": 10, "primary_key": ["id"]}


def test_lag_delivers_rows_that_commit_late_once(database: Database) -> None:
    base = datetime(2024, 1, 1, 12)
    database.insert([(i, base + timedelta(seconds=i), float(i)) for i in (1, 2, 3, 5, 6)])
    rec = receiver(database.connection, chunk_size=2, **LAGGED)
    reader = open_reader(rec)
    assert ids(drain(reader)) == [1, 2, 3, 5, 6]
    assert ids(drain(reader)) == []  # the window read again, every row in it delivered
    # rows that committed after 6 was read, with earlier timestamps: 4 within lag, 0 not
    database.insert([(4, base + timedelta(seconds=4), 4.0), (0, base - timedelta(seconds=30), 0.0)])
    database.insert([(7, base + timedelta(seconds=7), 7.0)])
    assert ids(drain(reader)) == [4, 7]  # 0 is older than lag behind the newest: never read
    state = reader.snapshot()
    assert state["ts"] in (base + timedelta(seconds=7), "2024-01-01 12:00:07")
    reader.close()
    # a restart resumes with the keys delivered within lag: nothing twice, the late row once
    database.insert([(8, base + timedelta(seconds=2.5), 8.0)])
    again = open_reader(rec, state)
    assert ids(drain(again)) == [8]
    assert "keys delivered within lag" in again.describe()
    window = again.snapshot()["factoryflow.lag_window"]
    assert sorted(window["id"].to_list()) == [1, 2, 3, 4, 5, 6, 7, 8]  # all within 10 s of 12:00:07
    database.insert([(9, base + timedelta(seconds=40), 9.0)])
    assert ids(drain(again)) == [9]
    assert again.snapshot()["factoryflow.lag_window"]["id"].to_list() == [9]  # the rest fell out of the lag
    again.close()


def test_equal_timestamps_across_chunks_with_lag_and_restarts(database: Database) -> None:
    database.insert(rows(1, 1000, per_timestamp=100))  # 10 timestamps, 100 rows each
    rec, state, got = receiver(database.connection, SINGLE, [TS], chunk_size=30, **LAGGED), None, []
    for _ in range(200):  # a restart (new reader from the snapshot) after every chunk handed on
        reader = open_reader(rec, state)
        batches, more = reader.read()
        while more and not batches:  # chunks of the window read again: all delivered already
            batches, more = reader.read()
        reader.close()
        got += ids(batches)
        state = reader.snapshot()
        if not batches:
            break
    assert got == list(range(1, 1001))  # in order, once


def test_a_limit_below_the_rows_within_lag_is_reported(database: Database) -> None:
    base = datetime(2024, 1, 1, 12)
    database.insert([(i, base + timedelta(seconds=i / 10), float(i)) for i in range(1, 31)])
    rec = receiver(database.connection, SINGLE.replace("ORDER BY ts", "ORDER BY ts LIMIT 20"), **LAGGED)
    reader = open_reader(rec)
    assert ids(drain(reader)) == list(range(1, 21))
    assert reader.take_warnings() == []
    assert ids(drain(reader)) == []  # rows 1-20 read again within lag fill the LIMIT: 21-30 wait
    (warning,) = reader.take_warnings()
    assert "the query's LIMIT 20 is filled by rows delivered already within lag (10 s)" in warning, warning
    reader.close()
    unlimited = open_reader(receiver(database.connection, **LAGGED), reader.snapshot())
    assert ids(drain(unlimited)) == list(range(21, 31))
    unlimited.close()


def test_the_row_limit_of_a_query() -> None:
    assert limit(SINGLE) is None
    assert limit(SINGLE + " LIMIT 500") == 500
    assert limit("SELECT TOP 100 * FROM t WHERE ts > :ts ORDER BY ts") == 100
    assert limit("SELECT * FROM t WHERE ts > :ts ORDER BY ts FETCH FIRST 50 ROWS ONLY") == 50
    assert limit("SELECT * FROM t WHERE note = 'LIMIT 5' AND ts > :ts ORDER BY ts") is None


def test_the_commit_fence_holds_rows_of_later_transactions_until_older_ones_end(
        postgres: Postgres, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(postgres.url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS fenced"))
        conn.execute(sa.text("CREATE TABLE fenced (id SERIAL PRIMARY KEY, value FLOAT, "
                             "txid xid8 NOT NULL DEFAULT pg_current_xact_id())"))
    query = ("SELECT txid::text::bigint AS txid, id, value FROM fenced "
             "WHERE txid::text::bigint > :txid OR (txid::text::bigint = :txid AND id > :id) ORDER BY txid, id")
    fields = [{"column_name": "txid", "data_type": "integer", "initial_value": 0}, ID]
    fenced = open_reader(receiver(postgres.connection(), query, fields, commit_fence=True))
    plain = open_reader(receiver(postgres.connection(), query, fields))
    early = engine.connect()
    early.begin()
    early.execute(sa.text("INSERT INTO fenced (value) VALUES (1)"))  # takes its id (1) and its txid first
    with engine.begin() as conn:  # a later transaction commits first
        conn.execute(sa.text("INSERT INTO fenced (value) VALUES (2)"))
    monkeypatch.setattr("connectors.receivers._sql_cursor.FENCE_WARN", 0.0)
    assert ids(drain(fenced)) == []  # held back while the older transaction is open
    (warning,) = fenced.take_warnings()
    assert "the commit fence has held rows back" in warning and "INSERT INTO fenced" in warning, warning
    assert ids(drain(plain)) == [2]  # the cursor passes the open transaction's txid
    early.commit()
    early.close()
    with caplog.at_level(logging.INFO):
        assert ids(drain(fenced)) == [1, 2]  # once the older one ended: both, in commit order
    assert "the commit fence moved past" in caplog.text
    assert ids(drain(plain)) == []  # row 1 is lost to the plain cursor
    assert ids(drain(fenced)) == []
    fenced.close()
    plain.close()
    engine.dispose()


@pytest.mark.parametrize(("query", "pause_at"), [
    ("SELECT id FROM (SELECT 1 AS id FROM pg_sleep(1.5)) AS t WHERE id > :id ORDER BY id", 0.5),  # ADBC
    # ADBC runs it (1.5 s), finds NUMERIC, then SQLAlchemy runs it again: stopped during that run
    ("SELECT id, 1.5::numeric AS n FROM (SELECT 1 AS id FROM pg_sleep(1.5)) AS t WHERE id > :id ORDER BY id", 2.0),
], ids=["arrow", "sqlalchemy"])
def test_a_server_that_stops_answering_mid_query_is_cut_off_at_the_client_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str, pause_at: float) -> None:
    """A SIGSTOPped server cancels nothing (its statement_timeout cannot fire) and its kernel
    acknowledges keepalives, so the client closes the connection itself after query_timeout
    plus CLIENT_GRACE seconds."""
    import threading

    monkeypatch.setattr("connectors.receivers._sql_cursor.CLIENT_GRACE", 1.0)
    with postgres_server() as server:
        assert server.server is not None
        partition = slow_stream(server.connection(), query, tmp_path, query_timeout=1)
        pause = threading.Timer(pause_at, server.server.pause)  # while pg_sleep runs
        pause.start()
        started = datetime.now(UTC)
        try:
            assert partition.next_batch() == []
            took = (datetime.now(UTC) - started).total_seconds()
        finally:
            pause.join()
            server.server.resume()
        assert 1.9 < took < 6, took  # cut off query_timeout 1 + 1 s after the stopped statement began
        (marker,) = Ledger(ledger_path(tmp_path)).markers()
        assert "Query failed: no answer from the database for 2 s (" in marker.message, marker.message
        assert "query_timeout plus 1 s): the connection was closed" in marker.message, marker.message
        assert partition.snapshot().reader == {"id": 0}
        partition.close()


def test_mariadb_cancels_a_query_past_query_timeout_and_a_stopped_server_is_cut_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MariaDB's own max_statement_time cancels a slow query; a SIGSTOPped server is cut
    off by PyMySQL's read timeout, query_timeout plus CLIENT_GRACE."""
    import threading

    from tests.services.mariadb import mariadb_server

    monkeypatch.setattr("connectors.receivers._sql_cursor.CLIENT_GRACE", 1.0)
    query = "SELECT id FROM (SELECT 1 AS id, SLEEP(3) AS s) AS t WHERE id > :id ORDER BY id"
    with mariadb_server() as server:
        assert server.server is not None
        for stopped in (False, True):
            home = tmp_path / f"stopped-{stopped}"
            partition = slow_stream(server.connection(), query, home, query_timeout=1)
            pause = threading.Timer(0.3, server.server.pause)
            if stopped:
                pause.start()
            started = datetime.now(UTC)
            try:
                assert partition.next_batch() == []
                took = (datetime.now(UTC) - started).total_seconds()
            finally:
                pause.cancel()
                if stopped:
                    pause.join()
                    server.server.resume()
            (marker,) = Ledger(ledger_path(home)).markers()
            if stopped:  # no answer: the client's read timeout, 1 + 1 s
                assert 1.9 < took < 4, took
                assert "during query (timed out)" in marker.message, marker.message
            else:  # the server cancels it at query_timeout
                assert 0.9 < took < 2.5, took
                assert "max_statement_time exceeded" in marker.message, marker.message
            assert partition.snapshot().reader == {"id": 0}
            partition.close()


def test_the_guides_stream_configs_validate() -> None:
    """Every ```json stream of docs/sql.md, on a PostgreSQL receiver, has no error."""
    import json
    import re

    from dataflows.config import validate

    guide = (Path(__file__).resolve().parents[3] / "docs" / "sql.md").read_text()
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", guide, re.DOTALL)]
    assert len(blocks) == 3 and any("lag" in b for b in blocks) and any("commit_fence" in b for b in blocks)
    for stream in blocks:
        doc = {"transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "localfile"}],
               "data_receiver": [{"data_receiver_name": "db", "protocol": "sql", "streams": [stream],
                                  "connections": [{"database_type": "postgresql", "host": "db",
                                                   "database_name": "mes"}]}]}
        assert [v for v in validate(doc) if v.level == "error"] == [], stream
