"""The localfile receiver: incremental reading, state, deletion and retries, on real files."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from dataflows.config import load, validate
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import StreamKey
from dataflows.runtime import RunContext
from dataflows.testing import Clock, StreamDriver
from tests.connectors.conformance import ReceiverHarness, receiver_harness
from tests.flowrun import drain

STREAM = StreamKey("machine", "temperature")


def document(directory: Path, **keys: Any) -> dict[str, Any]:
    parser = keys.pop("parser", {"parser_name": "csv", "parser_type": "csv"})
    return {"transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
            "data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 2,
                               "connections": [{"data_directory": str(directory)}], "parsers": [parser],
                               "streams": [{"asset": "machine", "stream_type": "temperature",
                                            "file_filter": ["*.csv"], "parser": "csv"}], **keys}]}


def receiver(directory: Path, **keys: Any):
    return load(document(directory, **keys)).data_receiver[0]


def context(home: Path, clock: Clock | None = None) -> RunContext:
    return RunContext(home=home, now=clock or Clock.ahead(3600),
                      expected_transmits={("files", STREAM): frozenset({"local"})})


def open_reader(tmp_path: Path, state: Any = None, clock: Clock | None = None, **keys: Any):
    rec = receiver(tmp_path / "in", **keys)
    return rec.open_stream(rec.streams[0], state, context(tmp_path / "home", clock), None)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return tmp_path / "in"


def test_nab_file_in_chunks(tmp_path: Path, inbox: Path, nab_machine_csv: Path) -> None:
    shutil.copy(nab_machine_csv, inbox)
    batches = drain(open_reader(tmp_path, chunk_bytes=64 * 1024))
    assert len(batches) == 12  # 732,223 bytes in chunks of at most 64 KiB, cut at line ends
    assert sum(b.frame.height for b in batches) == 22_695
    assert all(b.frame.columns == ["timestamp", "value"] for b in batches)
    rows = [r for b in batches for r in b.frame.iter_rows()]
    assert rows[0][0] == datetime(2013, 12, 2, 21, 15) and rows[-1][0] == datetime(2014, 2, 19, 15, 25)
    assert {b.source for b in batches} == {str(inbox / nab_machine_csv.name)}


def test_a_growing_file_is_read_on_from_where_it_stopped(tmp_path: Path, inbox: Path) -> None:
    clock = Clock.ahead(3600)  # files written now are already still
    path = inbox / "line1.csv"
    path.write_bytes(b"ts,v\n1,10\n2,20\n")
    reader = open_reader(tmp_path, clock=clock)
    assert [b.frame["v"].to_list() for b in drain(reader)] == [[10, 20]]
    with open(path, "ab") as f:
        f.write(b"3,30\n4,4")  # the last line is still being written
    clock.now = datetime.now(UTC)  # ...and the file has just changed
    assert [b.frame["v"].to_list() for b in drain(reader)] == [[30]]
    with open(path, "ab") as f:
        f.write(b"0\n")
    assert [b.frame.to_dict(as_series=False) for b in drain(reader)] == [{"ts": [4], "v": [40]}]
    assert drain(reader) == []


def test_minimum_file_age_is_how_long_a_file_must_be_still(tmp_path: Path, inbox: Path) -> None:
    clock = Clock(datetime.now(UTC))
    (inbox / "a.csv").write_bytes(b"ts,v\n1,10\n2,20")
    text = open_reader(tmp_path, clock=clock, minimum_file_age=60)
    assert [b.frame["v"].to_list() for b in drain(text)] == [[10]]
    clock.now += timedelta(seconds=5)  # past poll_interval (2 s), not past minimum_file_age
    assert drain(text) == []
    clock.now += timedelta(seconds=60)
    assert [b.frame["v"].to_list() for b in drain(text)] == [[20]]


def test_fifos_and_broken_or_looping_links_get_one_warning_each(tmp_path: Path, inbox: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    (inbox / "good.csv").write_bytes(b"ts,v\n1,10\n")
    os.mkfifo(inbox / "pipe.csv")  # opening it would block the worker
    (inbox / "dangling.csv").symlink_to(inbox / "nowhere.csv")
    (inbox / "loop1.csv").symlink_to(inbox / "loop2.csv")
    (inbox / "loop2.csv").symlink_to(inbox / "loop1.csv")
    (inbox / "ignored.txt").symlink_to(inbox / "nowhere.txt")  # not selected by *.csv: no warning
    partition = StreamDriver(receiver(inbox), context(tmp_path / "home"))
    with caplog.at_level(logging.WARNING, logger="receiver"):
        assert [b.frame["v"].to_list() for b in partition.poll()] == [[10]]
        (inbox / "late.csv").write_bytes(b"ts,v\n2,20\n")
        assert [b.frame["v"].to_list() for b in partition.poll()] == [[20]]  # reading goes on
    said = sorted(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert said == [  # once each, not again at the next poll
        f"machine:temperature: {inbox / 'dangling.csv'} is a symbolic link that leads nowhere, or in a loop: skipped",
        f"machine:temperature: {inbox / 'loop1.csv'} is a symbolic link that leads nowhere, or in a loop: skipped",
        f"machine:temperature: {inbox / 'loop2.csv'} is a symbolic link that leads nowhere, or in a loop: skipped",
        f"machine:temperature: {inbox / 'pipe.csv'} is not a regular file (a FIFO, a socket or a device): skipped"]
    (marker,) = [m for m in partition.markers() if m.category == "input warning"]
    assert marker.level == "warning" and marker.message.endswith(": skipped")
    partition.close()


def test_a_whole_file_waits_for_minimum_file_age(tmp_path: Path, inbox: Path) -> None:
    clock = Clock(datetime.now(UTC))
    (inbox / "w.csv").write_bytes("ts,v\n1,10\n".encode("utf-16"))
    parser = {"parser_name": "csv", "parser_type": "csv", "file_encoding": "utf-16"}  # whole files only
    reader = open_reader(tmp_path, clock=clock, minimum_file_age=60, parser=parser)
    clock.now += timedelta(seconds=5)  # still for longer than poll_interval (2 s)
    assert drain(reader) == []
    clock.now += timedelta(seconds=60)
    assert [b.frame["v"].to_list() for b in drain(reader)] == [[10]]


def test_a_last_line_without_newline_is_read_once_the_file_is_still(tmp_path: Path, inbox: Path) -> None:
    clock = Clock(datetime.now(UTC))
    (inbox / "a.csv").write_bytes(b"ts,v\n1,10\n2,20")
    reader = open_reader(tmp_path, clock=clock)
    assert [b.frame["v"].to_list() for b in drain(reader)] == [[10]]
    clock.now += timedelta(seconds=5)
    assert [b.frame["v"].to_list() for b in drain(reader)] == [[20]]


def test_a_truncated_last_line_costs_only_itself(tmp_path: Path, inbox: Path) -> None:
    cut = inbox / "cut.csv"  # still when first seen: read to its end at once
    cut.write_bytes(b"ts,v\n" + b"".join(b"%d,%d\n" % (n, n * 10) for n in range(100)) + b'100,"unterminated')
    reader = open_reader(tmp_path)
    assert sum(b.frame.height for b in drain(reader)) == 100  # the complete lines
    (problem,) = reader.take_bad_input()
    assert problem.startswith(f"{cut}") and problem.endswith("the file is skipped until it changes")


def test_restart_from_snapshot_reads_nothing_twice(tmp_path: Path, inbox: Path) -> None:
    (inbox / "a.csv").write_bytes(b"ts,v\n1,10\n")
    first = open_reader(tmp_path)
    assert len(drain(first)) == 1
    state = first.snapshot()
    (inbox / "b.csv").write_bytes(b"ts,v\n2,20\n")
    second = open_reader(tmp_path, state=state)
    assert [b.source for b in drain(second)] == [str(inbox / "b.csv")]


def test_oldest_first_or_alphabetical(tmp_path: Path, inbox: Path) -> None:
    for name, age in (("c.csv", 300), ("a.csv", 100), ("b.csv", 200)):
        (inbox / name).write_bytes(b"ts\n1\n")
        stamp = datetime.now().timestamp() - age
        os.utime(inbox / name, (stamp, stamp))
    assert [Path(b.source).name for b in drain(open_reader(tmp_path))] == ["c.csv", "b.csv", "a.csv"]
    shutil.rmtree(tmp_path / "home", ignore_errors=True)
    names = [Path(b.source).name for b in drain(open_reader(tmp_path, process_files_alphabetically=True))]
    assert names == ["a.csv", "b.csv", "c.csv"]


def test_rewritten_file_is_read_again_and_gone_files_leave_the_state(tmp_path: Path, inbox: Path) -> None:
    path = inbox / "a.csv"
    path.write_bytes(b"ts,v\n1,10\n")
    reader = open_reader(tmp_path)
    drain(reader)
    path.write_bytes(b"ts,v\n1,99\n")  # same size, new content
    os.utime(path, (1, 1))
    assert [b.frame["v"].to_list() for b in drain(reader)] == [[99]]
    path.unlink()
    assert drain(reader) == []
    assert reader.snapshot()["files"] == {}


def test_only_filtered_files(tmp_path: Path, inbox: Path) -> None:
    (inbox / "a.csv").write_bytes(b"ts\n1\n")
    (inbox / "a.txt").write_bytes(b"ts\n1\n")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "b.csv").write_bytes(b"ts\n2\n")
    assert sorted(Path(b.source).name for b in drain(open_reader(tmp_path))) == ["a.csv", "b.csv"]


def bad_then_good(inbox: Path) -> Path:
    """``bad.csv`` (its line 3 lacks a field; the oldest file) and ``good.csv``; returns the bad one."""
    bad = inbox / "bad.csv"
    bad.write_bytes(b"a,b\n1,2\n3\n")
    (inbox / "good.csv").write_bytes(b"a,b\n5,6\n")
    os.utime(bad, (1, 1))
    return bad


def test_unparseable_file_is_skipped_until_it_changes(tmp_path: Path, inbox: Path) -> None:
    bad = bad_then_good(inbox)
    reader = open_reader(tmp_path)
    assert [Path(b.source).name for b in drain(reader)] == ["good.csv"]
    assert reader.take_bad_input() == [
        f"{bad}, line 3: expected 2 fields, found 1; the file is skipped until it changes"]
    assert drain(reader) == []
    bad.write_bytes(b"a,b\n1,2\n3,4\n")
    assert [b.frame["a"].to_list() for b in drain(reader)] == [[1, 3]]


def test_unparseable_file_is_logged_and_marks_the_stream(tmp_path: Path, inbox: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    bad = bad_then_good(inbox)
    rec = receiver(inbox)
    partition = StreamDriver(rec, context(tmp_path / "home"))
    with caplog.at_level(logging.ERROR):  # bad.csv, the oldest, is skipped; good.csv is read
        assert [Path(b.source).name for b in partition.next_batch()] == ["good.csv"]
    assert f"machine:temperature: {bad}, line 3: expected 2 fields, found 1; the file is skipped" in caplog.text
    (marker,) = Ledger(ledger_path(tmp_path / "home")).markers()
    assert (marker.component, marker.component_type, marker.category, marker.level) == (
        "files", "Receiver", "input", "error")
    assert marker.message == f"{bad}, line 3: expected 2 fields, found 1; the file is skipped until it changes"
    partition.close()


def test_utf16_file_is_read_whole(tmp_path: Path, inbox: Path) -> None:
    (inbox / "w.csv").write_bytes("ts,Zone\n1,Süd\n".encode("utf-16"))
    parser = {"parser_name": "csv", "parser_type": "csv", "file_encoding": "utf-16"}
    batches = drain(open_reader(tmp_path, parser=parser))
    assert [b.frame.to_dict(as_series=False) for b in batches] == [{"ts": [1], "Zone": ["Süd"]}]


def test_delete_completed_waits_for_every_transmit(tmp_path: Path, inbox: Path) -> None:
    path = inbox / "a.csv"
    path.write_bytes(b"ts,v\n1,10\n")
    reader = open_reader(tmp_path, delete_completed=True)
    (batch,) = drain(reader)
    assert batch.ack_key is not None
    assert drain(reader) == [] and path.exists()  # not delivered yet: kept, and not read again
    ledger = Ledger(ledger_path(tmp_path / "home"))
    ledger.ack("files", str(STREAM), batch.ack_key, "local")
    assert drain(reader) == []
    assert not path.exists()
    assert reader.snapshot() == {"files": {}, "pending_delete": {}, "schema": {"ts": pl.Int64, "v": pl.Int64}}
    assert ledger.acked_by("files", str(STREAM), batch.ack_key) == set()


def test_missing_directory_is_retried_with_backoff(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock.ahead(3600)  # files written now are already still
    rec = receiver(tmp_path / "not-yet")
    ctx = context(tmp_path / "home", clock)
    partition = StreamDriver(rec, ctx)
    with caplog.at_level(logging.ERROR):
        assert partition.next_batch() == []
    first = (partition.next_poll - clock.now).total_seconds()
    clock.now = partition.next_poll
    assert partition.next_batch() == []
    second = (partition.next_poll - clock.now).total_seconds()
    assert 2 <= first <= 2.2 and 4 <= second <= 4.4  # poll_interval 2 s, doubled, <= 10 % jitter
    assert "does not exist" in caplog.text and "Current state: 0 files seen" in caplog.text
    (tmp_path / "not-yet").mkdir()
    (tmp_path / "not-yet" / "a.csv").write_bytes(b"ts\n1\n")
    clock.now = partition.next_poll
    assert [b.frame.height for b in partition.next_batch()] == [1]
    assert partition.next_poll == clock.now + timedelta(seconds=2)


@receiver_harness
class LocalFileHarness(ReceiverHarness):
    """CSV files appearing in a directory, one file per :meth:`add`, oldest first."""

    protocol = "localfile"

    def __init__(self, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        super().__init__(tmp_path, request)
        self.directory = tmp_path / "files"
        self.directory.mkdir()
        self.files = 0

    def _write(self, name: str, text: str) -> None:
        self.files += 1
        path = self.directory / name
        path.write_text(text)
        os.utime(path, (1_000_000 + self.files, 1_000_000 + self.files))  # mtime order = write order

    def receiver(self) -> dict[str, Any]:
        return {"data_receiver_name": "conformance", "protocol": "localfile", "poll_interval": 1,
                "connections": [{"data_directory": str(self.directory)}],
                "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                "streams": [{"asset": "conformance", "stream_type": "test", "file_filter": ["*.csv"]}]}

    def add(self, seqs: range) -> None:
        self._write(f"part-{self.files:04d}.csv", "seq,value\n" + "".join(f"{s},{s / 2}\n" for s in seqs))

    def break_input(self) -> None:
        self._write(f"bad-{self.files:04d}.csv", "seq,value\n1,2\n3\n")


def test_an_empty_file_is_seen_once_not_listed_at_every_poll(tmp_path: Path, inbox: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    (inbox / "empty.csv").write_bytes(b"")
    os.utime(inbox / "empty.csv", (1, 1))
    reader = open_reader(tmp_path)
    caplog.set_level(logging.INFO)
    assert drain(reader) == []
    assert reader.snapshot()["files"][str(inbox / "empty.csv")].size == 0
    caplog.clear()
    assert drain(reader) == [] and drain(reader) == []
    assert "new or changed files" not in caplog.text  # not listed again
    (inbox / "empty.csv").write_bytes(b"a,b\n1,2\n")  # it fills up: read from the top
    os.utime(inbox / "empty.csv", (2, 2))
    assert [b.frame.to_dicts() for b in drain(reader)] == [[{"a": 1, "b": 2}]]


def test_an_empty_file_is_deleted_once_delivered(tmp_path: Path, inbox: Path) -> None:
    (inbox / "empty.csv").write_bytes(b"")
    os.utime(inbox / "empty.csv", (1, 1))
    reader = open_reader(tmp_path, delete_completed=True)
    (batch,) = drain(reader)
    assert batch.frame.height == 0 and batch.ack_key is not None
    Ledger(ledger_path(tmp_path / "home")).ack("files", str(STREAM), batch.ack_key, "local")
    assert drain(reader) == []
    assert not (inbox / "empty.csv").exists()


def test_a_stream_keeps_its_column_types_from_file_to_file(tmp_path: Path, inbox: Path) -> None:
    files = {"1.csv": b"ts,temp,count\n1,20.5,3\n2,21.0,4\n",
             "2.csv": b"ts,temp,count\n3,n/a,5\n4,22.5,6.5\n",  # a string in temp, a float in count
             "3.csv": b"ts,temp,count\n5,23,7\n"}  # integers where the stream has floats: they fit
    for mtime, (name, data) in enumerate(files.items(), 1):
        (inbox / name).write_bytes(data)
        os.utime(inbox / name, (mtime, mtime))
    reader = open_reader(tmp_path)
    batches = drain(reader)
    assert [b.frame.schema for b in batches] == [{"ts": pl.Int64, "temp": pl.Float64, "count": pl.Int64}] * 3
    assert [b.frame.to_dicts() for b in batches][1] == [{"ts": 3, "temp": None, "count": 5},
                                                        {"ts": 4, "temp": 22.5, "count": None}]
    assert batches[2].frame.row(0) == (5, 23.0, 7)
    assert reader.take_warnings() == [
        f"{inbox / '2.csv'}: 1 values of column 'temp' do not fit its type Float64 and became null (e.g. 'n/a')",
        f"{inbox / '2.csv'}: 1 values of column 'count' do not fit its type Int64 and became null (e.g. 6.5)"]
    state = reader.snapshot()
    assert state["schema"] == {"ts": pl.Int64, "temp": pl.Float64, "count": pl.Int64}
    (inbox / "4.csv").write_bytes(b"ts,temp,count\n6,x,8\n")
    os.utime(inbox / "4.csv", (9, 9))
    resumed = open_reader(tmp_path, state)  # the types survive a restart
    assert [b.frame.row(0) for b in drain(resumed)] == [(6, None, 8)]


def test_declared_dtypes_win_over_the_first_file(tmp_path: Path, inbox: Path) -> None:
    (inbox / "1.csv").write_bytes(b"id,temp\n007,20\n")
    streams = [{"asset": "machine", "stream_type": "temperature", "file_filter": ["*.csv"], "parser": "csv",
                "dtypes": {"id": "string", "temp": "float"}}]
    reader = open_reader(tmp_path, streams=streams)
    (batch,) = drain(reader)
    assert batch.frame.schema == {"id": pl.String, "temp": pl.Float64}
    assert batch.frame.row(0) == ("007", 20.0)  # as written: a string column is read as text
    bad = {**streams[0], "dtypes": {"id": "text"}}
    assert [v.description for v in validate(document(inbox, streams=[bad]))] == [
        "unsupported dtype 'text'; accepted: boolean, date, datetime, float, integer, string"]


def test_state_stays_bounded_with_10000_files_in_a_directory(tmp_path: Path, inbox: Path) -> None:
    for i in range(10_000):
        (inbox / f"f{i:05d}.csv").write_bytes(b"ts,v\n%d,%d\n" % (i, i))
    reader = open_reader(tmp_path)
    assert sum(b.frame.height for b in drain(reader)) == 10_000
    state = reader.snapshot()
    size = len(pickle.dumps(state))
    assert len(state["files"]) == 10_000 and size < 10_000 * 200  # one small entry per file
    for i in range(0, 10_000, 2):
        (inbox / f"f{i:05d}.csv").unlink()
    assert drain(reader) == []
    assert len(reader.snapshot()["files"]) == 5_000  # files gone from the directory leave it
    assert len(pickle.dumps(reader.snapshot())) < size * 0.6


def test_files_fetched_ahead_wait_for_the_next_read(tmp_path: Path, inbox: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A read stops after READ_SECONDS; the files it fetched ahead and did not parse are
    parsed by the next reads without being fetched again."""
    from connectors.receivers import _file_reader

    for n in range(30):
        (inbox / f"f{n:02d}.csv").write_bytes(f"n\n{n}\n".encode())
    ticks = iter(range(10**6))
    monkeypatch.setattr(_file_reader.time, "monotonic", lambda: next(ticks) * 0.1)  # 0.1 s per look at the clock
    reader = open_reader(tmp_path, process_files_alphabetically=True)
    fs = reader._connected()[0].fs
    calls: list[tuple[str, int]] = []
    for name in ("cat_ranges", "cat_file"):
        real = getattr(fs, name)
        monkeypatch.setattr(fs, name, lambda *a, _real=real, _name=name, **k: (
            calls.append((_name, len(a[0]) if _name == "cat_ranges" else 1)), _real(*a, **k))[1])
    batches, reads, more = [], 0, True
    while more:
        new, more = reader.read()
        batches += new
        reads += 1
    assert reads > 3  # READ_SECONDS cut the reads short
    assert [b.frame["n"].item() for b in batches] == list(range(30))
    # the folder fetched once, in the first read (a local cat_ranges is a cat_file per file)
    assert calls == [("cat_ranges", 30)] + [("cat_file", 1)] * 30


def test_idle_streams_skip_their_polls_until_their_share_of_the_listing_changes(
        tmp_path: Path, inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.receivers._file_reader import FileStreamReader
    from dataflows.runtime import ReceiverSource

    reads: list[str] = []
    read = FileStreamReader.read
    monkeypatch.setattr(FileStreamReader, "read", lambda self: reads.append(self._stream.asset) or read(self))
    for name in "abcd":
        (inbox / f"{name}_0.csv").write_bytes(b"ts,v\n1,10\n" + (b"2,20" if name == "d" else b""))
    doc = document(inbox, minimum_file_age=5)
    doc["data_receiver"][0]["streams"] = [{"asset": name, "stream_type": "s", "file_filter": [f"{name}_*.csv"]}
                                          for name in "abcd"]
    rec = load(doc).data_receiver[0]
    clock = Clock(datetime.now(UTC))  # d's last line, without its newline, waits until d is still (5 s)
    ctx = RunContext(home=tmp_path / "home", now=clock)
    source = ReceiverSource(rec, ctx)
    drivers = {s.asset: StreamDriver(rec, ctx, stream=s, source=source) for s in rec.streams}

    def round_() -> dict[str, list[int]]:  # every stream's poll, then the clock past the poll interval
        reads.clear()
        got = {name: [v for b in d.next_batch() for v in b.frame["v"].to_list()] for name, d in drivers.items()}
        clock.advance(2.01)
        return {name: values for name, values in got.items() if values}

    try:
        assert round_() == {name: [10] for name in "abcd"} and reads == list("abcd")
        assert round_() == {} and reads == list("abcd")  # a, b and c find nothing new: settled
        assert round_() == {} and reads == ["a", "d"]  # a took the round's listing; b and c knew it
        # changed nothing for them; d's last line waits for d to be still, with no listing change
        assert round_() == {"d": [20]} and reads == ["a", "d"]
        assert round_() == {} and reads == ["a", "d"]
        assert round_() == {} and reads == ["a"]
        (inbox / "c_1.csv").write_bytes(b"ts,v\n3,30\n")
        assert round_() == {"c": [30]} and reads == ["a", "c"]  # only c's share changed
        assert round_() == {} and reads == ["a", "c"]
        assert round_() == {} and reads == ["a"]
    finally:
        for driver in drivers.values():
            driver.close()
