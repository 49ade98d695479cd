"""Exactly once into ``localfile`` from the first record (issue 25, item 4): the NAB series
(40 times over) as 80 daily files is read, delivered and appended in the first epoch of a
new installation, which is SIGKILLed before any snapshot; the restart reads everything
again and the output holds each record once. (That a backfill is cut into epochs, a
snapshot at every interval, is shown by ``test_sigkill_backfill``.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from dataflows.ledger import Ledger, ledger_path
from tests.conftest import NAB_ROWS

FILES = 80
COPIES = 40  # the series 40 times over: a backfill of several seconds, many epochs long
ROWS = NAB_ROWS * COPIES


def split_days(nab_csv: Path, directory: Path) -> Counter[tuple[str, float]]:
    """:data:`COPIES` of ``nab_csv`` as :data:`FILES` files of consecutive rows; every
    (timestamp, value), as many times as it is in the files."""
    header, *rows = nab_csv.read_text().splitlines(keepends=True)
    rows *= COPIES
    directory.mkdir()
    per_file = -(-len(rows) // FILES)
    for index in range(FILES):
        (directory / f"day-{index:02d}.csv").write_text(header + "".join(rows[index * per_file:(index + 1) * per_file]))
    return Counter((line.split(",")[0], float(line.split(",")[1])) for line in rows)


def test_a_sigkill_in_the_first_epoch_of_a_backfill_writes_each_record_once(
        tmp_path: Path, nab_machine_csv: Path, flows: Any) -> None:
    expected = split_days(nab_machine_csv, tmp_path / "in")
    config = {"data_receiver": [{"data_receiver_name": "days", "protocol": "localfile", "poll_interval": 0.5,
                                 "connections": [{"data_directory": str(tmp_path / "in")}],
                                 "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                                 "streams": [{"asset": "nab", "stream_type": "day", "parser": "csv",
                                              "file_filter": ["*.csv"]}]}],
              "transforms": [], "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config, snapshot=60)  # the first epoch outlasts the backfill
    flow.start()
    ledger = Ledger(ledger_path(flow.home))
    flow.wait_for(lambda: ledger.progress("out", "nab:day")[0] == ROWS, what="every row, first run")
    assert flow.committed_epoch() == 0  # no snapshot yet
    flow.kill()

    flow.snapshot = 1
    flow.start()
    flow.wait_for(lambda: "records written after the last snapshot taken back" in flow.log()
                  and ledger.progress("out", "nab:day")[0] >= ROWS, what="every row, after the restart")
    assert flow.stop() == 0
    got = Counter((r["timestamp"].replace("T", " ").removesuffix("Z"), r["value"])
                  for r in flow.output("out", "nab__day.jsonl"))
    log = flow.log()
    assert "the output is cut back to where that run found it" in log
    assert sum(got.values()) == ROWS  # each record once
    assert got == expected
    print(f"\nfirst run killed before any snapshot with {ROWS} rows written; restart: "
          f"{sum(got.values())} rows in the output, {len(got)} distinct")
