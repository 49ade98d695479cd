"""A transmit's progress lines and waits on its endpoint (:mod:`dataflows.report`)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from dataflows import report as report_module
from dataflows.ledger import Ledger, ledger_path
from dataflows.records import last_timestamp
from dataflows.report import AckWait, TransmitReport, WriteInterrupted


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == "transmit.t"]
    caplog.clear()
    return out


def test_progress_is_a_line_per_stream_at_first_then_summed_per_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "PROGRESS_SECONDS", 0.5)
    caplog.set_level(logging.INFO)
    report = TransmitReport(Ledger(ledger_path(tmp_path)), "t")
    streams = [f"a{i}:s" for i in range(12)]
    report.delivered((s, 2, "2024-01-01T00:00:00.000000Z") for s in streams[:2])
    assert lines(caplog) == [f"{s}: +2 records, 2 delivered, last timestamp 2024-01-01T00:00:00.000000Z"
                             for s in streams[:2]]  # a stream's first delivery: at once
    report.delivered((s, 2, None) for s in streams)  # ten more streams' first: at once, summed up
    assert lines(caplog) == ["+24 records on 12 streams since the last progress line; most: a0:s +2, "
                             "a1:s +2, a2:s +2"]
    for _ in range(5):  # 1 s polls of many streams: no line per delivery
        report.delivered((s, 1, None) for s in streams)
    assert lines(caplog) == []
    time.sleep(1.0)  # the interval ends without another delivery: the timer logs the sum
    assert lines(caplog) == ["+60 records on 12 streams since the last progress line; most: a0:s +5, "
                             "a1:s +5, a2:s +5"]
    report.delivered([("a0:s", 3, None)])  # the interval has passed: at once
    report.delivered([("a0:s", 4, None)])  # within it: held
    assert lines(caplog) == ["a0:s: +3 records, 12 delivered"]
    report.close()  # what is pending is logged at close
    assert lines(caplog) == ["a0:s: +4 records, 16 delivered"]


def test_a_wait_reports_once_then_ends_when_the_dataflow_stops(tmp_path: Path) -> None:
    ledger = Ledger(ledger_path(tmp_path))
    report, shutdown, now = TransmitReport(ledger, "t", "messages"), threading.Event(), [0.0]
    wait = AckWait(report, shutdown, "broker b:9092", clock=lambda: now[0])
    for t, left in ((0, 5), (4, 4), (13, 4)):  # progress at 4 s, then none for 9 s
        now[0] = t
        wait.check(left, "1/1 brokers are down")
    assert ledger.transmit_status("t").last_error is None
    now[0] = 14.5
    wait.check(4, "1/1 brokers are down")
    assert ledger.transmit_status("t").last_error == (
        "the broker b:9092 has acknowledged none of 4 messages for 10 s (1/1 brokers are down); waiting, "
        "nothing is dropped")
    shutdown.set()
    now[0] = 15
    with pytest.raises(WriteInterrupted):  # stopping, and nothing acknowledged for 11 s
        wait.check(4)
    fresh = AckWait(report, shutdown, "broker b:9092", clock=lambda: now[0])
    fresh.check(5)
    now[0] = 16
    fresh.check(3)  # stopping and still moving: it drains
    now[0] = 18.5
    with pytest.raises(WriteInterrupted, match="stopping with 3 messages not acknowledged by the broker b:9092"):
        fresh.check(3)


def test_text_timestamps_count_as_timestamps() -> None:
    frame = pl.DataFrame({"timestamp": ["2024-01-01 10:00:00", "2024-01-02T11:00:00.5"]})
    assert last_timestamp(frame) == "2024-01-02T11:00:00.500000Z"
    assert last_timestamp(pl.DataFrame({"timestamp": ["not a time"]})) is None
