"""Malformed input in the real main job: random bytes, a truncated CSV, mixed encodings, a
10 MB line, NULLs in a state column, a query that starts failing. Each marks its own
stream with a clear log line; every other stream delivers all it has (issue 15's chaos
suite)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from dataflows.ledger import Ledger, ledger_path
from tests.flowrun import FlowProcess

GOOD_ROWS = 2_000


def good_csv(path: Path, rows: int = GOOD_ROWS, start: int = 0) -> None:
    lines = ["timestamp,seq,value"] + [f"2026-01-01 00:{(start + n) // 60 % 60:02d}:{(start + n) % 60:02d},"
                                       f"{start + n},{n * 0.5}" for n in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def config(inbox: Path, database: Path) -> dict[str, Any]:
    names = ("good", "binary", "truncated", "mixed", "longline")
    files = {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
             "connections": [{"data_directory": str(inbox)}],
             "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
             "streams": [{"asset": "chaos", "stream_type": name, "path_filter": [f"{name}/*.csv"], "parser": "csv"}
                         for name in names]}
    state = [{"column_name": "id", "data_type": "integer", "initial_value": 0}]
    sql = {"data_receiver_name": "db", "protocol": "sql", "poll_interval": 0.5,
           "connections": [{"database_type": "sqlite", "database_name": str(database)}],
           "streams": [{"asset": "chaos", "stream_type": "nulls", "state_fields": state,
                        "query": "SELECT * FROM nulls WHERE id > :id OR id IS NULL ORDER BY id"},
                       {"asset": "chaos", "stream_type": "failing", "state_fields": state,
                        "query": "SELECT * FROM failing WHERE id > :id ORDER BY id"}]}
    return {"data_receiver": [files, sql], "transforms": [],
            "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}


def test_malformed_input_marks_its_stream_and_the_others_deliver(tmp_path: Path) -> None:
    inbox, database = tmp_path / "inbox", tmp_path / "plant.sqlite"
    for name in ("good", "binary", "truncated", "mixed", "longline"):
        (inbox / name).mkdir(parents=True)
    good_csv(inbox / "good" / "a.csv")
    (inbox / "binary" / "noise.csv").write_bytes(os.urandom(200_000))
    good_csv(inbox / "binary" / "z.csv", 10)
    truncated = inbox / "truncated" / "cut.csv"
    good_csv(truncated, 100)
    truncated.write_bytes(truncated.read_bytes() + b'2026-01-01 01:00:00,100,"unterminated')
    (inbox / "mixed" / "m.csv").write_bytes("timestamp,seq,note\n2026-01-01 00:00:00,0,café\n".encode()
                                            + "2026-01-01 00:00:01,1,café\n".encode("cp1252")
                                            + "2026-01-01 00:00:02,2,naïve\n".encode())
    (inbox / "longline" / "l.csv").write_text("timestamp,seq,blob\n2026-01-01 00:00:00,0," + "x" * 10_000_000
                                              + "\n2026-01-01 00:00:01,1,short\n")
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE nulls (id INTEGER, value REAL)")
        db.executemany("INSERT INTO nulls VALUES (?, ?)", [(1, 1.0), (None, 2.0), (3, 3.0)])
        db.execute("CREATE TABLE failing (id INTEGER, value REAL)")
        db.executemany("INSERT INTO failing VALUES (?, ?)", [(n, n * 1.0) for n in range(1, 51)])

    flow = FlowProcess(tmp_path / "home", config(inbox, database))
    try:
        flow.start()
        out = lambda name: flow.output("out", f"chaos__{name}.jsonl")
        flow.wait_for(lambda: len(out("good")) == GOOD_ROWS and len(out("failing")) == 50, what="good rows")
        with sqlite3.connect(database) as db:
            db.execute("DROP TABLE failing")  # the query starts failing
        good_csv(inbox / "good" / "b.csv", 500, start=GOOD_ROWS)  # the good stream goes on meanwhile
        flow.wait_for(lambda: len(out("good")) == GOOD_ROWS + 500, what="the good stream going on")
        ledger = Ledger(ledger_path(flow.home))
        flow.wait_for(lambda: any(m.stream_type == "failing" for m in ledger.markers()), what="failing marker")
        flow.wait_for(lambda: len(out("truncated")) == 100, what="the truncated file's complete lines")
        markers = {(m.stream_type, m.level, m.category): m.message for m in ledger.markers()}
        delivered = {n: len(out(n)) for n in ("good", "binary", "truncated", "mixed", "longline", "nulls",
                                              "failing")}
        print("\nfaults: random bytes, a truncated last line, a cp1252 line in utf-8, a 10 MB line, "
              "a NULL state value, a dropped table")
        print("delivered per stream:", delivered)
        print("markers:", *(f"{k}: {v.splitlines()[0]}" for k, v in sorted(markers.items())), sep="\n  ")
        assert delivered["good"] == GOOD_ROWS + 500  # every other stream unaffected
        assert delivered["binary"] == 10 and delivered["mixed"] == 3 and delivered["failing"] == 50
        assert delivered["nulls"] >= 3  # the query selects the NULL row at every poll, and is told so
        assert [len(r["blob"]) for r in out("longline")] == [10_000_000, 5]
        assert "noise.csv" in markers[("binary", "error", "input")]
        assert "binary data, not CSV text" in markers[("binary", "error", "input")]
        assert "cut.csv" in markers[("truncated", "error", "input")]
        assert markers[("mixed", "warning", "input warning")].endswith("m.csv, line 3: not utf-8, read as cp1252")
        assert markers[("nulls", "error", "input")].startswith("rows with NULL in a state column (1 in 'id')")
        assert "no such table: failing" in markers[("failing", "error", "query")]
        assert {k[0] for k in markers} == {"binary", "truncated", "mixed", "nulls", "failing"}
        log = flow.log()
        for message in markers.values():  # each marker is also a log line (a failing read's
            line = message.splitlines()[0].split(". Current state")[0]  # without "Query failed: ")
            assert line.removeprefix("Query failed: ") in log, line
    finally:
        flow.close()
