"""A hung database stalls only its own stream (issue 25, item 5) and its polls time out
within their bound (issue 26, item 4): PostgreSQL is SIGSTOPped for 30 s (its kernel still
accepts and acknowledges, so no keepalive fails and its own statement_timeout cannot fire)
while a file stream on the same worker keeps receiving rows. The file stream's longest gap
stays under two poll intervals; each SQL stream's poll fails within ``query_timeout`` plus
the client's grace (a connect timeout, or the client closing a connection that stopped
answering), so the stream is marked with what happened, never just "stalled", and it
recovers, with every row once, when the server runs again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dataflows.ledger import Ledger, ledger_path
from tests.flowrun import gaps, growing_csv
from tests.services.postgres import postgres_server

POLL = 0.5  # seconds, both receivers
STOPPED = 30  # seconds PostgreSQL is SIGSTOPped
QUERY_TIMEOUT = 5  # seconds: the client's bound is this plus CLIENT_GRACE (10 s), under STALL_SECONDS
QUERIES = {  # read as Arrow through ADBC
    "readings": "SELECT id, value FROM readings WHERE id > :id ORDER BY id",
    # NUMERIC is read through SQLAlchemy and psycopg
    "totals": "SELECT id, value::numeric AS total FROM readings WHERE id > :id ORDER BY id"}


def test_a_stopped_database_stalls_only_its_stream(tmp_path: Path, flows: Any) -> None:
    data = tmp_path / "in"
    data.mkdir()
    growing = data / "line.csv"
    with postgres_server() as postgres:  # its own server: the session's is never stopped
        assert postgres.server is not None
        engine = sa.create_engine(postgres.url)
        with engine.begin() as db:
            db.execute(sa.text("CREATE TABLE readings (id INTEGER PRIMARY KEY, value DOUBLE PRECISION)"))
            db.execute(sa.text("INSERT INTO readings SELECT n, n * 0.5 FROM generate_series(1, 100) AS n"))
        config = {
            "data_receiver": [
                {"data_receiver_name": "db", "protocol": "sql", "poll_interval": POLL,
                 "query_timeout": QUERY_TIMEOUT, "connections": [postgres.connection()],
                 "streams": [{"asset": "press", "stream_type": stream_type, "query": query,
                              "state_fields": [{"column_name": "id", "data_type": "integer",
                                                "initial_value": 0}]}
                             for stream_type, query in QUERIES.items()]},
                {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": POLL,
                 "connections": [{"data_directory": str(data)}],
                 "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                 "streams": [{"asset": "line", "stream_type": "csv", "parser": "csv",
                              "file_filter": ["line.csv"]}]}],
            "transforms": [],
            "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}
        flow = flows(tmp_path / "home", config)
        flow.start()
        ledger = Ledger(ledger_path(flow.home))
        with growing_csv(growing):
            flow.wait_for(lambda: all(len(flow.output("out", f"press__{t}.jsonl")) == 100 for t in QUERIES)
                          and len(flow.output("out", "line__csv.jsonl")) > 0, what="the first rows of each")
            counts: list[tuple[float, int]] = []  # (time, file rows delivered), sampled
            postgres.server.pause()
            marked: dict[str, str] = {}  # SQL stream: the first marker it got
            paused = time.monotonic()
            marked_after: dict[str, float] = {}  # SQL stream: seconds from SIGSTOP to its marker
            categories: set[str] = set()
            try:
                deadline = time.monotonic() + STOPPED
                while time.monotonic() < deadline:
                    counts.append((time.monotonic(), len(flow.output("out", "line__csv.jsonl"))))
                    for marker in ledger.markers():
                        if marker.component == "db":
                            marked.setdefault(marker.stream_type, f"{marker.category}: {marker.message}")
                            marked_after.setdefault(marker.stream_type, time.monotonic() - paused)
                            categories.add(marker.category)
                    time.sleep(0.05)
            finally:
                postgres.server.resume()
            with engine.begin() as db:
                db.execute(sa.text("INSERT INTO readings SELECT n, n * 0.5 FROM generate_series(101, 150) AS n"))
            flow.wait_for(lambda: all(len(flow.output("out", f"press__{t}.jsonl")) == 150 for t in QUERIES),
                          timeout=60, what="the rows inserted after the database ran again")
            flow.wait_for(lambda: not any(m.component == "db" for m in ledger.markers()), timeout=10,
                          what="the stalled marker to clear")
        assert flow.stop() == 0
        engine.dispose()
    between = gaps(counts)
    longest = max(between)
    print(f"\nPostgreSQL stopped {STOPPED} s: file stream rows {counts[0][1]} -> {counts[-1][1]}, "
          f"longest gaps {sorted(round(g, 2) for g in between)[-5:]} s (limit {2 * POLL} s); markers {marked}, "
          f"marked after {marked_after} s")
    assert counts[-1][1] - counts[0][1] >= STOPPED * 5  # the file stream went on (10 rows a second)
    assert longest <= 2 * POLL
    for stream_type in QUERIES:  # a connect timeout, or the client closed a stopped connection
        assert marked[stream_type].startswith("query: Query failed: "), marked
        assert "timeout expired" in marked[stream_type] or "no answer from the database" in marked[stream_type]
        assert marked_after[stream_type] < QUERY_TIMEOUT + 10 + POLL + 1  # within the client's bound
    assert categories == {"query"}  # never only "stalled"
    for stream_type in QUERIES:
        ids = [r["id"] for r in flow.output("out", f"press__{stream_type}.jsonl")]
        assert ids == list(range(1, 151))  # each row once, in order
