"""The main job end to end: ``python -m bytewax.run dataflows.main:flow`` on real data.

NAB machine temperatures through a localfile receiver and through a sql receiver on a
real PostgreSQL table loaded from the same file, both converted from America/Chicago,
into the localfile transmit.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dataflows.ledger import Ledger, ledger_path
from tests.conftest import NAB_ROWS
from tests.nab import QUERY, STATE_FIELDS, create_table, expected_utc, insert_lines, nab_lines
from tests.services.postgres import Postgres

CSV_FILE = "nab__csv.jsonl"
SQL_FILE = "nab__sql.jsonl"


def nab_config(directory: Path, postgres: Postgres | None, **receiver_keys: Any) -> dict[str, Any]:
    """The NAB file through ``files`` and the NAB table through ``db`` (a connection that
    goes nowhere without ``postgres``), into the ``local`` transmit."""
    connection = postgres.connection() if postgres else {"database_type": "sqlite", "database_name": "/none"}
    return {
        "data_receiver": [
            {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
             "connections": [{"data_directory": str(directory)}],
             "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
             "streams": [{"asset": "nab", "stream_type": "csv", "parser": "csv",
                          "file_filter": ["machine_temperature_system_failure.csv"]}],
             **receiver_keys.get("files", {})},
            {"data_receiver_name": "db", "protocol": "sql", "poll_interval": 1,
             "connections": [connection],
             "streams": [{"asset": "nab", "stream_type": "sql", "query": QUERY, "state_fields": STATE_FIELDS}],
             **receiver_keys.get("db", {})},
        ],
        "transforms": [{"transform_name": "plant time", "transform_type": "convert_timestamps",
                        "filter_stream": ["nab:*"], "field_names": ["timestamp"], "timezone": "America/Chicago"}],
        "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
    }


def distinct(records: list[dict[str, Any]]) -> set[tuple[str, float]]:
    return {(r["timestamp"], r["value"]) for r in records}


def test_nab_through_both_receivers_then_graceful_restart(tmp_path: Path, postgres: Postgres,
                                                          nab_machine_csv: Path, flows: Any) -> None:
    create_table(postgres.url)
    insert_lines(postgres.url, nab_lines(nab_machine_csv)[1])
    flow = flows(tmp_path / "home", nab_config(nab_machine_csv.parent, postgres))
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", CSV_FILE)) >= NAB_ROWS
                  and len(flow.output("local", SQL_FILE)) >= NAB_ROWS, what="every NAB row in both streams")
    assert flow.stop(signal.SIGTERM) == 0
    csv_records, sql_records = flow.output("local", CSV_FILE), flow.output("local", SQL_FILE)
    assert len(csv_records) == len(sql_records) == NAB_ROWS
    expected = expected_utc(nab_machine_csv, "America/Chicago")
    assert distinct(csv_records) == distinct(sql_records) == expected
    assert csv_records[0] == {"asset": "nab", "stream_type": "csv", "timestamp": "2013-12-03T03:15:00Z",
                              "value": 73.96732207}
    assert sql_records[0] == {"asset": "nab", "stream_type": "sql", "id": 1, "timestamp": "2013-12-03T03:15:00Z",
                              "value": 73.96732207}
    assert "SIGTERM received: stopping after the batches in hand" in flow.log()
    assert "nab:sql: +10000 records, 10000 delivered" in flow.log()

    flow.start()  # resumes from the final snapshot: nothing is read twice
    flow.wait_for(lambda: flow.log().count("resuming from state") == 2, what="both streams resuming")
    time.sleep(3)  # three poll intervals in which nothing may be delivered again
    assert flow.stop(signal.SIGINT) == 0
    assert len(flow.output("local", CSV_FILE)) == len(flow.output("local", SQL_FILE)) == NAB_ROWS


def test_sigkill_mid_run_loses_nothing(tmp_path: Path, postgres: Postgres, nab_machine_csv: Path,
                                       flows: Any) -> None:
    header, lines = nab_lines(nab_machine_csv)
    thirds = [lines[: NAB_ROWS // 3], lines[NAB_ROWS // 3: 2 * NAB_ROWS // 3], lines[2 * NAB_ROWS // 3:]]
    directory = tmp_path / "plant"
    directory.mkdir()
    target = directory / "machine_temperature_system_failure.csv"
    create_table(postgres.url)

    def feed(part: list[bytes]) -> None:  # the plant writes more rows to both sources
        insert_lines(postgres.url, part)
        with open(target, "ab") as f:
            f.write(b"".join(part))

    target.write_bytes(header)
    feed(thirds[0])
    config = nab_config(directory, postgres, files={"chunk_bytes": 16 * 1024}, db={"chunk_size": 500})
    flow = flows(tmp_path / "home", config)
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", CSV_FILE)) >= len(thirds[0])
                  and len(flow.output("local", SQL_FILE)) >= len(thirds[0]), what="the first third")
    feed(thirds[1])
    flow.kill()  # crash while the second third is being read
    feed(thirds[2])
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", SQL_FILE)) > len(thirds[0]) + 1000, what="progress")
    flow.kill()  # and once more, mid-run
    flow.start()
    expected = expected_utc(nab_machine_csv, "America/Chicago")
    flow.wait_for(lambda: distinct(flow.output("local", CSV_FILE)) == expected
                  and distinct(flow.output("local", SQL_FILE)) == expected, what="every row after the crashes")
    assert flow.stop() == 0
    for name in (CSV_FILE, SQL_FILE):
        records = flow.output("local", name)
        counts = Counter((r["timestamp"], r["value"]) for r in records)
        assert set(counts) == expected  # none missing
        assert len(records) - len(counts) == sum(c - 1 for c in counts.values())  # the rest are replays


def test_delete_completed_deletes_delivered_files(tmp_path: Path, flows: Any) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"batch{i}.csv").write_text(f"timestamp,value\n2024-01-01 00:00:0{i},{i}\n")
    config = {"data_receiver": [{
        "data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1, "delete_completed": True,
        "connections": [{"data_directory": str(inbox)}], "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
        "streams": [{"asset": "press", "stream_type": "cycle", "file_filter": ["*.csv"]}]}],
        "transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    flow.wait_for(lambda: not list(inbox.iterdir()), what="the delivered files to be deleted")
    assert flow.stop() == 0
    assert sorted(r["value"] for r in flow.output("local", "press__cycle.jsonl")) == [0, 1, 2]
    assert "deleted" in flow.log() and "its records are delivered" in flow.log()


def test_invalid_config_exits_2_naming_every_violation(tmp_path: Path, flows: Any) -> None:
    config = {"data_receiver": [{"data_receiver_name": "x", "protocol": "localfile", "poll_interval": "5"}],
              "transforms": [], "data_transmit": [{"transmit_name": "t", "transmit_type": "kafka2"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    assert flow.proc.wait(60) == 2
    log = flow.log()
    assert ": data_receiver/0/poll_interval: Expected `float`, got `str`" in log
    assert ": data_receiver/0: missing required key `connections`" in log
    assert ": data_transmit/0/transmit_type: unknown transmit_type 'kafka2'" in log


def test_poison_files_mark_their_stream_and_stop_nothing(tmp_path: Path, flows: Any,
                                                         nab_machine_csv: Path) -> None:
    """Random bytes and a 10 MB line without a newline used to raise ``_csv.Error`` and make
    the job exit 1 on every start, a healthy receiver delivering nothing."""
    poison = tmp_path / "poison"
    poison.mkdir()
    (poison / "random.csv").write_bytes(random.Random(7).randbytes(300_000))
    (poison / "long_field.csv").write_bytes(b'"' + b"x" * 300_000)  # one quoted field over the csv limit
    (poison / "long_line.csv").write_bytes(b"x" * 10_000_000)
    healthy = nab_config(nab_machine_csv.parent, None)["data_receiver"][0]
    config = {
        "data_receiver": [healthy, {
            "data_receiver_name": "poisoned", "protocol": "localfile", "poll_interval": 1,
            "chunk_bytes": 4 * 1024 * 1024,  # the long line spans chunks
            "connections": [{"data_directory": str(poison)}],
            "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": "bad", "stream_type": "csv"}]}],
        "transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", CSV_FILE)) >= NAB_ROWS, what="the healthy stream")
    flow.wait_for(lambda: all(f"{name}.csv" in flow.log() for name in ("long_line", "long_field", "random")),
                  what="every poison file marked")
    assert flow.proc is not None and flow.proc.poll() is None  # still running
    assert flow.stop() == 0
    log = flow.log()
    assert f"bad:csv: {poison / 'long_field.csv'}, line 1: not readable as CSV: field larger than field limit" \
        in log
    assert f"bad:csv: {poison / 'random.csv'}, line 1: binary data, not CSV text" in log
    assert f"bad:csv: {poison / 'long_line.csv'}" in log and "the file is skipped until it changes" in log
    markers = Ledger(ledger_path(tmp_path / "home")).markers()
    assert [(m.component, m.asset, m.category, m.level) for m in markers] == [("poisoned", "bad", "input", "error")]
    assert len(flow.output("local", CSV_FILE)) == NAB_ROWS
