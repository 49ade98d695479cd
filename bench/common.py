"""What the bench's scenarios share: the NAB-derived data, running the main job until it has
delivered every record, and measuring a process (wall seconds, CPU seconds, peak RSS).

Every figure of a process comes from the kernel's accounting of that one process: CPU
seconds are user + system from ``os.wait4`` (with the children it waited for); peak RSS is
``VmHWM`` of ``/proc/<pid>/status`` of it and its children, sampled while they run
(``ru_maxrss`` would count the bench's own memory, which a forked child starts with).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataflows.home import init_recovery
from dataflows.ledger import Ledger, ledger_path

NAB = REPO / "data" / "nab" / "machine_temperature_system_failure.csv"
#: The streams every scenario reads: four machines, each its own partition.
LINES = 4
PLANT_TIME = {"transform_name": "tz", "transform_type": "convert_timestamps",
              "field_names": ["timestamp"], "timezone": "America/Chicago"}
#: Snapshot interval of the job's recovery, in seconds, as ``compose/`` runs it.
SNAPSHOT_SECONDS = 5


@dataclass
class Measure:
    """One process's (or a group's) run: what it did and what it cost.

    :ivar records: records handled.
    :ivar seconds: wall seconds, start to the last record's delivery.
    :ivar cpu: CPU seconds (user + system) of the process(es).
    :ivar peak_mb: peak resident set in MB (the sum over a group of processes).
    :ivar payload_bytes: bytes of the records as delivered (JSON or BSON), when known.
    :ivar p50_ms, p99_ms: latency percentiles, for the latency scenario.
    :ivar note: how the figure was made (method, workers).
    :ivar busy: the share of the machine's CPU time (every core, every process: the
        broker and PostgreSQL too) spent busy while it ran, 0 to 1.
    :ivar load: the machine's 1-minute load average just before it ran.
    """

    records: int
    seconds: float
    cpu: float = float("nan")
    peak_mb: float = float("nan")
    payload_bytes: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    busy: float | None = None
    load: float | None = None

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds


def nab() -> pl.DataFrame:
    """The NAB machine temperature series: ``timestamp`` (naive, plant time), ``value``."""
    return pl.read_csv(NAB, try_parse_dates=True)


def replicate(rows: int) -> pl.DataFrame:
    """The NAB series repeated to ``rows`` rows, each copy shifted past the last, so the
    timestamps stay unique and increasing."""
    series = nab()
    step = series["timestamp"][1] - series["timestamp"][0]
    span = series["timestamp"].max() - series["timestamp"].min() + step
    copies = -(-rows // series.height)
    return pl.concat([series.with_columns(pl.col("timestamp") + span * i) for i in range(copies)]).head(rows)


def lines_frame(rows: int) -> pl.DataFrame:
    """``rows`` records over :data:`LINES` machines: ``line`` (1..4), ``timestamp``, ``value``;
    each machine its own replica of the NAB series."""
    per_line = rows // LINES
    return pl.concat([replicate(per_line).select(pl.lit(line, pl.Int32).alias("line"), pl.all())
                      for line in range(1, LINES + 1)])


def write_csv_files(directory: Path, rows: int, files: int) -> int:
    """Write ``rows`` records as ``files`` CSV files, ``machine_<line>_<n>.csv``, spread over
    the :data:`LINES` machines (columns ``timestamp``, ``value``).

    :returns: bytes written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    per_file = rows // files
    size = 0
    frame = lines_frame(rows)
    for line in range(1, LINES + 1):
        own = frame.filter(pl.col("line") == line).drop("line")
        for n, start in enumerate(range(0, own.height, per_file)):
            path = directory / f"machine_{line}_{n:04d}.csv"
            own.slice(start, per_file).write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")
            size += path.stat().st_size
    return size


def csv_receiver(directory: Path) -> dict[str, Any]:
    """A localfile receiver of the CSV files in ``directory``: one stream per machine."""
    return {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 1,
            "connections": [{"data_directory": str(directory)}],
            "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": f"machine_{line}", "stream_type": "temperature",
                         "file_filter": [f"machine_{line}_*.csv"]} for line in range(1, LINES + 1)]}


def streams() -> list[str]:
    """The scenarios' streams, ``machine_<line>:temperature``."""
    return [f"machine_{line}:temperature" for line in range(1, LINES + 1)]


class MachineBusy:
    """How busy every core of the machine is from its creation to :meth:`share`
    (``/proc/stat`` through psutil): whether a run had CPU to spare."""

    def __init__(self) -> None:
        import psutil

        self._start = psutil.cpu_times()

    def share(self) -> float:
        """Busy CPU time over all CPU time since the start, 0 to 1."""
        import psutil

        end = psutil.cpu_times()
        total = sum(end) - sum(self._start)
        idle = sum(getattr(end, f) - getattr(self._start, f) for f in ("idle", "iowait") if hasattr(end, f))
        return (total - idle) / total if total > 0 else float("nan")


def high_water_mb(pid: int | str = "self") -> float:
    """``VmHWM`` of process ``pid``: its peak resident set so far, in MB (NaN once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    kb = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(kb) / 1024 if kb is not None else float("nan")


class PeakSampler:
    """Samples the peak RSS (:func:`high_water_mb`) of processes and their child processes
    every 0.1 s while they run; ``peak(pid)`` is the last figure read of the process plus
    each of its children's (``VmHWM`` keeps each at its peak)."""

    def __init__(self, pids: list[int]) -> None:
        self._peaks: dict[int, dict[int, float]] = {pid: {} for pid in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        """Read every process's figure now."""
        import psutil

        for pid, peaks in self._peaks.items():
            try:
                family = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
            except psutil.Error:
                family = list(peaks)
            for member in family:
                figure = high_water_mb(member)
                if not math.isnan(figure):
                    peaks[member] = figure

    def stop(self) -> None:
        """Take a last sample and stop sampling."""
        self.sample()
        self._stop.set()
        self._thread.join()

    def peak(self, pid: int) -> float:
        """The peak RSS of ``pid`` and its children in MB (NaN when never read)."""
        peaks = self._peaks[pid]
        return sum(peaks.values()) if peaks else float("nan")


def finish(pid: int) -> float:
    """Wait for process ``pid``; returns its CPU seconds (user + system) from the kernel."""
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime


class Deliveries:
    """What a job's delivery ledger (``dataflows.ledger``) counts, read while the job runs.

    :param home: the job's ``FACTORYFLOW_HOME``; the ledger is opened once it exists.
    :param procs: the job's processes; :meth:`wait` stops when one of them exits.
    :param timeout: seconds from now after which :meth:`wait` gives up.
    """

    def __init__(self, home: Path, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
        self._home, self._procs = home, procs
        self._deadline = time.monotonic() + timeout
        self._ledger: Ledger | None = None

    def count(self, transmit: str, keys: list[str]) -> int:
        """Records ``transmit`` delivered over the streams ``keys`` (``asset:stream_type``)."""
        if self._ledger is None and ledger_path(self._home).exists():
            self._ledger = Ledger(ledger_path(self._home))
        return 0 if self._ledger is None else sum(self._ledger.progress(transmit, key)[0] for key in keys)

    def wait(self, transmit: str, keys: list[str], records: int) -> None:
        """Poll every 0.05 s until :meth:`count` reaches ``records``.

        :raises RuntimeError: a process exited or the timeout passed; with the job's log tail.
        """
        while (delivered := self.count(transmit, keys)) < records:
            if any(p.poll() is not None for p in self._procs) or time.monotonic() > self._deadline:
                raise RuntimeError(f"the job delivered {delivered} of {records} records; its log:\n"
                                   + (self._home / "job.log").read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def close(self) -> None:
        """Close the ledger, if it was opened."""
        if self._ledger is not None:
            self._ledger.close()


def run_job(home: Path, config: dict[str, Any], transmit: str, records: int, *, workers: int = 1,
            processes: int = 1, timeout: float = 900.0) -> Measure:
    """Run the main job (``python -m bytewax.run dataflows.main:flow``, recovery on as in
    ``compose/``) on ``config`` until ``transmit`` has delivered ``records`` records over the
    scenario's streams (per the delivery ledger), then stop it with SIGTERM.

    :param workers: ``-w``, workers per process.
    :param processes: processes of one bytewax cluster on loopback (``-i``/``-a``).
    :returns: wall seconds from start to the last delivery, CPU and peak RSS summed over
        the processes.
    :raises RuntimeError: a process exited, or ``timeout`` seconds passed.
    """
    (home / "conf.d").mkdir(parents=True, exist_ok=True)
    (home / "conf.d" / "config.json").write_text(json.dumps(config))
    init_recovery(home / "recovery")
    env = {**os.environ, "FACTORYFLOW_HOME": str(home), "PYTHONPATH": str(REPO),
           "FACTORYFLOW_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "bytewax.run", "dataflows.main:flow", "-r", str(home / "recovery"),
               "-s", str(SNAPSHOT_SECONDS), "-b", "0"]
    if workers > 1:
        command += ["-w", str(workers)]
    if processes > 1:
        from tests.services.process import free_port

        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        commands = [[*command, "-i", str(i), "-a", addresses] for i in range(processes)]
    else:
        commands = [command]
    log = open(home / "job.log", "ab")  # noqa: SIM115 - handed to the children
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, cwd=home, stdout=log, stderr=log) for c in commands]
    log.close()
    busy = MachineBusy()
    sampler = PeakSampler([p.pid for p in procs])
    deliveries = Deliveries(home, procs, timeout)
    try:
        deliveries.wait(transmit, streams(), records)
        seconds = time.perf_counter() - start
        share = busy.share()
    finally:
        sampler.stop()
        deliveries.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    cpu = 0.0
    for p in procs:
        if p.returncode is None:
            cpu += finish(p.pid)
            p.returncode = 0
    return Measure(records, seconds, cpu, sum(sampler.peak(p.pid) for p in procs), busy=share)


def run_script(code: str, *args: str) -> tuple[dict[str, Any], float, float]:
    """Run ``code`` in a fresh interpreter (the project on its path); it prints one JSON
    object as its last line.

    :returns: (that object, CPU seconds, peak RSS in MB of the process: the object's
        ``peak_mb``, which the script reads with :func:`high_water_mb` before it prints).
    :raises RuntimeError: it failed (its stderr in the message).
    """
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=err, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"bench script failed:\n{err.read().decode(errors='replace')[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return result, usage.ru_utime + usage.ru_stime, float(result.get("peak_mb", "nan"))
