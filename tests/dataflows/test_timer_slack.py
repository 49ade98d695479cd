"""The job's timer slack (dataflows/timer_slack.py): bytewax's idle worker wakes every
millisecond, and the slack lets the kernel wake it less often."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from dataflows.timer_slack import (
    DEFAULT_SECONDS,
    TIMER_SLACK_ENV,
    configured_seconds,
    set_timer_slack,
)


def test_the_slack_asked_for_and_a_bad_value_named(caplog: pytest.LogCaptureFixture) -> None:
    assert configured_seconds({}) == DEFAULT_SECONDS == 0.005
    assert configured_seconds({TIMER_SLACK_ENV: " "}) == DEFAULT_SECONDS
    assert configured_seconds({TIMER_SLACK_ENV: "0.02"}) == 0.02
    assert configured_seconds({TIMER_SLACK_ENV: "0"}) == 0.0
    with caplog.at_level(logging.ERROR):
        assert configured_seconds({TIMER_SLACK_ENV: "5ms"}) == DEFAULT_SECONDS
        assert configured_seconds({TIMER_SLACK_ENV: "-1"}) == DEFAULT_SECONDS
    assert [r.getMessage() for r in caplog.records] == [
        "FACTORYFLOW_TIMER_SLACK='5ms' is not a number of seconds from 0 to 1; using 0.005",
        "FACTORYFLOW_TIMER_SLACK='-1' is not a number of seconds from 0 to 1; using 0.005"]


def test_a_thread_started_after_the_slack_is_set_inherits_it() -> None:
    seen: dict[str, int | None] = {}

    def setter() -> None:  # a thread of its own: pytest's keeps the kernel's default
        seen["before"] = set_timer_slack(0)
        seen["set"] = set_timer_slack(0.005)
        child = threading.Thread(target=lambda: seen.__setitem__("child", set_timer_slack(0)))
        child.start()
        child.join()

    thread = threading.Thread(target=setter)
    thread.start()
    thread.join()
    assert seen["before"] != 5_000_000
    assert seen["set"] == seen["child"] == 5_000_000


@pytest.mark.parametrize(("setting", "expected"), [(None, 5_000_000), ("0.02", 20_000_000)])
def test_the_running_job_and_its_threads_wake_with_the_slack(tmp_path: Path, flows: Any,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              setting: str | None, expected: int) -> None:
    if setting is None:
        monkeypatch.delenv(TIMER_SLACK_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMER_SLACK_ENV, setting)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    config = {"data_receiver": [{
        "data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
        "connections": [{"data_directory": str(inbox)}], "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
        "streams": [{"asset": "press", "stream_type": "cycle", "file_filter": ["*.csv"]}]}],
        "transforms": [], "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}]}
    flow = flows(tmp_path / "home", config)
    flow.start()
    flow.wait_for(lambda: len(flow.output("local", "press__cycle.jsonl")) == 1, what="the row")
    pid = flow.proc.pid
    slack = {}  # /proc/<tid>/timerslack_ns: a thread's (/proc/<pid>/task/<tid>/ has none)
    for task in Path(f"/proc/{pid}/task").iterdir():
        slack[int(task.name)] = (int(Path(f"/proc/{task.name}/timerslack_ns").read_text()),
                                 (task / "comm").read_text().strip())
    assert flow.stop() == 0
    print(f"\ntimer slack of each thread (ns, name): {slack}")
    assert slack.pop(pid)[0] == expected  # bytewax's worker: the main thread (-w 1)
    ours = [ns for ns, name in slack.values() if name == "python"]  # Python names no OS thread
    assert len(ours) >= 1 and set(ours) == {expected}  # the stream's read thread, started later
