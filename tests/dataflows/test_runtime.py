"""A stream's reads run in the stream's own thread (issue 25, item 5): a read that blocks
leaves the partition's ``next_batch`` free to return at once, the stream is marked stalled
after :data:`~dataflows.runtime.STALL_SECONDS`, the partition's snapshot stays at the last
batch handed on, and the marker clears when the read returns."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

from dataflows import runtime
from dataflows.control import ControlStore, SharedControl, control_path
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import Batch, StreamKey
from dataflows.sdk import RunContext, StreamReader
from dataflows.storage import SharedStorage


class BlockingReader(StreamReader):
    """Reads one row per call, numbered from its state; blocks while ``gate`` is clear."""

    def __init__(self, state: int | None, gate: threading.Event) -> None:
        self.last = state or 0
        self.gate = gate
        self.reading = threading.Event()

    def read(self) -> tuple[list[Batch], bool]:
        self.reading.set()
        self.gate.wait()
        self.last += 1
        return [Batch("r", StreamKey("a", "s"), pl.DataFrame({"n": [self.last]}), "test")], False

    def snapshot(self) -> int:
        return self.last


def partition(tmp_path: Path, gate: threading.Event, read_wait: float | None) -> Any:
    stream = SimpleNamespace(key=StreamKey("a", "s"), asset="a", stream_type="s")
    receiver = SimpleNamespace(data_receiver_name="r", poll_interval=0.0,
                               open_stream=lambda stream, state, ctx, worker: BlockingReader(state, gate))
    return runtime._ReceiverPartition(receiver, stream, None, RunContext(home=tmp_path, read_wait=read_wait),
                                      None, SharedControl(control_path(tmp_path)),  # type: ignore[arg-type]
                                      SharedStorage(lambda: Ledger(ledger_path(tmp_path))))


def rows(batches: list[Batch]) -> list[int]:
    return [n for batch in batches for n in batch.frame["n"]]


def test_a_blocked_read_holds_only_its_own_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "STALL_SECONDS", 0.3)
    gate = threading.Event()
    gate.set()
    part = partition(tmp_path, gate, read_wait=0.05)
    assert rows(part.next_batch()) == [1]  # a quick read is handed on in the same call
    assert part.snapshot().reader == 1
    gate.clear()
    started = time.monotonic()
    assert part.next_batch() == []  # blocked: back after the read wait, not after the read
    assert time.monotonic() - started < 0.5
    assert part.next_awake() is not None  # looks again soon whether it returned
    assert part.snapshot().reader == 1  # the state of the last batch handed on
    ledger = Ledger(ledger_path(tmp_path))
    time.sleep(0.4)
    assert part.next_batch() == []
    (marker,) = ledger.markers()
    assert (marker.category, marker.level) == ("stalled", "warning")
    assert marker.message.startswith("a read has not returned for 0 s") or "has not returned" in marker.message
    gate.set()
    deadline = time.monotonic() + 5
    got: list[int] = []
    while not got and time.monotonic() < deadline:
        got = rows(part.next_batch())
        time.sleep(0.01)
    assert got == [2]
    assert part.snapshot().reader == 2
    assert ledger.markers() == []  # cleared once the read returned
    part.close()
    ledger.close()


def test_shutdown_does_not_wait_for_a_read_that_never_returns(tmp_path: Path) -> None:
    gate = threading.Event()
    part = partition(tmp_path, gate, read_wait=0.01)
    assert part.next_batch() == []
    part._ctx.shutdown.set()
    started = time.monotonic()
    with pytest.raises(StopIteration):
        part.next_batch()
    assert part.snapshot().reader == 0  # nothing was handed on
    part.close()  # the reader closes in its thread if the read ever returns
    assert time.monotonic() - started < 0.5
    gate.set()


def test_without_a_read_wait_next_batch_waits_for_the_read(tmp_path: Path) -> None:
    gate = threading.Event()
    part = partition(tmp_path, gate, read_wait=None)
    threading.Timer(0.2, gate.set).start()
    started = time.monotonic()
    assert rows(part.next_batch()) == [1]  # what a test driving one partition wants
    assert time.monotonic() - started >= 0.15
    part.close()


def test_a_streams_read_thread_ends_when_idle_and_comes_back_for_the_next_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "THREAD_IDLE_SECONDS", 0.05)
    reader = runtime._ReaderThread("read-test")
    assert reader.submit(lambda: 1).result(timeout=5) == 1
    first = reader._thread
    assert first is not None
    first.join(timeout=5)  # no job for 0.05 s: it ended
    assert not first.is_alive() and reader._thread is None
    assert reader.submit(lambda: 2).result(timeout=5) == 2  # a new one takes the next job
    assert reader._thread is not None and reader._thread is not first
    reader.stop()


def test_partitions_share_one_ledger_per_worker_thread_and_one_control_store(tmp_path: Path) -> None:
    gate = threading.Event()
    gate.set()
    control = SharedControl(control_path(tmp_path))
    ledgers = SharedStorage(lambda: Ledger(ledger_path(tmp_path)))

    def part(asset: str) -> Any:
        stream = SimpleNamespace(key=StreamKey(asset, "s"), asset=asset, stream_type="s")
        receiver = SimpleNamespace(data_receiver_name="r", poll_interval=0.0,
                                   open_stream=lambda stream, state, ctx, worker: BlockingReader(state, gate))
        return runtime._ReceiverPartition(receiver, stream, None, RunContext(home=tmp_path), None,  # type: ignore[arg-type]
                                          control, ledgers)

    parts = [part(asset) for asset in "abc"]
    assert len({id(p._ledger) for p in parts}) == 1  # built on one worker thread: one connection
    elsewhere: list[Any] = []
    thread = threading.Thread(target=lambda: elsewhere.append(part("d")))
    thread.start()
    thread.join()
    assert elsewhere[0]._ledger is not parts[0]._ledger  # another worker: its own
    for p in parts:
        assert rows(p.next_batch()) == [1]
    ControlStore(control_path(tmp_path)).request_restream([("r", "b:s")])  # as the API does
    clock = parts[0]._ctx.now() + runtime._CONTROL_INTERVAL
    assert [control.pending("r", key, clock) for key in ("a:s", "b:s")] == [0, 1]
    ledger = parts[0]._ledger
    for p in [*parts, *elsewhere]:
        p.close()
    with pytest.raises(sqlite3.ProgrammingError):  # the last partition closed it
        ledger.markers()


def test_a_stream_that_fails_to_open_holds_no_shared_connection(tmp_path: Path) -> None:
    """``open_stream`` raising: the partition gives back its share of the worker's ledger and
    of the control store, so the last partition to close still closes them."""
    gate = threading.Event()
    control = SharedControl(control_path(tmp_path))
    ledgers: SharedStorage[Ledger] = SharedStorage(lambda: Ledger(ledger_path(tmp_path)))

    def part(open_stream: Any) -> Any:
        stream = SimpleNamespace(key=StreamKey("a", "s"), asset="a", stream_type="s")
        receiver = SimpleNamespace(data_receiver_name="r", poll_interval=0.0, open_stream=open_stream)
        return runtime._ReceiverPartition(receiver, stream, None, RunContext(home=tmp_path), None,  # type: ignore[arg-type]
                                          control, ledgers)

    good = part(lambda stream, state, ctx, worker: BlockingReader(state, gate))

    def refuse(*_: Any) -> Any:
        raise ValueError("the directory is gone")

    with pytest.raises(ValueError, match="the directory is gone"):
        part(refuse)
    ledger, store = good._ledger, control._store
    good.close()
    with pytest.raises(sqlite3.ProgrammingError):
        ledger.markers()
    with pytest.raises(sqlite3.ProgrammingError):
        store.version()
