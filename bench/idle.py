"""Idle streams: what a job of many file streams with nothing new costs at rest, and how
long one new row then takes to arrive (issue 31's idle-streams row).

The main job (``python -m bytewax.run dataflows.main:flow``, recovery on, one worker)
reads ``N`` ``localfile`` streams, each its own file filter in one data directory, and
writes to the ``localfile`` transmit. Each stream starts with one file of one row. Once
all N rows are delivered (the delivery ledger says so) and :data:`SETTLE` seconds have
passed, the job's CPU time is counted over :data:`SECONDS` seconds of rest (``psutil``,
the process and its threads). Then one new file of one row is written for one stream,
and the time until the ledger counts it is the row's arrival; the target is two poll
intervals. RSS is the job's at rest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, Measure, finish
from dataflows.home import init_recovery
from dataflows.ledger import Ledger, ledger_path

#: Seconds of rest counted.
SECONDS = 10.0
#: Seconds after the first rows are delivered before the rest is counted.
SETTLE = 3.0


def _config(data: Path, streams: int, poll: float) -> dict[str, object]:
    return {"data_receiver": [{"data_receiver_name": "files", "protocol": "localfile", "poll_interval": poll,
                               "connections": [{"data_directory": str(data)}],
                               "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
                               "streams": [{"asset": f"s{i}", "stream_type": "idle", "file_filter": [f"s{i}_*.csv"]}
                                           for i in range(streams)]}],
            "transforms": [], "data_transmit": [{"transmit_name": "out", "transmit_type": "localfile"}]}


def _write(data: Path, stream: int, index: int) -> None:
    path = data / f"s{stream}_{index}.csv"
    path.with_suffix(".part").write_text(f"timestamp,value\n2026-01-01T00:00:{index:02d}Z,{index}\n")
    path.with_suffix(".part").rename(path)  # whole, as a plant's export lands


def idle_streams(work: Path, streams: int, poll: float = 1.0, timeout: float = 900.0,
                 floor: Measure | None = None) -> Measure:
    """``streams`` idle ``localfile`` streams polled every ``poll`` seconds.

    :param floor: the same job's figures with one stream: the note then gives each
        stream's cost above it (CPU microseconds per second of rest, RSS).
    :returns: ``records`` the streams, ``seconds`` the rest counted, ``cpu`` the job's CPU
        seconds over it, ``peak_mb`` its RSS at rest, ``p50_ms`` the new row's arrival
        (milliseconds), and a note with the CPU share, the RSS per stream and the start-up.
    :raises RuntimeError: the job exited, or ``timeout`` seconds passed before it
        delivered what it was given.
    """
    import psutil

    home = work / f"idle-{streams}"
    data = home / "data"
    data.mkdir(parents=True)
    for i in range(streams):
        _write(data, i, 0)
    (home / "conf.d").mkdir()
    (home / "conf.d" / "config.json").write_text(json.dumps(_config(data, streams, poll)))
    init_recovery(home / "recovery")
    env = {**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO), "FACTORYFLOW_LOG_LEVEL": "WARNING"}
    with (home / "job.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflows.main:flow", "-r",
                                 str(home / "recovery"), "-s", "5", "-b", "0"], env=env, cwd=home,
                                stdout=log, stderr=log)
    began = time.monotonic()
    ledger: Ledger | None = None

    def delivered(keys: list[str]) -> int:
        nonlocal ledger
        if ledger is None and ledger_path(home).exists():
            ledger = Ledger(ledger_path(home))
        return 0 if ledger is None else sum(ledger.progress("out", key)[0] for key in keys)

    def wait(keys: list[str], count: int) -> None:
        while delivered(keys) < count:
            if proc.poll() is not None or time.monotonic() - began > timeout:
                raise RuntimeError(f"the idle job delivered {delivered(keys)} of {count}; its log:\n"
                                   + (home / "job.log").read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    try:
        keys = [f"s{i}:idle" for i in range(streams)]
        wait(keys, streams)
        started = time.monotonic() - began
        time.sleep(SETTLE)
        job = psutil.Process(proc.pid)
        group = [job, *job.children(recursive=True)]  # the transmit's forwarder, if any
        cpu = sum(sum(p.cpu_times()[:2]) for p in group)
        rest = time.monotonic()
        time.sleep(SECONDS)
        cpu = sum(sum(p.cpu_times()[:2]) for p in group) - cpu
        rested = time.monotonic() - rest
        rss = sum(p.memory_info().rss for p in group) / 2**20
        written = time.monotonic()
        _write(data, streams // 2, 1)
        wait([f"s{streams // 2}:idle"], 2)
        arrival = time.monotonic() - written
    finally:
        if ledger is not None:
            ledger.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    finish(proc.pid)
    note = (f"poll {poll:g} s; {100 * cpu / rested:.1f} % of a core at rest, {1024 * rss / streams:.0f} KB RSS "
            f"per stream; first rows after {started:.1f} s; a new row in {arrival:.1f} s (target ≤ {2 * poll:g} s)")
    if floor is not None and streams > floor.records:
        above = (cpu / rested - floor.cpu / floor.seconds) / (streams - floor.records)
        per_mb = (rss - (floor.peak_mb or 0.0)) / (streams - floor.records)
        note += f"; each stream above one: {1e6 * above:.0f} µs CPU a second, {1024 * per_mb:.0f} KB"
    return Measure(streams, rested, cpu, rss, p50_ms=1000 * arrival, note=note)
