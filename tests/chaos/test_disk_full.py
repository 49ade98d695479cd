"""A full disk is backpressure, not a crash (issue 25, item 1). Volumes are tmpfs mounts
(the tests run as root):

- the home on 64 MB, or only the Sight Machine transmit's directory (its outbox) on 24 MB,
  while the Sight Machine endpoint answers 503 (Kafka, the second sink, stays up): the outbox grows until the volume reaches
  its free-space floor, the receivers wait with a ``disk full`` marker, the job never exits;
  then space is freed and the endpoint comes back: every row arrives at both, duplicates
  stay under 1 % per sink, and every SQLite file passes ``PRAGMA integrity_check``;
- the recovery directory on 2 MB, filled to below its floor before a start and again
  while the job runs: the job waits (no Rust panic, no exit) and goes on once space is freed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataflows.ledger import Ledger, ledger_path
from tests.services.kafka import KafkaBroker
from tests.simulators.sightmachine import SightMachineSimulator

COPIES = 12  # the NAB series this many times over, each row with an id of its own


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """``directory`` as a tmpfs volume of ``size`` (``64m``) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def ballast(path: Path, megabytes: int) -> None:
    """A file of ``megabytes`` MB of real blocks (tmpfs allocates what is written)."""
    block = b"\0" * 1024 * 1024
    with path.open("wb") as out:
        for _ in range(megabytes):
            out.write(block)


def inputs(directory: Path, nab_csv: Path) -> int:
    """:data:`COPIES` CSV files of ``id,timestamp,value`` from the NAB series; the row count."""
    directory.mkdir()
    rows = nab_csv.read_text().splitlines()[1:]
    for copy in range(COPIES):
        lines = [f"{copy * len(rows) + n},{row}" for n, row in enumerate(rows)]
        (directory / f"part-{copy:02d}.csv").write_text("id,timestamp,value\n" + "\n".join(lines) + "\n")
    return COPIES * len(rows)


def integrity(home: Path) -> dict[str, str]:
    """``PRAGMA integrity_check`` of every SQLite file below ``home``."""
    out = {}
    for path in [*home.rglob("*.sqlite"), *home.rglob("*.sqlite3")]:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            out[str(path.relative_to(home))] = db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
    return out


@pytest.mark.parametrize(("volume", "size", "filler"), [("home", "64m", 16), ("outbox", "24m", 4)])
def test_a_full_volume_holds_the_receivers_and_nothing_is_lost(
        tmp_path: Path, nab_machine_csv: Path, sight_machine: SightMachineSimulator, kafka: KafkaBroker,
        flows: Any, volume: str, size: str, filler: int) -> None:
    rows = inputs(tmp_path / "in", nab_machine_csv)
    topic = f"chaos.disk.{volume}"
    kafka.create_topic(topic, 3)
    home = tmp_path / "home"
    mount = home if volume == "home" else home / "components" / "sight_machine"
    with tmpfs(mount, size):
        config = {"data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
                                     "chunk_bytes": 4 * 1024 * 1024,  # batches of about 3 MB of sslogs
                                     "connections": [{"data_directory": str(tmp_path / "in")}],
                                     "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                                     "streams": [{"asset": "nab", "stream_type": "csv", "parser": "csv",
                                                  "file_filter": ["*.csv"]}]}],
                  "transforms": [], "data_transmit": [
                      sight_machine.transmit(),
                      {"transmit_name": "kafka", "transmit_type": "kafka", "bootstrap_servers": kafka.bootstrap,
                       "topic": topic}]}
        flow = flows(home, config)
        ballast(mount / "ballast", filler)
        sight_machine.mode = "503"
        flow.start()
        ledger = Ledger(ledger_path(home))

        def held() -> str | None:  # the receivers' marker, or the transmit's as it waits to store
            return next((m.message for m in ledger.markers() if m.message.startswith("disk full: ")), None)

        flow.wait_for(lambda: held() is not None, timeout=180, what="the receivers held at the floor")
        time.sleep(5)  # held, not crashing
        assert flow.proc is not None and flow.proc.poll() is None
        marker = held()
        outbox = ledger.transmit_status("sight_machine").outbox_records
        (mount / "ballast").unlink()
        sight_machine.mode = "ok"

        def ids() -> Counter[int]:
            return Counter(int(s["fieldvalues"]["id"]["value"]) for s in sight_machine.sslogs)

        flow.wait_for(lambda: len(sight_machine.sslogs) >= rows and len(ids()) == rows, timeout=300,
                      what="every row at the Sight Machine")
        flow.wait_for(lambda: held() is None, timeout=30, what="the disk-full marker to clear")
        flow.wait_for(lambda: ledger.progress("kafka", "nab:csv")[0] >= rows, timeout=120, what="every row in Kafka")
        assert flow.stop(signal.SIGTERM) == 0
        assert flow.runs == 1  # never restarted: it never exited
        checks = integrity(home)
        warned = [line for line in flow.log().splitlines() if "outbox_max_bytes is" in line]
    assert len(warned) == 1 and "sight_machine: outbox_max_bytes is 1074 MB but the volume of" in warned[0], warned
    got = ids()
    duplicates = sum(got.values()) - rows
    in_kafka = Counter(json.loads(m.value)["id"] for m in kafka.consume(topic, rows, timeout=180))
    kafka_duplicates = sum(in_kafka.values()) - rows
    print(f"\n{volume} on a {size} tmpfs, Sight Machine down: held at {outbox} records in the outbox with "
          f"{marker!r}; after space came back: {sum(got.values())} sslogs for {rows} rows, {duplicates} "
          f"duplicates; Kafka {sum(in_kafka.values())} messages, {kafka_duplicates} duplicates; 0 exits; "
          f"integrity: {sorted(set(checks.values()))}")
    assert set(got) == set(range(rows)) and set(in_kafka) == set(range(rows))  # nothing lost
    assert duplicates <= rows // 100 and kafka_duplicates <= rows // 100
    assert marker is not None and marker.startswith("disk full: ") and str(mount) in marker
    assert checks and set(checks.values()) == {"ok"}


def test_a_full_recovery_volume_waits_instead_of_panicking(tmp_path: Path, flows: Any) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.csv").write_text("n,v\n1,10\n")
    config = {"data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 0.5,
                                 "connections": [{"data_directory": str(inbox)}],
                                 "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                                 "streams": [{"asset": "line", "stream_type": "csv", "parser": "csv",
                                              "file_filter": ["*.csv"]}]}],
              "transforms": [], "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}
    home = tmp_path / "home"
    with tmpfs(home / "recovery", "2m") as recovery:
        flow = flows(home, config)
        free = int(subprocess.run(["df", "-B1", "--output=avail", str(recovery)], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        (recovery / "ballast").write_bytes(b"\0" * (free - 256 * 1024))  # 256 KB left: below the 1 MiB floor
        flow.start()
        flow.wait_for(lambda: "the job starts once there is space" in flow.log(), what="the wait at start")
        time.sleep(2)
        assert flow.proc is not None and flow.proc.poll() is None and flow.output("out", "line__csv.jsonl") == []
        (recovery / "ballast").unlink()
        flow.wait_for(lambda: len(flow.output("out", "line__csv.jsonl")) == 1, what="the row, once space was back")
        (recovery / "ballast").write_bytes(b"\0" * (free - 256 * 1024))  # full again, while running
        with (inbox / "a.csv").open("a") as out:
            out.write("2,20\n")
        flow.wait_for(lambda: "reading waits for space" in flow.log(), what="the receivers held")
        time.sleep(3)
        assert flow.proc.poll() is None
        (recovery / "ballast").unlink()
        flow.wait_for(lambda: len(flow.output("out", "line__csv.jsonl")) == 2, what="the second row")
        assert flow.stop(signal.SIGTERM) == 0
        assert flow.runs == 1
        checks = integrity(home)
    assert set(checks.values()) == {"ok"}
    print(f"\nrecovery on a 2 MB tmpfs, filled to 256 KB free: waited at start and while running, no exit; "
          f"{flow.log().count('disk full')} disk-full lines; integrity {sorted(set(checks.values()))}")
