"""The localfile transmit: JSON lines with ISO UTC timestamps, progress in the ledger."""

from __future__ import annotations

import json
import shutil
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from connectors.transmits.localfile import LocalFileTransmit
from dataflows.config import load
from dataflows.home import init_recovery
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch, StreamKey
from dataflows.runtime import RunContext
from dataflows.testing import sink_partition
from tests.connectors.conformance import TransmitHarness, transmit_harness


def transmit() -> LocalFileTransmit:
    doc = {"data_receiver": [], "transforms": [],
           "data_transmit": [{"transmit_name": "local out", "transmit_type": "localfile"}]}
    return load(doc, runnable=False).data_transmit[0]


def test_records_and_progress(tmp_path: Path) -> None:
    ctx = RunContext(home=tmp_path)
    partition = sink_partition(transmit(), ctx)
    frame = pl.DataFrame({
        "timestamp": [datetime(2021, 3, 14, 2, 30, tzinfo=ZoneInfo("UTC")), None],
        "local": [datetime(2021, 1, 1, 12, 0, 0, 500000), datetime(2021, 1, 1)],
        "day": [date(2021, 1, 2), None], "asset": ["ignored", "ignored"], "v": [1.5, None]},
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")})
    batch = Batch("files", StreamKey("press/1", "cycle"), frame, "/in/a.csv", ack_key="k1")
    partition.write_batch([batch, batch.with_frame(frame.head(0))])
    partition.close()
    path = tmp_path / "components" / "local out" / "press_1__cycle.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"asset": "press/1", "stream_type": "cycle", "timestamp": "2021-03-14T02:30:00Z",
         "local": "2021-01-01T12:00:00.500Z", "day": "2021-01-02", "v": 1.5},
        {"asset": "press/1", "stream_type": "cycle", "timestamp": None, "local": "2021-01-01T00:00:00Z",
         "day": None, "v": None},
    ]
    ledger = Ledger(ledger_path(tmp_path))
    assert ledger.progress("local out", "press/1:cycle") == (2, "2021-03-14T02:30:00.000000Z")
    assert ledger.acked_by("files", "press/1:cycle", "k1") == {"local out"}


def test_appends_across_batches_and_restarts(tmp_path: Path) -> None:
    ctx = RunContext(home=tmp_path)
    batch = Batch("r", StreamKey("a", "s"), pl.DataFrame({"v": [1, 2]}), "q")
    for _ in range(2):
        partition = sink_partition(transmit(), ctx)
        partition.write_batch([batch])
        partition.close()
    lines = (tmp_path / "components" / "local out" / "a__s.jsonl").read_text().splitlines()
    assert [json.loads(line)["v"] for line in lines] == [1, 2, 1, 2]
    assert Ledger(ledger_path(tmp_path)).progress("local out", "a:s") == (4, None)


def test_resuming_after_a_crash_takes_back_what_followed_the_snapshot(tmp_path: Path) -> None:
    ctx = RunContext(home=tmp_path)
    batch = Batch("r", StreamKey("a", "s"), pl.DataFrame({"v": [1, 2]}), "q")
    partition = sink_partition(transmit(), ctx)
    partition.write_batch([batch])
    state = partition.snapshot()  # the epoch's snapshot
    partition.write_batch([batch.with_frame(pl.DataFrame({"v": [3]}))])  # then a crash
    other = Batch("r", StreamKey("b", "s"), pl.DataFrame({"v": [9]}), "q")
    partition.write_batch([other])  # a file first written after the snapshot
    partition.close()
    ledger = Ledger(ledger_path(tmp_path))
    assert ledger.progress("local out", "a:s") == (3, None)
    resumed = sink_partition(transmit(), ctx, state)  # bytewax resumes from that epoch
    directory = tmp_path / "components" / "local out"
    assert [json.loads(line)["v"] for line in (directory / "a__s.jsonl").read_text().splitlines()] == [1, 2]
    assert (directory / "b__s.jsonl").read_text() == ""
    assert ledger.progress("local out", "a:s")[0] == 2 and ledger.progress("local out", "b:s")[0] == 0
    resumed.write_batch([batch.with_frame(pl.DataFrame({"v": [3]}))])  # the replay
    resumed.close()
    assert [json.loads(line)["v"] for line in (directory / "a__s.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_crash_before_the_first_snapshot_writes_nothing_twice(tmp_path: Path) -> None:
    recovery = init_recovery(tmp_path / "recovery")
    ctx = RunContext(home=tmp_path, recovery=recovery)
    directory = tmp_path / "components" / "local out"
    directory.mkdir(parents=True)
    (directory / "a__s.jsonl").write_text('{"asset":"a","stream_type":"s","v":0}\n')  # from before
    batch = Batch("r", StreamKey("a", "s"), pl.DataFrame({"v": [1, 2]}), "q")

    def values() -> list[int]:
        return [json.loads(line)["v"] for line in (directory / "a__s.jsonl").read_text().splitlines()]

    for _ in range(2):  # the first run crashes before its first snapshot: bytewax resumes with None
        partition = sink_partition(transmit(), ctx, None)
        assert values() == [0]  # the crashed run's records are cut off; what was there stays
        partition.write_batch([batch])
        partition.close()
    assert values() == [0, 1, 2]
    state = partition.snapshot()
    resumed = sink_partition(transmit(), ctx, state)  # after the first snapshot: its sizes rule
    resumed.write_batch([batch.with_frame(pl.DataFrame({"v": [3]}))])
    resumed.close()
    assert values() == [0, 1, 2, 3]

    shutil.rmtree(recovery)  # a start over (--fresh-state): a new store, a new baseline
    init_recovery(recovery)
    sink_partition(transmit(), ctx, None).close()
    assert values() == [0, 1, 2, 3]  # nothing cut from what earlier stores delivered
    no_state = RunContext(home=tmp_path)  # bytewax.run without -r: only appends
    sink_partition(transmit(), no_state, None).close()
    assert values() == [0, 1, 2, 3]


@transmit_harness
class LocalFileTransmitHarness(TransmitHarness):
    """JSON lines under the transmit's component directory."""

    transmit_type = "localfile"

    def transmit(self, home: Path) -> dict[str, Any]:
        return {"transmit_name": "conformance", "transmit_type": "localfile"}

    def durable_seqs(self, home: Path, expected: int) -> list[int]:
        path = home / "components" / "conformance" / "conformance__test.jsonl"
        return [json.loads(line)["seq"] for line in path.read_text().splitlines()] if path.exists() else []


def test_a_write_on_a_full_disk_is_taken_back_and_made_again_once_there_is_space(tmp_path: Path) -> None:
    import contextlib
    import threading

    from tests.chaos.test_disk_full import tmpfs

    directory = tmp_path / "components" / "local out"
    with tmpfs(directory, "1m"):
        partition = sink_partition(transmit(), RunContext(home=tmp_path))
        partition.write_batch([Batch("r", StreamKey("a", "s"), pl.DataFrame({"v": [0]}), "q")])
        ballast = directory / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as out:
            while True:
                out.write(b"\0" * 4096)
        wide = Batch("r", StreamKey("a", "s"), pl.DataFrame({"v": list(range(1, 20_001))}), "q")
        other = Batch("r", StreamKey("b", "s"), pl.DataFrame({"v": [7]}), "q")
        done = threading.Event()
        writer = threading.Thread(target=lambda: (partition.write_batch([other, wide]), done.set()), daemon=True)
        writer.start()
        assert not done.wait(2)  # waiting for space, not failing
        ballast.unlink()
        assert done.wait(10)
        partition.close()
        values = [json.loads(line)["v"] for line in (directory / "a__s.jsonl").read_text().splitlines()]
        assert values == list(range(20_001))  # the half-written batch was taken back: each record once
        assert [json.loads(line)["v"] for line in (directory / "b__s.jsonl").read_text().splitlines()] == [7]
