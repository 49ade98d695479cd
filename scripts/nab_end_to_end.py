"""NAB machine temperatures through the main job, clean and with a SIGKILL halfway.

A localfile receiver on ``data/nab/machine_temperature_system_failure.csv``
and a sql receiver on a PostgreSQL table loaded from the same file (a throwaway server
this script starts), each with ``convert_timestamps`` (America/Chicago), into the
localfile transmit. Run 1 goes to the end. Run 2 is killed with SIGKILL once half the
rows are delivered, then restarted. For each run and stream it prints the records, the
distinct rows, the rows missing and the duplicates.

    PYTHONPATH=. .venv/bin/python scripts/nab_end_to_end.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import NAB, NAB_ROWS  # noqa: E402
from tests.dataflows.test_main import CSV_FILE, SQL_FILE, nab_config  # noqa: E402
from tests.flowrun import FlowProcess  # noqa: E402
from tests.nab import create_table, expected_utc, insert_lines, nab_lines  # noqa: E402
from tests.services.postgres import postgres_server  # noqa: E402

CSV = NAB / "machine_temperature_system_failure.csv"


def report(flow: FlowProcess, label: str) -> None:
    expected = expected_utc(CSV, "America/Chicago")
    for name in (CSV_FILE, SQL_FILE):
        records = flow.output("local", name)
        counts = Counter((r["timestamp"], r["value"]) for r in records)
        print(f"{label} {name}: {len(records):,} records, {len(counts):,} distinct rows, "
              f"{len(expected - set(counts)):,} missing, {len(records) - len(counts):,} duplicates; "
              f"first {json.dumps(records[0])}")


def main() -> None:
    with postgres_server() as pg, tempfile.TemporaryDirectory(prefix="factoryflow-nab-") as tmp:
        create_table(pg.url)
        insert_lines(pg.url, nab_lines(CSV)[1])
        print(f"PostgreSQL on 127.0.0.1:{pg.port}, table machine_temperature: {NAB_ROWS:,} rows from {CSV.name}")

        clean = FlowProcess(Path(tmp) / "clean", nab_config(CSV.parent, pg))
        clean.start()
        clean.wait_for(lambda: len(clean.output("local", CSV_FILE)) >= NAB_ROWS
                       and len(clean.output("local", SQL_FILE)) >= NAB_ROWS)
        print(f"run 1: stopped with SIGTERM, exit {clean.stop()}")
        report(clean, "run 1")

        crash = FlowProcess(Path(tmp) / "crash", nab_config(CSV.parent, pg, files={"chunk_bytes": 4096},
                                                            db={"chunk_size": 100}))
        crash.start()
        crash.wait_for(lambda: len(crash.output("local", CSV_FILE)) >= NAB_ROWS // 2
                       or len(crash.output("local", SQL_FILE)) >= NAB_ROWS // 2, timeout=300)
        crash.kill()
        at_kill = {name: len(crash.output("local", name)) for name in (CSV_FILE, SQL_FILE)}
        print(f"run 2: SIGKILL with {at_kill[CSV_FILE]:,} csv and {at_kill[SQL_FILE]:,} sql records on disk")
        crash.start()
        expected = expected_utc(CSV, "America/Chicago")
        start = time.monotonic()
        crash.wait_for(lambda: all({(r["timestamp"], r["value"]) for r in crash.output("local", n)} == expected
                                   for n in (CSV_FILE, SQL_FILE)), timeout=300)
        print(f"run 2: restarted, every row present after {time.monotonic() - start:.1f} s; "
              f"stopped with SIGTERM, exit {crash.stop()}")
        resumed = [line for line in crash.log().splitlines() if "resuming from state" in line]
        for line in resumed:
            print("  " + line.split(" INFO ", 1)[1])
        report(crash, "run 2")


if __name__ == "__main__":
    main()
